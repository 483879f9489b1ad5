//  CurveZMQ key files and socket options (see cf_keys.h).
//
//  Design note: a key file is read whole (it is tiny: CF_KEY_FILE_MAX) from
//  one open file descriptor, and the permission check is fstat on that same
//  descriptor, so a file swapped between check and read cannot slip through.
//  Every buffer that held secret text is wiped before it is released, and
//  no error message ever quotes file content: a malformed line is reported
//  by number only, because it may be a (slightly damaged) secret.

#include "cf_keys.h"
#include "cf_error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

static const char s_z85_chars[] =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

static bool s_is_z85_char(char c)
{
    return c != '\0' && strchr(s_z85_chars, c) != NULL;
}

bool cf_keys_valid(const char *z85)
{
    uint8_t bin[CF_KEY_BIN_LEN];
    return cf_keys_decode(z85, bin) == CF_OK;
}

cf_err_t cf_keys_decode(const char *z85, uint8_t bin[CF_KEY_BIN_LEN])
{
    if (!z85 || !bin)
        return CF_EINVAL;
    for (size_t i = 0; i < CF_KEY_Z85_LEN; i++)
        if (!s_is_z85_char(z85[i]))
            return CF_EINVAL;
    if (z85[CF_KEY_Z85_LEN] != '\0')
        return CF_EINVAL;
    if (!zmq_z85_decode(bin, z85))
        return CF_EINVAL;
    //  Five Z85 characters can spell values above 2^32 - 1; whether libzmq
    //  rejects or wraps them, the round trip catches them, so each key has
    //  exactly one spelling (allow-list lookups compare bytes anyway).
    char again[CF_KEY_Z85_SIZE];
    if (!zmq_z85_encode(again, bin, CF_KEY_BIN_LEN) || memcmp(again, z85, CF_KEY_Z85_LEN) != 0) {
        explicit_bzero(again, sizeof again);
        explicit_bzero(bin, CF_KEY_BIN_LEN);
        return CF_EINVAL;
    }
    explicit_bzero(again, sizeof again);
    return CF_OK;
}

void cf_keys_encode(const uint8_t bin[CF_KEY_BIN_LEN], char z85[CF_KEY_Z85_SIZE])
{
    //  Cannot fail: 32 is a multiple of 4.
    zmq_z85_encode(z85, bin, CF_KEY_BIN_LEN);
}

void cf_keys_fingerprint(const char *z85, char fp[CF_KEY_FP_SIZE])
{
    size_t i = 0;
    for (; z85 && i < CF_KEY_FP_LEN && s_is_z85_char(z85[i]); i++)
        fp[i] = z85[i];
    if (i < CF_KEY_FP_LEN)
        i = 0;    //  not a key: an empty fingerprint, never a partial one
    fp[i] = '\0';
}

cf_err_t cf_keys_generate(cf_keypair_t *pair)
{
    if (!pair)
        return cf_error_set(CF_EINVAL, "no key pair to fill");
    if (zmq_curve_keypair(pair->public_z85, pair->secret_z85) != 0) {
        int err = errno;
        cf_keys_wipe(pair);
        if (err == ENOTSUP)
            return cf_error_set(CF_ESYS, "cannot generate a CURVE key pair: libzmq was built "
                                         "without CURVE support");
        return cf_error_set(CF_ESYS, "cannot generate a CURVE key pair: %s", zmq_strerror(err));
    }
    return CF_OK;
}

void cf_keys_wipe(cf_keypair_t *pair)
{
    if (pair)
        explicit_bzero(pair->secret_z85, sizeof pair->secret_z85);
}

cf_err_t cf_keys_public_of(const char *secret_z85, char public_z85[CF_KEY_Z85_SIZE])
{
    if (!cf_keys_valid(secret_z85))
        return cf_error_set(CF_EINVAL, "not a valid Z85 secret key");
    if (zmq_curve_public(public_z85, secret_z85) != 0)
        return cf_error_set(CF_ESYS, "cannot derive a public key: %s", zmq_strerror(errno));
    return CF_OK;
}

// ---------------------------------------------------------------------------
//  Writing

//  Writes all of text to a new file at path created with mode. O_EXCL makes
//  an existing file (or a symlink planted at path) an error, and the mode is
//  set at creation, so a secret file never exists with looser permissions.
static cf_err_t s_write_new(const char *path, mode_t mode, const char *text, size_t len,
                            bool *created)
{
    *created = false;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0) {
        int err = errno;
        cf_error_set(CF_ESYS, "cannot create %s: %s", path, strerror(err));
        errno = err;
        return CF_ESYS;
    }
    *created = true;
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, text + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int err = n < 0 ? errno : EIO;
            close(fd);
            cf_error_set(CF_ESYS, "cannot write %s: %s", path, strerror(err));
            errno = err;
            return CF_ESYS;
        }
        done += (size_t)n;
    }
    //  The umask may have narrowed a public file; it is meant to be read by
    //  others (it goes into allow-lists), so set its mode exactly. Secret
    //  files keep what open gave them: 0600 or narrower.
    if (mode == 0644 && fchmod(fd, mode) != 0) {
        int err = errno;
        close(fd);
        cf_error_set(CF_ESYS, "cannot chmod %s: %s", path, strerror(err));
        errno = err;
        return CF_ESYS;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        int err = errno;
        cf_error_set(CF_ESYS, "cannot write %s: %s", path, strerror(err));
        errno = err;
        return CF_ESYS;
    }
    return CF_OK;
}

static bool s_comment_ok(const char *comment)
{
    if (strlen(comment) > 200)
        return false;
    for (const char *c = comment; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            return false;
    return true;
}

cf_err_t cf_keys_write(const cf_keypair_t *pair, const char *public_path, const char *secret_path,
                       const char *comment)
{
    if (!pair || !public_path || !secret_path || !*public_path || !*secret_path)
        return cf_error_set(CF_EINVAL, "key pair and both paths are required");
    if (strcmp(public_path, secret_path) == 0)
        return cf_error_set(CF_EINVAL, "public and secret key paths must differ");
    if (comment && !s_comment_ok(comment))
        return cf_error_set(CF_EINVAL, "key comment must be one line of printable text");
    if (!cf_keys_valid(pair->public_z85) || !cf_keys_valid(pair->secret_z85))
        return cf_error_set(CF_EINVAL, "key pair is not valid Z85");
    //  Refuse before creating anything when either file exists, so a
    //  refusal leaves no new file behind; O_EXCL below still guards the race.
    struct stat st;
    if (lstat(secret_path, &st) == 0 || lstat(public_path, &st) == 0) {
        const char *which = lstat(public_path, &st) == 0 ? public_path : secret_path;
        cf_error_set(CF_ESYS, "%s exists; refusing to overwrite a key file", which);
        errno = EEXIST;
        return CF_ESYS;
    }

    char text[CF_KEY_FILE_MAX];
    const char *label = comment ? comment : "";
    int len = snprintf(text, sizeof text, "%s%s%s%s\n", comment ? "# " : "", label,
                       comment ? "\n" : "", pair->public_z85);
    if (len < 0 || (size_t)len >= sizeof text)
        return cf_error_set(CF_EINVAL, "key comment too long");
    bool created = false;
    cf_err_t rc = s_write_new(public_path, 0644, text, (size_t)len, &created);
    if (rc != CF_OK) {
        int err = errno;
        if (created)
            unlink(public_path);
        errno = err;
        return rc;
    }
    len = snprintf(text, sizeof text, "%s%s%s%s\n", comment ? "# " : "", label, comment ? "\n" : "",
                   pair->secret_z85);
    bool secret_created = false;
    rc = s_write_new(secret_path, 0600, text, (size_t)len, &secret_created);
    explicit_bzero(text, sizeof text);
    if (rc != CF_OK) {
        int err = errno;
        if (secret_created)
            unlink(secret_path);
        unlink(public_path);
        errno = err;
        return rc;
    }
    return CF_OK;
}

// ---------------------------------------------------------------------------
//  Reading

//  Reads a whole small file into buf (NUL-terminated). secret: refuse a
//  file group or others may access. buf is wiped by the caller.
cf_err_t cf_keys_read_text(const char *path, const char *what, size_t max_bytes, bool secret,
                           char **text)
{
    *text = NULL;
    if (!path || !*path)
        return cf_error_set(CF_EINVAL, "no %s given", what);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        int err = errno;
        cf_err_t code = err == ENOENT ? CF_ENOTFOUND : CF_ESYS;
        cf_error_set(code, "cannot open %s %s: %s", what, path, strerror(err));
        errno = err;
        return code;
    }
    cf_err_t rc = CF_OK;
    char *buf = NULL;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = cf_error_set(CF_ESYS, "cannot stat %s %s: %s", what, path, strerror(errno));
        goto done;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = cf_error_set(CF_EINVAL, "%s %s is not a regular file", what, path);
        goto done;
    }
    if (secret && (st.st_mode & (S_IRWXG | S_IRWXO))) {
        rc = cf_error_set(CF_EAUTH,
                          "secret %s %s is accessible by group or others (mode %04o); "
                          "run: chmod 600 %s",
                          what, path, (unsigned)(st.st_mode & 07777), path);
        goto done;
    }
    if (st.st_size < 0 || (uint64_t)st.st_size > max_bytes) {
        rc = cf_error_set(CF_EINVAL, "%s %s is too large (%lld bytes, limit %zu)", what, path,
                          (long long)st.st_size, max_bytes);
        goto done;
    }
    //  One byte more than the limit: a file that grew after fstat shows.
    buf = malloc(max_bytes + 2);
    if (!buf) {
        rc = cf_error_set(CF_ENOMEM, "out of memory reading %s %s", what, path);
        goto done;
    }
    size_t got = 0;
    for (;;) {
        ssize_t n = read(fd, buf + got, max_bytes + 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = cf_error_set(CF_ESYS, "cannot read %s %s: %s", what, path, strerror(errno));
            goto done;
        }
        if (n == 0)
            break;
        got += (size_t)n;
        if (got > max_bytes) {
            rc = cf_error_set(CF_EINVAL, "%s %s is too large (limit %zu bytes)", what, path,
                              max_bytes);
            goto done;
        }
    }
    buf[got] = '\0';
    if (memchr(buf, '\0', got))
        rc = cf_error_set(CF_EINVAL, "%s %s holds binary data", what, path);
done:
    close(fd);
    if (rc != CF_OK && buf) {
        explicit_bzero(buf, max_bytes + 2);
        free(buf);
        buf = NULL;
    }
    *text = buf;
    return rc;
}

cf_err_t cf_keys_each_line(char *text, const char *what, const char *path, cf_keys_line_fn *fn,
                           void *arg)
{
    int line_no = 0;
    //  Walked by hand: strtok would merge empty lines and skew line numbers.
    char *line = text;
    while (line) {
        line_no++;
        char *end = strchr(line, '\n');
        if (end)
            *end = '\0';
        char *start = line;
        while (*start == ' ' || *start == '\t')
            start++;
        size_t len = strlen(start);
        while (len > 0
               && (start[len - 1] == ' ' || start[len - 1] == '\t' || start[len - 1] == '\r'))
            start[--len] = '\0';
        if (len == CF_KEY_Z85_LEN && cf_keys_valid(start)) {
            cf_err_t rc = fn(arg, start, line_no);
            if (rc != CF_OK)
                return rc;
        }
        else if (len > 0 && start[0] != '#')
            return cf_error_set(CF_EINVAL, "%s %s: line %d is not a 40-character Z85 key", what,
                                path, line_no);
        line = end ? end + 1 : NULL;
    }
    return CF_OK;
}

//  A key file holds exactly one key.
typedef struct {
    const char *path;
    char *z85;
    int keys;
} s_one_key_t;

static cf_err_t s_take_one(void *arg, const char *z85, int line)
{
    s_one_key_t *one = arg;
    if (++one->keys > 1)
        return cf_error_set(CF_EINVAL, "key file %s holds more than one key (line %d)", one->path,
                            line);
    memcpy(one->z85, z85, CF_KEY_Z85_SIZE);
    return CF_OK;
}

static cf_err_t s_read_key(const char *path, bool secret, char z85[CF_KEY_Z85_SIZE])
{
    if (!z85)
        return cf_error_set(CF_EINVAL, "no key buffer");
    char *text;
    cf_err_t rc = cf_keys_read_text(path, "key file", CF_KEY_FILE_MAX, secret, &text);
    if (rc != CF_OK)
        return rc;
    s_one_key_t one = { .path = path, .z85 = z85 };
    rc = cf_keys_each_line(text, "key file", path, s_take_one, &one);
    if (rc == CF_OK && one.keys == 0)
        rc = cf_error_set(CF_EINVAL, "key file %s holds no key", path);
    if (rc != CF_OK)
        explicit_bzero(z85, CF_KEY_Z85_SIZE);
    explicit_bzero(text, strlen(text));
    free(text);
    return rc;
}

cf_err_t cf_keys_read_public(const char *path, char z85[CF_KEY_Z85_SIZE])
{
    return s_read_key(path, false, z85);
}

cf_err_t cf_keys_read_secret(const char *path, char z85[CF_KEY_Z85_SIZE])
{
    return s_read_key(path, true, z85);
}

cf_err_t cf_keys_read_pair(const char *secret_path, cf_keypair_t *pair)
{
    if (!pair)
        return cf_error_set(CF_EINVAL, "no key pair to fill");
    cf_err_t rc = cf_keys_read_secret(secret_path, pair->secret_z85);
    if (rc == CF_OK && cf_keys_public_of(pair->secret_z85, pair->public_z85) != CF_OK)
        rc = cf_error_set(CF_EINVAL, "secret key file %s holds an unusable key", secret_path);
    if (rc != CF_OK)
        cf_keys_wipe(pair);
    return rc;
}

// ---------------------------------------------------------------------------
//  Sockets

static cf_err_t s_set(void *socket, int option, const void *value, size_t len, const char *name)
{
    if (zmq_setsockopt(socket, option, value, len) != 0)
        return cf_error_set(CF_ESYS, "cannot set %s: %s", name, zmq_strerror(errno));
    return CF_OK;
}

cf_err_t cf_keys_apply_server(void *socket, const char *secret_z85)
{
    if (!socket)
        return cf_error_set(CF_EINVAL, "no socket");
    if (!cf_keys_valid(secret_z85))
        return cf_error_set(CF_EINVAL, "server secret key is not valid Z85");
    int on = 1;
    cf_err_t rc = s_set(socket, ZMQ_CURVE_SERVER, &on, sizeof on, "ZMQ_CURVE_SERVER");
    if (rc == CF_OK)
        rc = s_set(socket, ZMQ_CURVE_SECRETKEY, secret_z85, CF_KEY_Z85_SIZE, "ZMQ_CURVE_SECRETKEY");
    return rc;
}

cf_err_t cf_keys_apply_client(void *socket, const char *server_public, const char *client_public,
                              const char *client_secret)
{
    if (!socket)
        return cf_error_set(CF_EINVAL, "no socket");
    if (!cf_keys_valid(server_public))
        return cf_error_set(CF_EINVAL, "server public key is not valid Z85");
    if (!cf_keys_valid(client_public) || !cf_keys_valid(client_secret))
        return cf_error_set(CF_EINVAL, "client key pair is not valid Z85");
    //  A mismatched pair would fail the handshake with a confusing
    //  "cryptographic error" on the server; catch it here.
    char derived[CF_KEY_Z85_SIZE];
    if (zmq_curve_public(derived, client_secret) != 0
        || memcmp(derived, client_public, CF_KEY_Z85_LEN) != 0)
        return cf_error_set(CF_EINVAL, "client public key does not match its secret key");
    cf_err_t rc = s_set(socket, ZMQ_CURVE_SERVERKEY, server_public, CF_KEY_Z85_SIZE,
                        "ZMQ_CURVE_SERVERKEY");
    if (rc == CF_OK)
        rc = s_set(socket, ZMQ_CURVE_PUBLICKEY, client_public, CF_KEY_Z85_SIZE,
                   "ZMQ_CURVE_PUBLICKEY");
    if (rc == CF_OK)
        rc = s_set(socket, ZMQ_CURVE_SECRETKEY, client_secret, CF_KEY_Z85_SIZE,
                   "ZMQ_CURVE_SECRETKEY");
    return rc;
}

// ---------------------------------------------------------------------------
//  Handshake monitor

void *cf_keys_monitor_new(void *ctx, void *socket)
{
    if (!ctx || !socket) {
        cf_error_set(CF_EINVAL, "monitor needs a context and a socket");
        return NULL;
    }
    //  zmq_close is asynchronous: an old monitor's endpoint can outlive its
    //  socket, and a new socket may get the same address. A counter keeps
    //  every name unique.
    static atomic_uint s_serial;
    char endpoint[80];
    snprintf(endpoint, sizeof endpoint, "inproc://cf-keys-monitor-%p-%u", socket,
             atomic_fetch_add(&s_serial, 1));
    int events = ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH
                 | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL
                 | ZMQ_EVENT_DISCONNECTED;
    if (zmq_socket_monitor(socket, endpoint, events) != 0) {
        cf_error_set(CF_ESYS, "cannot monitor socket: %s", zmq_strerror(errno));
        return NULL;
    }
    void *pair = zmq_socket(ctx, ZMQ_PAIR);
    int linger = 0;
    if (!pair || zmq_setsockopt(pair, ZMQ_LINGER, &linger, sizeof linger) != 0
        || zmq_connect(pair, endpoint) != 0) {
        cf_error_set(CF_ESYS, "cannot connect to socket monitor: %s", zmq_strerror(errno));
        if (pair)
            zmq_close(pair);
        zmq_socket_monitor(socket, NULL, 0);
        return NULL;
    }
    return pair;
}

cf_err_t cf_keys_monitor_read(void *monitor, int *value)
{
    if (!monitor)
        return CF_EINVAL;
    //  An event is two frames: 6 bytes (uint16 event, uint32 value, host
    //  order) and the endpoint text. Read both, whatever their shape.
    zmq_msg_t frame;
    zmq_msg_init(&frame);
    if (zmq_msg_recv(&frame, monitor, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&frame);
        return CF_ETIMEDOUT;
    }
    uint16_t event = 0;
    uint32_t event_value = 0;
    bool ok = zmq_msg_size(&frame) == 6;
    if (ok) {
        memcpy(&event, zmq_msg_data(&frame), sizeof event);
        memcpy(&event_value, (uint8_t *)zmq_msg_data(&frame) + 2, sizeof event_value);
    }
    while (zmq_msg_more(&frame)) {
        zmq_msg_close(&frame);
        zmq_msg_init(&frame);
        if (zmq_msg_recv(&frame, monitor, 0) < 0)
            break;
    }
    zmq_msg_close(&frame);
    if (value)
        *value = (int)event_value;
    return ok ? cf_keys_event_code(event) : CF_EPROTO;
}

cf_err_t cf_keys_event_code(uint16_t event)
{
    switch (event) {
    case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
        return CF_OK;
    case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
        return CF_EAUTH;
    case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return CF_EPROTO;
    case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        return CF_ESYS;
    default:
        return CF_ESTOP;
    }
}

//  One side uses CURVE and the other not: ZMTP says so directly, or the
//  server's ZAP handler finds no CURVE credentials to judge.
static bool s_mechanism_mismatch(int value)
{
    return value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
           || (value >= ZMQ_PROTOCOL_ERROR_ZAP_UNSPECIFIED
               && value <= ZMQ_PROTOCOL_ERROR_ZAP_INVALID_METADATA);
}

int cf_keys_judge(cf_keys_judge_t *judge, cf_err_t code, int value, char *why, size_t size)
{
    if (code == CF_OK) {
        judge->drops = 0;
        return 1;
    }
    if (code == CF_EAUTH) {
        snprintf(why, size, "the broker at %s refused this %s's key %s (not on its %s list)",
                 judge->endpoint, judge->who, judge->curve ? judge->key_fp : "(none)", judge->who);
        return -1;
    }
    if (code == CF_EPROTO && s_mechanism_mismatch(value)) {
        if (judge->curve)
            snprintf(why, size,
                     "the broker at %s does not use CURVE, this %s does (drop %s, "
                     "or fix the broker)",
                     judge->endpoint, judge->who, judge->key_options);
        else
            snprintf(why, size, "the broker at %s requires CURVE: give %s", judge->endpoint,
                     judge->key_options);
        return -1;
    }
    if (judge->curve && (code == CF_ESYS || code == CF_EPROTO)
        && ++judge->drops >= CF_KEYS_HANDSHAKE_DROPS_MAX) {
        snprintf(why, size,
                 "the broker at %s dropped %d CURVE handshakes in a row: wrong "
                 "broker key (%s), or the broker cannot authenticate %ss",
                 judge->endpoint, judge->drops, judge->key_options, judge->who);
        return -1;
    }
    return 0;
}

void cf_keys_monitor_close(void *socket, void **monitor)
{
    if (!monitor || !*monitor)
        return;
    if (socket)
        zmq_socket_monitor(socket, NULL, 0);
    zmq_close(*monitor);
    *monitor = NULL;
}

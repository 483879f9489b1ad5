//  CurveZMQ keys: generating key pairs, reading and writing key files, and
//  applying CURVE options to a socket. The broker's side of authentication
//  (the ZAP handler and the allow-lists) is broker/cf_auth; docs/security.md
//  shows how the pieces fit.
//
//  Keys are handled as Z85 text, 40 characters for 32 bytes, NUL-terminated
//  in char[CF_KEY_Z85_SIZE] buffers. A key file holds exactly one key line;
//  blank lines and comment lines (starting with '#', e.g. "# cfutures public
//  key: alice") are ignored; surrounding white space and a CR are trimmed.
//  '#' is a Z85 digit, but no valid key starts with it (a 5-character group
//  starting with '#' or '$' exceeds 32 bits), so "#..." is always a comment,
//  a commented-out key included.
//
//  Secret key files are created mode 0600 at open (O_CREAT|O_EXCL), so they
//  never exist with looser permissions, and reading one that group or others
//  may access is refused, as ssh does. Keys never appear in logs or error
//  messages: at most a fingerprint, the first 8 Z85 characters of a public
//  key. Buffers that held a secret key are wiped (explicit_bzero) before
//  they are released.
//
//  All functions are thread-safe (no shared state); the socket functions
//  follow ZeroMQ's rule that a socket is used by one thread at a time.

#ifndef CF_KEYS_H
#define CF_KEYS_H

#include "cfutures.h"

#include <stddef.h>
#include <stdint.h>

#define CF_KEY_Z85_LEN  40      //  characters of a Z85 key
#define CF_KEY_Z85_SIZE 41      //  a Z85 key with its NUL
#define CF_KEY_BIN_LEN  32      //  bytes of a binary key
#define CF_KEY_FP_LEN   8       //  characters of a fingerprint
#define CF_KEY_FP_SIZE  9       //  a fingerprint with its NUL
#define CF_KEY_FILE_MAX 4096    //  bytes of a key file at most

//  A CURVE key pair as Z85 text.
typedef struct {
    char public_z85[CF_KEY_Z85_SIZE];
    char secret_z85[CF_KEY_Z85_SIZE];
} cf_keypair_t;

//  Generates a fresh key pair (zmq_curve_keypair). CF_OK, or CF_ESYS when
//  libzmq was built without CURVE support (zmq_has("curve") is 0).
cf_err_t cf_keys_generate(cf_keypair_t *pair);

//  Wipes the secret half of pair. Safe with NULL.
void cf_keys_wipe(cf_keypair_t *pair);

//  True when z85 is exactly 40 Z85 characters that decode to 32 bytes and
//  encode back to the same text (so every key has one spelling).
bool cf_keys_valid(const char *z85);

//  Decodes a valid Z85 key into 32 bytes. CF_OK or CF_EINVAL.
cf_err_t cf_keys_decode(const char *z85, uint8_t bin[CF_KEY_BIN_LEN]);
//  Encodes 32 bytes as Z85 text (never fails).
void cf_keys_encode(const uint8_t bin[CF_KEY_BIN_LEN], char z85[CF_KEY_Z85_SIZE]);

//  The first 8 characters of a (public) Z85 key, for logs; "" when z85
//  does not start with 8 Z85 characters. Never pass a secret key.
void cf_keys_fingerprint(const char *z85, char fp[CF_KEY_FP_SIZE]);

//  Derives the public key of a secret key (zmq_curve_public). CF_OK or
//  CF_EINVAL for an invalid secret key.
cf_err_t cf_keys_public_of(const char *secret_z85, char public_z85[CF_KEY_Z85_SIZE]);

//  Writes pair to two new files: public_path (mode 0644) and secret_path
//  (mode 0600, set at creation). comment, when not NULL, is written as a
//  "# comment" line before the key; it must be one line of printable text.
//  Refuses to replace an existing file: CF_ESYS with errno EEXIST, and
//  nothing is created. On any failure no half-written file is left behind.
//  Returns CF_OK, CF_EINVAL or CF_ESYS with cf_last_error() saying why.
cf_err_t cf_keys_write(const cf_keypair_t *pair, const char *public_path, const char *secret_path,
                       const char *comment);

//  Reads the one public key in a key file into z85. CF_OK, CF_ENOTFOUND (no
//  such file), CF_EINVAL (not a regular file, too large, no key, more than
//  one key, a line that is neither) or CF_ESYS, with cf_last_error() naming
//  the file and line but never the key.
cf_err_t cf_keys_read_public(const char *path, char z85[CF_KEY_Z85_SIZE]);

//  Reads the one secret key in a secret key file. As cf_keys_read_public,
//  and CF_EAUTH when group or others may access the file ("chmod 600 it").
cf_err_t cf_keys_read_secret(const char *path, char z85[CF_KEY_Z85_SIZE]);

//  Reads a secret key file and derives its public half: a process's own
//  key pair (cf-worker --key, a client's key). Same errors as
//  cf_keys_read_secret.
cf_err_t cf_keys_read_pair(const char *secret_path, cf_keypair_t *pair);

//  Key files and allow-lists share one format and one reader. The text of
//  a small regular file (else CF_EINVAL): at most max_bytes, no NUL bytes,
//  and with secret, no access for group or others (CF_EAUTH,
//  the message says the chmod to run). what names the file in errors ("key
//  file", "allow-list"), never its content. *text (NUL-terminated) is yours
//  to free; wipe it first when it held a secret.
cf_err_t cf_keys_read_text(const char *path, const char *what, size_t max_bytes, bool secret,
                           char **text);

//  Called for each key line: z85 is a valid 40-character key, line its
//  number. CF_OK goes on; anything else stops the walk and is returned.
typedef cf_err_t(cf_keys_line_fn)(void *arg, const char *z85, int line);
//  Walks the lines of text (modified in place): blanks around a line are
//  trimmed, blank lines and '#' comments skipped, a key line goes to fn,
//  any other line is CF_EINVAL naming what, path and the line number.
cf_err_t cf_keys_each_line(char *text, const char *what, const char *path, cf_keys_line_fn *fn,
                           void *arg);

//  Makes socket a CURVE server with this secret key (ZMQ_CURVE_SERVER,
//  ZMQ_CURVE_SECRETKEY). Call before bind. This alone does NOT authenticate
//  clients: without a ZAP handler libzmq accepts any client that knows the
//  server's public key. Brokers use cf_auth_apply_server, which also fails
//  closed. CF_OK, CF_EINVAL (bad key) or CF_ESYS.
cf_err_t cf_keys_apply_server(void *socket, const char *secret_z85);

//  Makes socket a CURVE client of a server with public key server_public,
//  proving its own identity with the client key pair. Call before connect.
//  CF_OK, CF_EINVAL (a bad key) or CF_ESYS.
cf_err_t cf_keys_apply_client(void *socket, const char *server_public, const char *client_public,
                              const char *client_secret);

// ---------------------------------------------------------------------------
//  Noticing a refused handshake. ZeroMQ reconnects silently forever when the
//  server refuses a key, so a client or worker that wants to fail fast with
//  CF_EAUTH watches its socket's handshake events.

//  Starts watching socket's handshake outcomes: returns a PAIR socket in ctx
//  (yours: poll it for ZMQ_POLLIN, read it with cf_keys_monitor_read, close
//  it with cf_keys_monitor_close before closing socket), or NULL with
//  cf_last_error(). Call before connect. Use from the thread that owns
//  socket.
void *cf_keys_monitor_new(void *ctx, void *socket);

//  Reads one event without blocking. Returns
//      CF_OK        a handshake succeeded (the server accepted the keys)
//      CF_EAUTH     the server refused our key: ZAP said no (*value 400).
//                   Definite: retrying with the same key cannot succeed.
//      CF_EPROTO    the handshake broke a rule (*value a
//                   ZMQ_PROTOCOL_ERROR_*): ..._MECHANISM_MISMATCH means
//                   one side uses CURVE and the other does not
//      CF_ESYS      the connection dropped during the handshake (*value an
//                   errno, EPIPE or ECONNRESET). This is what a wrong
//                   server key looks like from the client (the server
//                   cannot open our HELLO and hangs up without a word),
//                   and what a server without a ZAP handler that fails
//                   closed looks like; but a server that just went away
//                   looks the same, so only a run of these with no success
//                   in between says "wrong server key".
//      CF_ESTOP     the connection closed (after a failure, or later)
//      CF_ETIMEDOUT no event pending
//  *value may be NULL.
cf_err_t cf_keys_monitor_read(void *monitor, int *value);

//  Stops the monitor on socket and closes the PAIR. Safe with NULL and twice.
void cf_keys_monitor_close(void *socket, void **monitor);

//  The code cf_keys_monitor_read returns for a raw ZMQ_EVENT_*, for a
//  caller that reads its monitor itself (it watches other events too).
cf_err_t cf_keys_event_code(uint16_t event);

//  CURVE handshakes dropped without a word, in a row, before a peer calls
//  its key refused: a wrong broker key (or a broker without its
//  authentication handler) looks like that every time; a broker going away
//  at the wrong moment, once (docs/security.md, "Noticing a refused key").
#define CF_KEYS_HANDSHAKE_DROPS_MAX 3

//  What a client or a worker makes of its handshakes: the one place that
//  decides when a broker refused it for good, and says so.
typedef struct {
    bool curve;                 //  this side uses CURVE
    const char *who;            //  "client", "worker": for the message
    const char *endpoint;       //  the broker's, for the message
    const char *key_fp;         //  our key's fingerprint; NULL without CURVE
    const char *key_options;    //  how users give keys ("--broker-key and --key")
    int drops;                  //  CURVE handshakes dropped since the last success
} cf_keys_judge_t;

//  Judges one handshake outcome (code and value as cf_keys_monitor_read
//  gives them). Returns 1 when the broker accepted us, -1 when it refused
//  us for good (why, size bytes, says why and what to do), 0 when nothing
//  is decided (other events, or a drop that may be chance).
int cf_keys_judge(cf_keys_judge_t *judge, cf_err_t code, int value, char *why, size_t size);

#endif

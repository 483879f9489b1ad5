//  cf_keys: key generation, key files (format, permissions, malformed
//  content) and CURVE socket options. Handshakes over real sockets are
//  tested in broker/cf_auth_test.c.

#include "cf_keys.h"
#include "cf_error.h"

#include "cf_unitkit.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include <cmocka.h>

//  The keys live in a directory of their own (tests/cf_unitkit.h), removed
//  after the group and at exit, so no key is left behind in /tmp.
static int s_setup(void **state)
{
    (void)state;
    return cf_unitkit_dir_make("cf_keys_test") ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    cf_unitkit_dir_remove();
    return 0;
}

//  name's path in the test directory.
static const char *s_path(const char *name)
{
    return cf_unitkit_dir_path(name);
}

static void s_write_file(const char *path, mode_t mode, const char *text, size_t len)
{
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
}

static mode_t s_mode(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_mode & 07777;
}

//  The error message must never quote a key (or part of one).
static void s_assert_no_key_in_error(const char *key)
{
    char head[11];
    memcpy(head, key, 10);
    head[10] = '\0';
    assert_null(strstr(cf_last_error(), head));
}

// ---------------------------------------------------------------------------

static void test_generate_gives_distinct_valid_matching_keys(void **state)
{
    (void)state;
    cf_keypair_t a, b;
    assert_int_equal(cf_keys_generate(&a), CF_OK);
    assert_int_equal(cf_keys_generate(&b), CF_OK);
    assert_int_equal(strlen(a.public_z85), CF_KEY_Z85_LEN);
    assert_int_equal(strlen(a.secret_z85), CF_KEY_Z85_LEN);
    assert_true(cf_keys_valid(a.public_z85));
    assert_true(cf_keys_valid(a.secret_z85));
    assert_string_not_equal(a.public_z85, b.public_z85);
    assert_string_not_equal(a.secret_z85, b.secret_z85);
    char derived[CF_KEY_Z85_SIZE];
    assert_int_equal(cf_keys_public_of(a.secret_z85, derived), CF_OK);
    assert_string_equal(derived, a.public_z85);
    cf_keys_wipe(&a);
    assert_int_equal(a.secret_z85[0], 0);
    cf_keys_wipe(NULL);
}

static void test_valid_rejects_wrong_length_bad_characters_and_overflow(void **state)
{
    (void)state;
    cf_keypair_t pair;
    assert_int_equal(cf_keys_generate(&pair), CF_OK);
    char text[64];
    assert_false(cf_keys_valid(NULL));
    assert_false(cf_keys_valid(""));
    snprintf(text, sizeof text, "%.39s", pair.public_z85);
    assert_false(cf_keys_valid(text));
    snprintf(text, sizeof text, "%sA", pair.public_z85);
    assert_false(cf_keys_valid(text));
    snprintf(text, sizeof text, "%s", pair.public_z85);
    text[17] = ' ';
    assert_false(cf_keys_valid(text));
    text[17] = '"';
    assert_false(cf_keys_valid(text));
    text[17] = ',';
    assert_false(cf_keys_valid(text));
    //  40 '#' are Z85 digits, but "#####" is 85^5 - 1 > 2^32 - 1.
    memset(text, '#', 40);
    text[40] = '\0';
    assert_false(cf_keys_valid(text));
    uint8_t bin[CF_KEY_BIN_LEN];
    assert_int_equal(cf_keys_decode(text, bin), CF_EINVAL);
    //  Round trip.
    assert_int_equal(cf_keys_decode(pair.public_z85, bin), CF_OK);
    char again[CF_KEY_Z85_SIZE];
    cf_keys_encode(bin, again);
    assert_string_equal(again, pair.public_z85);
}

static void test_fingerprint_is_first_eight_characters_or_empty(void **state)
{
    (void)state;
    char fp[CF_KEY_FP_SIZE];
    cf_keys_fingerprint("rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7", fp);
    assert_string_equal(fp, "rq:rM>}U");
    cf_keys_fingerprint("short", fp);
    assert_string_equal(fp, "");
    cf_keys_fingerprint("abc def ghijkl", fp);
    assert_string_equal(fp, "");
    cf_keys_fingerprint(NULL, fp);
    assert_string_equal(fp, "");
}

static void test_public_of_rejects_invalid_secret(void **state)
{
    (void)state;
    char out[CF_KEY_Z85_SIZE];
    assert_int_equal(cf_keys_public_of("not a key", out), CF_EINVAL);
}

static void test_write_sets_modes_whatever_the_umask(void **state)
{
    (void)state;
    mode_t masks[] = { 0, 022, 077 };
    for (size_t i = 0; i < sizeof masks / sizeof masks[0]; i++) {
        char pub[32], sec[32];
        snprintf(pub, sizeof pub, "umask%zu.key", i);
        snprintf(sec, sizeof sec, "umask%zu.key_secret", i);
        const char *pub_path = s_path(pub), *sec_path = s_path(sec);
        cf_keypair_t pair;
        assert_int_equal(cf_keys_generate(&pair), CF_OK);
        mode_t old = umask(masks[i]);
        cf_err_t rc = cf_keys_write(&pair, pub_path, sec_path, "test pair");
        umask(old);
        assert_int_equal(rc, CF_OK);
        assert_int_equal(s_mode(pub_path), 0644);
        assert_int_equal(s_mode(sec_path), 0600);
    }
}

static void test_written_files_read_back(void **state)
{
    (void)state;
    cf_keypair_t pair, back;
    assert_int_equal(cf_keys_generate(&pair), CF_OK);
    const char *pub = s_path("alice.key"), *sec = s_path("alice.key_secret");
    assert_int_equal(cf_keys_write(&pair, pub, sec, "cfutures key: alice"), CF_OK);
    char z85[CF_KEY_Z85_SIZE];
    assert_int_equal(cf_keys_read_public(pub, z85), CF_OK);
    assert_string_equal(z85, pair.public_z85);
    assert_int_equal(cf_keys_read_secret(sec, z85), CF_OK);
    assert_string_equal(z85, pair.secret_z85);
    assert_int_equal(cf_keys_read_pair(sec, &back), CF_OK);
    assert_string_equal(back.public_z85, pair.public_z85);
    assert_string_equal(back.secret_z85, pair.secret_z85);
    //  The public file holds the comment and the public key only.
    char text[256] = { 0 };
    FILE *f = fopen(pub, "r");
    assert_non_null(f);
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    assert_true(n > 0);
    char expect[128];
    snprintf(expect, sizeof expect, "# cfutures key: alice\n%s\n", pair.public_z85);
    assert_string_equal(text, expect);
    assert_null(strstr(text, pair.secret_z85));
}

static void test_write_refuses_to_overwrite_and_creates_nothing(void **state)
{
    (void)state;
    cf_keypair_t pair;
    assert_int_equal(cf_keys_generate(&pair), CF_OK);
    const char *pub = s_path("bob.key"), *sec = s_path("bob.key_secret");
    s_write_file(sec, 0600, "old secret\n", 11);
    errno = 0;
    assert_int_equal(cf_keys_write(&pair, pub, sec, NULL), CF_ESYS);
    assert_int_equal(errno, EEXIST);
    assert_non_null(strstr(cf_last_error(), "refusing to overwrite"));
    assert_int_equal(access(pub, F_OK), -1);
    //  The old file is untouched.
    char text[32] = { 0 };
    FILE *f = fopen(sec, "r");
    assert_non_null(f);
    assert_int_equal(fread(text, 1, sizeof text - 1, f), 11);
    fclose(f);
    assert_string_equal(text, "old secret\n");

    //  A public file in the way: likewise.
    const char *pub2 = s_path("carol.key"), *sec2 = s_path("carol.key_secret");
    s_write_file(pub2, 0644, "x\n", 2);
    assert_int_equal(cf_keys_write(&pair, pub2, sec2, NULL), CF_ESYS);
    assert_int_equal(access(sec2, F_OK), -1);
}

static void test_write_rejects_bad_arguments(void **state)
{
    (void)state;
    cf_keypair_t pair;
    assert_int_equal(cf_keys_generate(&pair), CF_OK);
    const char *pub = s_path("dave.key"), *sec = s_path("dave.key_secret");
    assert_int_equal(cf_keys_write(&pair, pub, pub, NULL), CF_EINVAL);
    assert_int_equal(cf_keys_write(&pair, pub, sec, "two\nlines"), CF_EINVAL);
    assert_int_equal(cf_keys_write(NULL, pub, sec, NULL), CF_EINVAL);
    cf_keypair_t bad = pair;
    bad.secret_z85[3] = ' ';
    assert_int_equal(cf_keys_write(&bad, pub, sec, NULL), CF_EINVAL);
    assert_int_equal(access(pub, F_OK), -1);
    assert_int_equal(access(sec, F_OK), -1);
    //  An unwritable place: nothing is left behind.
    assert_int_equal(cf_keys_write(&pair, pub, "/nonexistent-dir/x.key_secret", NULL), CF_ESYS);
    assert_int_equal(access(pub, F_OK), -1);
}

static void test_read_secret_refuses_group_or_world_access(void **state)
{
    (void)state;
    cf_keypair_t pair;
    assert_int_equal(cf_keys_generate(&pair), CF_OK);
    char text[64];
    int len = snprintf(text, sizeof text, "%s\n", pair.secret_z85);
    mode_t modes[] = { 0640, 0604, 0644, 0660, 0610 };
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        const char *path = s_path("loose.key_secret");
        s_write_file(path, modes[i], text, (size_t)len);
        char z85[CF_KEY_Z85_SIZE];
        assert_int_equal(cf_keys_read_secret(path, z85), CF_EAUTH);
        assert_non_null(strstr(cf_last_error(), "chmod 600"));
        s_assert_no_key_in_error(pair.secret_z85);
        cf_keypair_t out;
        assert_int_equal(cf_keys_read_pair(path, &out), CF_EAUTH);
    }
    //  0400 and 0600 are fine; a public key file's mode does not matter.
    const char *path = s_path("tight.key_secret");
    s_write_file(path, 0400, text, (size_t)len);
    char z85[CF_KEY_Z85_SIZE];
    assert_int_equal(cf_keys_read_secret(path, z85), CF_OK);
    const char *pub = s_path("open.key");
    s_write_file(pub, 0666, text, (size_t)len);
    assert_int_equal(cf_keys_read_public(pub, z85), CF_OK);
}

static void test_read_accepts_comments_blank_lines_and_crlf(void **state)
{
    (void)state;
    cf_keypair_t pair, other;
    assert_int_equal(cf_keys_generate(&pair), CF_OK);
    assert_int_equal(cf_keys_generate(&other), CF_OK);
    char text[512];
    //  A commented-out key ("#" + key) is a comment: no valid key starts with '#'.
    int len = snprintf(text, sizeof text, "# a comment\r\n\r\n#%s\n   %s  \r\n\n# end",
                       other.public_z85, pair.public_z85);
    const char *path = s_path("commented.key");
    s_write_file(path, 0644, text, (size_t)len);
    char z85[CF_KEY_Z85_SIZE];
    assert_int_equal(cf_keys_read_public(path, z85), CF_OK);
    assert_string_equal(z85, pair.public_z85);
    //  No final newline.
    s_write_file(path, 0644, pair.public_z85, CF_KEY_Z85_LEN);
    assert_int_equal(cf_keys_read_public(path, z85), CF_OK);
    assert_string_equal(z85, pair.public_z85);
}

static void test_read_rejects_malformed_files(void **state)
{
    (void)state;
    cf_keypair_t pair, other;
    assert_int_equal(cf_keys_generate(&pair), CF_OK);
    assert_int_equal(cf_keys_generate(&other), CF_OK);
    char two[128], short_key[64], long_key[64], bad_char[64];
    snprintf(two, sizeof two, "%s\n%s\n", pair.public_z85, other.public_z85);
    snprintf(short_key, sizeof short_key, "%.39s\n", pair.public_z85);
    snprintf(long_key, sizeof long_key, "%s0\n", pair.public_z85);
    snprintf(bad_char, sizeof bad_char, "%s\n", pair.public_z85);
    bad_char[20] = '~';
    static const char binary[] = "\x00\x01\x02garbage\xff\xfe";
    struct {
        const char *name;
        const char *text;
        size_t len;
        const char *why;    //  expected in the message
    } cases[] = {
        { "empty", "", 0, "no key" },
        { "comments only", "# nothing\n\n", 11, "no key" },
        { "two keys", two, strlen(two), "more than one key" },
        { "short key", short_key, strlen(short_key), "line 1" },
        { "long key", long_key, strlen(long_key), "line 1" },
        { "bad character", bad_char, strlen(bad_char), "line 1" },
        { "binary", binary, sizeof binary - 1, "binary" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *path = s_path("bad.key");
        s_write_file(path, 0600, cases[i].text, cases[i].len);
        char z85[CF_KEY_Z85_SIZE];
        cf_err_t rc = cf_keys_read_public(path, z85);
        if (rc != CF_EINVAL)
            fail_msg("%s: got %s", cases[i].name, cf_strerror(rc));
        if (!strstr(cf_last_error(), cases[i].why))
            fail_msg("%s: message \"%s\" lacks \"%s\"", cases[i].name, cf_last_error(),
                     cases[i].why);
        s_assert_no_key_in_error(pair.public_z85);
        s_assert_no_key_in_error(other.public_z85);
        assert_int_equal(cf_keys_read_secret(path, z85), CF_EINVAL);
        s_assert_no_key_in_error(pair.public_z85);
    }
}

static void test_read_rejects_missing_huge_and_non_regular_files(void **state)
{
    (void)state;
    char z85[CF_KEY_Z85_SIZE];
    assert_int_equal(cf_keys_read_public(s_path("missing.key"), z85), CF_ENOTFOUND);
    assert_int_equal(cf_keys_read_public(cf_unitkit_dir(), z85), CF_EINVAL);
    assert_non_null(strstr(cf_last_error(), "not a regular file"));
    assert_int_equal(cf_keys_read_public("/dev/null", z85), CF_EINVAL);
    assert_int_equal(cf_keys_read_public(NULL, z85), CF_EINVAL);
    assert_int_equal(cf_keys_read_public("", z85), CF_EINVAL);
    //  Bigger than CF_KEY_FILE_MAX: refused before parsing.
    size_t size = CF_KEY_FILE_MAX + 100;
    char *big = malloc(size);
    assert_non_null(big);
    memset(big, '#', size);
    const char *path = s_path("huge.key");
    s_write_file(path, 0600, big, size);
    free(big);
    assert_int_equal(cf_keys_read_public(path, z85), CF_EINVAL);
    assert_non_null(strstr(cf_last_error(), "too large"));
}

static void test_apply_server_and_client_set_curve(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    cf_keypair_t server, client;
    assert_int_equal(cf_keys_generate(&server), CF_OK);
    assert_int_equal(cf_keys_generate(&client), CF_OK);

    void *router = zmq_socket(ctx, ZMQ_ROUTER);
    assert_int_equal(cf_keys_apply_server(router, server.secret_z85), CF_OK);
    int value = 0;
    size_t len = sizeof value;
    assert_int_equal(zmq_getsockopt(router, ZMQ_MECHANISM, &value, &len), 0);
    assert_int_equal(value, ZMQ_CURVE);
    assert_int_equal(zmq_getsockopt(router, ZMQ_CURVE_SERVER, &value, &len), 0);
    assert_int_equal(value, 1);
    assert_int_equal(cf_keys_apply_server(router, "bad"), CF_EINVAL);
    assert_int_equal(cf_keys_apply_server(NULL, server.secret_z85), CF_EINVAL);

    void *dealer = zmq_socket(ctx, ZMQ_DEALER);
    assert_int_equal(
        cf_keys_apply_client(dealer, server.public_z85, client.public_z85, client.secret_z85),
        CF_OK);
    assert_int_equal(zmq_getsockopt(dealer, ZMQ_MECHANISM, &value, &len), 0);
    assert_int_equal(value, ZMQ_CURVE);
    char got[CF_KEY_Z85_SIZE];
    len = sizeof got;
    assert_int_equal(zmq_getsockopt(dealer, ZMQ_CURVE_SERVERKEY, got, &len), 0);
    assert_string_equal(got, server.public_z85);

    //  A pair that does not match, or a bad key, is refused before any
    //  handshake, and the message names no key.
    assert_int_equal(
        cf_keys_apply_client(dealer, server.public_z85, server.public_z85, client.secret_z85),
        CF_EINVAL);
    assert_non_null(strstr(cf_last_error(), "does not match"));
    s_assert_no_key_in_error(client.secret_z85);
    assert_int_equal(cf_keys_apply_client(dealer, "x", client.public_z85, client.secret_z85),
                     CF_EINVAL);
    assert_int_equal(cf_keys_apply_client(dealer, server.public_z85, client.public_z85, NULL),
                     CF_EINVAL);
    zmq_close(router);
    zmq_close(dealer);
    zmq_ctx_term(ctx);
}

static void test_judge_refuses_for_good_only_what_cannot_succeed(void **state)
{
    (void)state;
    char why[256];
    cf_keys_judge_t judge = {
        .curve = true,
        .who = "worker",
        .endpoint = "tcp://127.0.0.1:5556",
        .key_fp = "AbCdEfGh",
        .key_options = "--broker-key and --key",
    };
    assert_int_equal(cf_keys_judge(&judge, CF_OK, 0, why, sizeof why), 1);
    //  A ZAP refusal is final.
    assert_int_equal(cf_keys_judge(&judge, CF_EAUTH, 400, why, sizeof why), -1);
    assert_string_equal(why, "the broker at tcp://127.0.0.1:5556 refused this worker's key "
                             "AbCdEfGh (not on its worker list)");
    //  Drops: only a run of them, and a success in between starts again.
    for (int i = 1; i < CF_KEYS_HANDSHAKE_DROPS_MAX; i++)
        assert_int_equal(cf_keys_judge(&judge, CF_ESYS, 104, why, sizeof why), 0);
    assert_int_equal(cf_keys_judge(&judge, CF_OK, 0, why, sizeof why), 1);
    for (int i = 1; i < CF_KEYS_HANDSHAKE_DROPS_MAX; i++)
        assert_int_equal(cf_keys_judge(&judge, CF_EPROTO, 0, why, sizeof why), 0);
    assert_int_equal(cf_keys_judge(&judge, CF_ESYS, 104, why, sizeof why), -1);
    assert_non_null(strstr(why, "dropped 3 CURVE handshakes in a row"));
    //  Connections closing say nothing.
    assert_int_equal(cf_keys_judge(&judge, CF_ESTOP, 0, why, sizeof why), 0);
    //  A mechanism mismatch, seen from either side.
    assert_int_equal(cf_keys_judge(&judge, CF_EPROTO, ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH,
                                   why, sizeof why),
                     -1);
    assert_non_null(strstr(why, "does not use CURVE, this worker does"));
    cf_keys_judge_t plain = { .who = "client",
                              .endpoint = "tcp://h:1",
                              .key_options = "curve_broker_key and curve_key" };
    assert_int_equal(
        cf_keys_judge(&plain, CF_EPROTO, ZMQ_PROTOCOL_ERROR_ZAP_UNSPECIFIED, why, sizeof why), -1);
    assert_string_equal(why, "the broker at tcp://h:1 requires CURVE: give curve_broker_key "
                             "and curve_key");
    //  Without CURVE a drop is only a broker going away.
    for (int i = 0; i < 10; i++)
        assert_int_equal(cf_keys_judge(&plain, CF_ESYS, 104, why, sizeof why), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generate_gives_distinct_valid_matching_keys),
        cmocka_unit_test(test_valid_rejects_wrong_length_bad_characters_and_overflow),
        cmocka_unit_test(test_fingerprint_is_first_eight_characters_or_empty),
        cmocka_unit_test(test_public_of_rejects_invalid_secret),
        cmocka_unit_test(test_write_sets_modes_whatever_the_umask),
        cmocka_unit_test(test_written_files_read_back),
        cmocka_unit_test(test_write_refuses_to_overwrite_and_creates_nothing),
        cmocka_unit_test(test_write_rejects_bad_arguments),
        cmocka_unit_test(test_read_secret_refuses_group_or_world_access),
        cmocka_unit_test(test_read_accepts_comments_blank_lines_and_crlf),
        cmocka_unit_test(test_read_rejects_malformed_files),
        cmocka_unit_test(test_read_rejects_missing_huge_and_non_regular_files),
        cmocka_unit_test(test_apply_server_and_client_set_curve),
        cmocka_unit_test(test_judge_refuses_for_good_only_what_cannot_succeed),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}

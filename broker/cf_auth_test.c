//  cf_auth: the ZAP handler and allow-lists (client, worker and admin keys)
//  with real CURVE handshakes over tcp://127.0.0.1 (a ROUTER server, DEALER
//  clients), raw ZAP requests, stalled TCP connections, reloads and load
//  errors.
//
//  Refusals are observed, never waited out: the client's socket monitor
//  reports the failed handshake (cf_keys_monitor_read), and only then does
//  a short poll confirm that no message reached the server.

#define _GNU_SOURCE    //  nftw

#include "cf_auth.h"
#include "cf_clock.h"
#include "cf_error.h"
#include "cf_keys.h"
#include "cf_log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include <cmocka.h>

#define S_EVENT_TIMEOUT_MS 5000    //  a handshake outcome arrives well within this
#define S_QUIET_MS         300     //  "nothing arrives" is checked this long

// ---------------------------------------------------------------------------
//  Fixture: keys on disk, a context with cf_auth, a CURVE ROUTER on a port.

static char s_dir[64];
static cf_keypair_t s_server, s_client, s_worker, s_admin, s_stranger;

static struct {
    pthread_mutex_t mutex;
    char text[16384];    //  every log line, newline-separated
} s_log = { PTHREAD_MUTEX_INITIALIZER, "" };

static void s_log_collect(cf_log_level_t level, const char *component, const char *message,
                          void *arg)
{
    (void)level, (void)arg;
    pthread_mutex_lock(&s_log.mutex);
    size_t used = strlen(s_log.text);
    snprintf(s_log.text + used, sizeof s_log.text - used, "%s: %s\n", component, message);
    pthread_mutex_unlock(&s_log.mutex);
}

static bool s_log_has(const char *needle)
{
    pthread_mutex_lock(&s_log.mutex);
    bool found = strstr(s_log.text, needle) != NULL;
    pthread_mutex_unlock(&s_log.mutex);
    return found;
}

static int s_remove(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static const char *s_path(const char *name)
{
    static char paths[4][256];
    static int next;
    char *path = paths[next++ % 4];
    snprintf(path, sizeof paths[0], "%s/%s", s_dir, name);
    return path;
}

static void s_write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

//  Removes the key directory; also at exit, so a failed run (which may skip
//  the group teardown) leaves no keys behind in /tmp.
static void s_remove_dir(void)
{
    if (s_dir[0])
        nftw(s_dir, s_remove, 16, FTW_DEPTH | FTW_PHYS);
    s_dir[0] = '\0';
}

static int s_group_setup(void **state)
{
    (void)state;
    snprintf(s_dir, sizeof s_dir, "/tmp/cf_auth_test.XXXXXX");
    if (!mkdtemp(s_dir))
        return -1;
    atexit(s_remove_dir);
    if (cf_keys_generate(&s_server) || cf_keys_generate(&s_client) || cf_keys_generate(&s_worker)
        || cf_keys_generate(&s_admin) || cf_keys_generate(&s_stranger))
        return -1;
    if (cf_keys_write(&s_server, s_path("broker.key"), s_path("broker.key_secret"), "broker"))
        return -1;
    //  Clients: a directory of *.key files (plus files that must be ignored).
    if (mkdir(s_path("clients"), 0755) != 0)
        return -1;
    if (cf_keys_write(&s_client, s_path("clients/alice.key"), s_path("clients/alice.key_secret"),
                      "alice"))
        return -1;
    FILE *f = fopen(s_path("clients/README"), "w");
    if (!f || fputs("not a key\n", f) < 0 || fclose(f) != 0)
        return -1;
    //  Workers: a file, one key per line.
    char text[256];
    snprintf(text, sizeof text, "# workers\n\n%s\n", s_worker.public_z85);
    f = fopen(s_path("workers.list"), "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0)
        return -1;
    //  Admins: a directory, as cf-broker --admin-keys takes it.
    if (mkdir(s_path("admins"), 0755) != 0
        || cf_keys_write(&s_admin, s_path("admins/ops.key"), s_path("ops.key_secret"), "ops"))
        return -1;
    cf_log_set_handler(s_log_collect, NULL, CF_LOG_DEBUG);
    return 0;
}

static int s_group_teardown(void **state)
{
    (void)state;
    cf_log_set_handler(NULL, NULL, CF_LOG_INFO);
    s_remove_dir();
    //  Keys never appear in logs: not even the 10 characters after a
    //  fingerprint, of any key used in any test.
    const cf_keypair_t *pairs[] = { &s_server, &s_client, &s_worker, &s_admin, &s_stranger };
    for (size_t i = 0; i < 5; i++) {
        char tail[16];
        snprintf(tail, sizeof tail, "%.10s", pairs[i]->public_z85 + CF_KEY_FP_LEN);
        if (s_log_has(tail) || s_log_has(pairs[i]->secret_z85 + 20))
            return -1;
    }
    return 0;
}

//  Sockets a test opened and has not closed yet: a failed assertion jumps
//  past its zmq_close, and zmq_ctx_term in the teardown would then wait for
//  that socket forever.
static void *s_open[64];

static void *s_track(void *socket)
{
    for (size_t i = 0; i < sizeof s_open / sizeof s_open[0]; i++)
        if (!s_open[i]) {
            s_open[i] = socket;
            return socket;
        }
    fail_msg("too many open sockets");
    return NULL;
}

static void s_close(void *socket)
{
    for (size_t i = 0; i < sizeof s_open / sizeof s_open[0]; i++)
        if (s_open[i] == socket)
            s_open[i] = NULL;
    zmq_close(socket);
}

static void s_close_all(void)
{
    for (size_t i = sizeof s_open / sizeof s_open[0]; i-- > 0;)
        if (s_open[i]) {
            zmq_close(s_open[i]);
            s_open[i] = NULL;
        }
}

typedef struct {
    void *ctx;
    cf_auth_t *auth;
    void *router;
    void *monitor;    //  the router's handshake events
    char endpoint[64];
} s_fixture_t;

static void *s_router_new_in(void *ctx, cf_auth_t *auth, const char *domain, char *endpoint,
                             size_t size)
{
    void *router = zmq_socket(ctx, ZMQ_ROUTER);
    assert_non_null(router);
    int linger = 0;
    assert_int_equal(zmq_setsockopt(router, ZMQ_LINGER, &linger, sizeof linger), 0);
    if (auth)
        assert_int_equal(cf_auth_apply_server(router, auth, domain), CF_OK);
    assert_int_equal(zmq_bind(router, "tcp://127.0.0.1:*"), 0);
    assert_int_equal(zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, endpoint, &size), 0);
    return router;
}

static void *s_router_new(void *ctx, cf_auth_t *auth, char *endpoint, size_t size)
{
    return s_router_new_in(ctx, auth, NULL, endpoint, size);
}

static int s_setup(void **state)
{
    s_fixture_t *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    fx->ctx = zmq_ctx_new();
    cf_auth_config_t config = {
        .zmq_context = fx->ctx,
        .secret_key_file = s_path("broker.key_secret"),
        .client_keys = s_path("clients"),
        .worker_keys = s_path("workers.list"),
        .admin_keys = s_path("admins"),
        .handshake_ivl_ms = 500,
    };
    fx->auth = cf_auth_new(&config);
    if (!fx->auth) {
        fprintf(stderr, "cf_auth_new: %s\n", cf_last_error());
        return -1;
    }
    fx->router = s_router_new(fx->ctx, fx->auth, fx->endpoint, sizeof fx->endpoint);
    fx->monitor = cf_keys_monitor_new(fx->ctx, fx->router);
    if (!fx->monitor)
        return -1;
    *state = fx;
    return 0;
}

static int s_teardown(void **state)
{
    s_fixture_t *fx = *state;
    s_close_all();
    cf_keys_monitor_close(fx->router, &fx->monitor);
    zmq_close(fx->router);
    cf_auth_destroy(&fx->auth);
    cf_auth_destroy(&fx->auth);    //  safe twice
    zmq_ctx_term(fx->ctx);
    free(fx);
    return 0;
}

//  A DEALER to endpoint: CURVE with pair against server_public, or
//  plaintext when pair is NULL. *monitor gets its handshake monitor.
static void *s_dealer_new(void *ctx, const char *endpoint, const char *server_public,
                          const cf_keypair_t *pair, void **monitor)
{
    void *dealer = zmq_socket(ctx, ZMQ_DEALER);
    assert_non_null(dealer);
    int linger = 0, reconnect_ms = 200;
    assert_int_equal(zmq_setsockopt(dealer, ZMQ_LINGER, &linger, sizeof linger), 0);
    assert_int_equal(zmq_setsockopt(dealer, ZMQ_RECONNECT_IVL, &reconnect_ms, sizeof reconnect_ms),
                     0);
    if (pair)
        assert_int_equal(
            cf_keys_apply_client(dealer, server_public, pair->public_z85, pair->secret_z85), CF_OK);
    *monitor = cf_keys_monitor_new(ctx, dealer);
    assert_non_null(*monitor);
    s_track(dealer);
    s_track(*monitor);
    assert_int_equal(zmq_connect(dealer, endpoint), 0);
    return dealer;
}

static void s_dealer_destroy(void **dealer, void **monitor)
{
    s_close(*monitor);
    *monitor = NULL;
    s_close(*dealer);
    *dealer = NULL;
}

//  The first handshake outcome on monitor (disconnects skipped), or
//  CF_ETIMEDOUT.
static cf_err_t s_wait_outcome(void *monitor, int *value)
{
    int64_t deadline = cf_clock_now_ms() + S_EVENT_TIMEOUT_MS;
    for (;;) {
        zmq_pollitem_t item = { monitor, 0, ZMQ_POLLIN, 0 };
        int wait_ms = cf_clock_ms_until(deadline);
        if (zmq_poll(&item, 1, wait_ms) <= 0)
            return CF_ETIMEDOUT;
        cf_err_t rc;
        while ((rc = cf_keys_monitor_read(monitor, value)) != CF_ETIMEDOUT)
            if (rc != CF_ESTOP)
                return rc;
    }
}

//  Receives one [routing id][body] message on the router within timeout_ms:
//  the body's role and User-Id, and the body itself.
static bool s_router_recv(void *router, int timeout_ms, cf_role_t *role, char *user_id, size_t size,
                          char *body, size_t body_size)
{
    zmq_pollitem_t item = { router, 0, ZMQ_POLLIN, 0 };
    if (zmq_poll(&item, 1, timeout_ms) <= 0)
        return false;
    zmq_msg_t id, data;
    zmq_msg_init(&id);
    zmq_msg_init(&data);
    assert_true(zmq_msg_recv(&id, router, 0) >= 0);
    assert_true(zmq_msg_more(&id));
    assert_true(zmq_msg_recv(&data, router, 0) >= 0);
    //  libzmq 4.3 attaches metadata to the frames the peer sent, not to the
    //  routing id frame a ROUTER makes up: the role is read from the body.
    assert_int_equal(cf_auth_role_of(&id), CF_ROLE_NONE);
    *role = cf_auth_role_of(&data);
    const char *uid = zmq_msg_gets(&data, "User-Id");
    snprintf(user_id, size, "%s", uid ? uid : "");
    size_t len = zmq_msg_size(&data) < body_size - 1 ? zmq_msg_size(&data) : body_size - 1;
    memcpy(body, zmq_msg_data(&data), len);
    body[len] = '\0';
    //  Answer, to show the connection works both ways.
    assert_true(zmq_msg_send(&id, router, ZMQ_SNDMORE) >= 0);
    assert_int_equal(zmq_send(router, "pong", 4, 0), 4);
    zmq_msg_close(&data);
    return true;
}

//  What a router received from a dealer.
typedef struct {
    cf_role_t role;      //  of the body frame's connection
    char user_id[64];    //  its User-Id, "" when none
    char body[16];
} s_received_t;

//  Sends text from dealer and receives it on router, which answers "pong".
static s_received_t s_round_trip(void *dealer, void *router, const char *text)
{
    int len = (int)strlen(text);
    assert_int_equal(zmq_send(dealer, text, (size_t)len, 0), len);
    s_received_t got;
    assert_true(s_router_recv(router, S_EVENT_TIMEOUT_MS, &got.role, got.user_id,
                              sizeof got.user_id, got.body, sizeof got.body));
    return got;
}

static void s_assert_dealer_gets_pong(void *dealer)
{
    zmq_pollitem_t item = { dealer, 0, ZMQ_POLLIN, 0 };
    assert_int_equal(zmq_poll(&item, 1, S_EVENT_TIMEOUT_MS), 1);
    char buf[8];
    assert_int_equal(zmq_recv(dealer, buf, sizeof buf, 0), 4);
    assert_memory_equal(buf, "pong", 4);
}

static void s_assert_router_quiet(void *router)
{
    zmq_pollitem_t item = { router, 0, ZMQ_POLLIN, 0 };
    assert_int_equal(zmq_poll(&item, 1, S_QUIET_MS), 0);
}

//  Connects with pair (or plaintext), sends "hello" and expects it to
//  arrive with the given role and User-Id.
static void s_assert_admitted(s_fixture_t *fx, const cf_keypair_t *pair, cf_role_t role)
{
    void *monitor;
    void *dealer = s_dealer_new(fx->ctx, fx->endpoint, s_server.public_z85, pair, &monitor);
    s_received_t got = s_round_trip(dealer, fx->router, "hello");
    assert_string_equal(got.body, "hello");
    assert_int_equal(got.role, role);
    char fp[CF_KEY_FP_SIZE], expect[32];
    cf_keys_fingerprint(pair->public_z85, fp);
    snprintf(expect, sizeof expect, "%s:%s", cf_auth_role_name(role), fp);
    assert_string_equal(got.user_id, expect);
    s_assert_dealer_gets_pong(dealer);
    assert_int_equal(s_wait_outcome(monitor, NULL), CF_OK);
    s_dealer_destroy(&dealer, &monitor);
}

// ---------------------------------------------------------------------------
//  Handshakes

static void test_allowed_client_key_is_admitted_as_client(void **state)
{
    s_fixture_t *fx = *state;
    s_assert_admitted(fx, &s_client, CF_ROLE_CLIENT);
    cf_auth_stats_t stats;
    assert_int_equal(cf_auth_stats(fx->auth, &stats), CF_OK);
    assert_int_equal(stats.allowed, 1);
    assert_int_equal(stats.denied, 0);
    assert_int_equal(stats.client_keys, 1);
    assert_int_equal(stats.worker_keys, 1);
    assert_int_equal(stats.admin_keys, 1);
}

static void test_allowed_worker_key_is_admitted_as_worker(void **state)
{
    s_fixture_t *fx = *state;
    s_assert_admitted(fx, &s_worker, CF_ROLE_WORKER);
}

static void test_allowed_admin_key_is_admitted_as_admin(void **state)
{
    s_fixture_t *fx = *state;
    s_assert_admitted(fx, &s_admin, CF_ROLE_ADMIN);
}

static void test_unknown_key_is_refused_with_auth_failure(void **state)
{
    s_fixture_t *fx = *state;
    void *monitor;
    void *dealer = s_dealer_new(fx->ctx, fx->endpoint, s_server.public_z85, &s_stranger, &monitor);
    assert_int_equal(zmq_send(dealer, "hello", 5, 0), 5);
    int value = 0;
    assert_int_equal(s_wait_outcome(monitor, &value), CF_EAUTH);
    assert_int_equal(value, 400);
    s_assert_router_quiet(fx->router);
    cf_auth_stats_t stats;
    assert_int_equal(cf_auth_stats(fx->auth, &stats), CF_OK);
    assert_true(stats.denied >= 1);
    assert_int_equal(stats.allowed, 0);
    //  Logged by fingerprint.
    char fp[CF_KEY_FP_SIZE], line[64];
    cf_keys_fingerprint(s_stranger.public_z85, fp);
    snprintf(line, sizeof line, "denied unknown key %s from", fp);
    assert_true(s_log_has(line));
    s_dealer_destroy(&dealer, &monitor);
}

static void test_plaintext_client_is_refused(void **state)
{
    s_fixture_t *fx = *state;
    void *monitor;
    void *dealer = s_dealer_new(fx->ctx, fx->endpoint, NULL, NULL, &monitor);
    assert_int_equal(zmq_send(dealer, "hello", 5, 0), 5);
    int value = 0;
    assert_int_equal(s_wait_outcome(monitor, &value), CF_EPROTO);
    assert_int_equal(value, ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH);
    assert_int_equal(s_wait_outcome(fx->monitor, &value), CF_EPROTO);
    assert_int_equal(value, ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH);
    s_assert_router_quiet(fx->router);
    s_dealer_destroy(&dealer, &monitor);
}

static void test_wrong_server_key_is_refused(void **state)
{
    s_fixture_t *fx = *state;
    void *monitor;
    //  An allowed client that believes the server has another key: the
    //  server cannot open its HELLO and drops the connection.
    void *dealer = s_dealer_new(fx->ctx, fx->endpoint, s_stranger.public_z85, &s_client, &monitor);
    assert_int_equal(zmq_send(dealer, "hello", 5, 0), 5);
    int value = 0;
    assert_int_equal(s_wait_outcome(fx->monitor, &value), CF_EPROTO);
    assert_int_equal(value, ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC);
    assert_int_equal(s_wait_outcome(monitor, NULL), CF_ESYS);
    s_assert_router_quiet(fx->router);
    s_dealer_destroy(&dealer, &monitor);
}

//  The trap cf_auth_apply_server exists for: a CURVE server in a context
//  without a ZAP handler admits anyone who knows its public key...
static void test_curve_without_handler_fails_open_by_default(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    void *router = zmq_socket(ctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(router, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(cf_keys_apply_server(router, s_server.secret_z85), CF_OK);
    assert_int_equal(zmq_bind(router, "tcp://127.0.0.1:*"), 0);
    char endpoint[64];
    size_t size = sizeof endpoint;
    assert_int_equal(zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, endpoint, &size), 0);
    void *monitor;
    void *dealer = s_dealer_new(ctx, endpoint, s_server.public_z85, &s_stranger, &monitor);
    assert_int_equal(s_round_trip(dealer, router, "hello").role, CF_ROLE_NONE);
    s_dealer_destroy(&dealer, &monitor);
    zmq_close(router);
    zmq_ctx_term(ctx);
}

//  ...and with cf_auth_apply_server's ENFORCE_DOMAIN it refuses everyone,
//  even an allowed key, when no handler runs in the socket's context.
static void test_enforced_domain_without_handler_refuses_everyone(void **state)
{
    s_fixture_t *fx = *state;
    void *ctx = zmq_ctx_new();
    char endpoint[64];
    //  fx->auth runs in fx->ctx, not in ctx: this context has no handler.
    void *router = s_router_new(ctx, fx->auth, endpoint, sizeof endpoint);
    void *server_monitor = cf_keys_monitor_new(ctx, router);
    assert_non_null(server_monitor);
    void *monitor;
    void *dealer = s_dealer_new(ctx, endpoint, s_server.public_z85, &s_client, &monitor);
    assert_int_equal(zmq_send(dealer, "hello", 5, 0), 5);
    assert_int_equal(s_wait_outcome(server_monitor, NULL), CF_ESYS);
    cf_err_t outcome = s_wait_outcome(monitor, NULL);
    assert_int_equal(outcome, CF_ESYS);
    s_assert_router_quiet(router);
    s_dealer_destroy(&dealer, &monitor);
    cf_keys_monitor_close(router, &server_monitor);
    zmq_close(router);
    zmq_ctx_term(ctx);
}

//  On the role domains a key of another role is refused at the handshake:
//  the client domain admits client and admin keys (cf-admin asks there),
//  the worker domain worker keys alone.
static void test_role_domains_refuse_the_other_roles(void **state)
{
    s_fixture_t *fx = *state;
    static const struct {
        const char *domain;
        const cf_keypair_t *key;
        cf_role_t role;    //  admitted with it, or CF_ROLE_NONE: refused
    } cases[] = {
        { CF_AUTH_DOMAIN_CLIENTS, &s_worker, CF_ROLE_NONE },
        { CF_AUTH_DOMAIN_CLIENTS, &s_client, CF_ROLE_CLIENT },
        { CF_AUTH_DOMAIN_CLIENTS, &s_admin, CF_ROLE_ADMIN },
        { CF_AUTH_DOMAIN_WORKERS, &s_client, CF_ROLE_NONE },
        { CF_AUTH_DOMAIN_WORKERS, &s_admin, CF_ROLE_NONE },
        { CF_AUTH_DOMAIN_WORKERS, &s_worker, CF_ROLE_WORKER },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char endpoint[64];
        void *router = s_track(
            s_router_new_in(fx->ctx, fx->auth, cases[i].domain, endpoint, sizeof endpoint));
        void *monitor;
        void *dealer = s_dealer_new(fx->ctx, endpoint, s_server.public_z85, cases[i].key, &monitor);
        if (cases[i].role == CF_ROLE_NONE) {
            assert_int_equal(zmq_send(dealer, "hello", 5, 0), 5);
            int value = 0;
            assert_int_equal(s_wait_outcome(monitor, &value), CF_EAUTH);
            assert_int_equal(value, 400);
            s_assert_router_quiet(router);
        }
        else
            assert_int_equal(s_round_trip(dealer, router, "hello").role, cases[i].role);
        s_dealer_destroy(&dealer, &monitor);
        s_close(router);
    }
    char fp[CF_KEY_FP_SIZE], line[96];
    cf_keys_fingerprint(s_admin.public_z85, fp);
    snprintf(line, sizeof line, "denied admin key %s from", fp);
    assert_true(s_log_has(line));
    assert_true(s_log_has("on the client endpoint"));
    assert_true(s_log_has("on the worker endpoint"));
}

static void test_plaintext_messages_have_no_role(void **state)
{
    (void)state;
    zmq_msg_t frame;
    zmq_msg_init_size(&frame, 3);
    assert_int_equal(cf_auth_role_of(&frame), CF_ROLE_NONE);
    zmq_msg_close(&frame);
    assert_int_equal(cf_auth_role_of(NULL), CF_ROLE_NONE);
    assert_int_equal(cf_auth_role_of_user(NULL), CF_ROLE_NONE);
    assert_int_equal(cf_auth_role_of_user("client:abcdefgh"), CF_ROLE_CLIENT);
    assert_int_equal(cf_auth_role_of_user("worker:abcdefgh"), CF_ROLE_WORKER);
    assert_int_equal(cf_auth_role_of_user("admin:abcdefgh"), CF_ROLE_ADMIN);
    assert_int_equal(cf_auth_role_of_user("clients"), CF_ROLE_NONE);
    assert_int_equal(cf_auth_role_of_user("admins"), CF_ROLE_NONE);
    assert_string_equal(cf_auth_role_name(CF_ROLE_NONE), "none");
    assert_string_equal(cf_auth_role_name(CF_ROLE_CLIENT), "client");
    assert_string_equal(cf_auth_role_name(CF_ROLE_WORKER), "worker");
    assert_string_equal(cf_auth_role_name(CF_ROLE_ADMIN), "admin");

    //  A plaintext ROUTER/DEALER pair over TCP.
    void *ctx = zmq_ctx_new();
    char endpoint[64];
    void *router = s_router_new(ctx, NULL, endpoint, sizeof endpoint);
    void *monitor;
    void *dealer = s_dealer_new(ctx, endpoint, NULL, NULL, &monitor);
    s_received_t got = s_round_trip(dealer, router, "hello");
    assert_int_equal(got.role, CF_ROLE_NONE);
    assert_string_equal(got.user_id, "");
    s_dealer_destroy(&dealer, &monitor);
    zmq_close(router);
    zmq_ctx_term(ctx);
}

// ---------------------------------------------------------------------------
//  Connections that never finish a handshake

static int s_port_of(const char *endpoint)
{
    const char *colon = strrchr(endpoint, ':');
    assert_non_null(colon);
    return atoi(colon + 1);
}

static void test_stalled_connections_are_closed_while_a_client_works(void **state)
{
    s_fixture_t *fx = *state;
    enum { STALLED = 200 };
    void *monitor;
    void *dealer = s_dealer_new(fx->ctx, fx->endpoint, s_server.public_z85, &s_client, &monitor);
    assert_int_equal(s_wait_outcome(monitor, NULL), CF_OK);

    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(s_port_of(fx->endpoint)) };
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct pollfd fds[STALLED];
    for (int i = 0; i < STALLED; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        assert_int_equal(connect(fd, (struct sockaddr *)&addr, sizeof addr), 0);
        //  Half say nothing at all; half stop in the middle of the greeting.
        if (i % 2)
            assert_int_equal(write(fd, "\xff\0\0\0\0\0\0\0\x01\x7f\x03", 11), 11);
        fds[i] = (struct pollfd){ .fd = fd, .events = POLLIN };
    }

    //  The legitimate client keeps working while they hang...
    int round_trips = 0;
    int closed = 0;
    bool is_closed[STALLED] = { false };
    int64_t deadline = cf_clock_now_ms() + 20 * 1000;
    while (closed < STALLED && cf_clock_now_ms() < deadline) {
        char text[16];
        snprintf(text, sizeof text, "ping %d", round_trips);
        s_received_t got = s_round_trip(dealer, fx->router, text);
        assert_string_equal(got.body, text);
        assert_int_equal(got.role, CF_ROLE_CLIENT);
        s_assert_dealer_gets_pong(dealer);
        round_trips++;
        //  ...and the server closes every stalled one (EOF or reset).
        if (poll(fds, STALLED, 100) > 0) {
            for (int i = 0; i < STALLED; i++) {
                if (is_closed[i] || !fds[i].revents)
                    continue;
                char buf[256];
                ssize_t n = read(fds[i].fd, buf, sizeof buf);
                if (n == 0 || (n < 0 && errno == ECONNRESET)) {
                    is_closed[i] = true;
                    fds[i].fd = -fds[i].fd - 1;    //  poll skips negative fds
                    closed++;
                }
            }
        }
    }
    for (int i = 0; i < STALLED; i++)
        close(is_closed[i] ? -fds[i].fd - 1 : fds[i].fd);
    assert_int_equal(closed, STALLED);
    assert_true(round_trips > 1);
    //  Still working afterwards.
    assert_string_equal(s_round_trip(dealer, fx->router, "after").body, "after");
    s_dealer_destroy(&dealer, &monitor);
}

// ---------------------------------------------------------------------------
//  Raw ZAP requests: the handler answers everything and never falls over.

typedef struct {
    char status[8];
    char user_id[64];
    size_t id_len;
} s_reply_t;

//  Sends frames (count of them, sizes given) after an empty delimiter and
//  reads the reply.
static s_reply_t s_zap_ask(void *dealer, const void *const *frames, const size_t *sizes,
                           size_t count)
{
    assert_int_equal(zmq_send(dealer, "", 0, ZMQ_SNDMORE), 0);
    for (size_t i = 0; i < count; i++)
        assert_int_equal(zmq_send(dealer, frames[i], sizes[i], i + 1 < count ? ZMQ_SNDMORE : 0),
                         (int)sizes[i]);
    zmq_pollitem_t item = { dealer, 0, ZMQ_POLLIN, 0 };
    assert_int_equal(zmq_poll(&item, 1, S_EVENT_TIMEOUT_MS), 1);
    s_reply_t reply = { { 0 }, { 0 }, 0 };
    char parts[7][300];
    int lens[7];
    size_t got = 0;
    int more = 1;
    while (more) {
        assert_true(got < 7);
        lens[got] = zmq_recv(dealer, parts[got], sizeof parts[got] - 1, 0);
        assert_true(lens[got] >= 0);
        parts[got][lens[got] < 299 ? lens[got] : 299] = '\0';
        got++;
        size_t size = sizeof more;
        zmq_getsockopt(dealer, ZMQ_RCVMORE, &more, &size);
    }
    //  delimiter, version, id, status, text, user id, metadata
    assert_int_equal(got, 7);
    assert_int_equal(lens[0], 0);
    assert_string_equal(parts[1], "1.0");
    reply.id_len = (size_t)lens[2];
    snprintf(reply.status, sizeof reply.status, "%.7s", parts[3]);
    snprintf(reply.user_id, sizeof reply.user_id, "%.63s", parts[5]);
    return reply;
}

static s_reply_t s_zap_curve(void *dealer, const char *mechanism, const uint8_t *key,
                             size_t key_len)
{
    const void *frames[] = { "1.0", "7", "cfutures", "10.0.0.1", "", mechanism, key };
    size_t sizes[] = { 3, 1, 8, 8, 0, strlen(mechanism), key_len };
    return s_zap_ask(dealer, frames, sizes, 7);
}

//  A DEALER that speaks ZAP to the handler directly (closed by the test or
//  its teardown).
static void *s_zap_dealer(void *ctx)
{
    void *dealer = s_track(zmq_socket(ctx, ZMQ_DEALER));
    int linger = 0;
    zmq_setsockopt(dealer, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_connect(dealer, CF_AUTH_ZAP_ENDPOINT), 0);
    return dealer;
}

static void test_zap_handler_answers_malformed_requests_and_keeps_serving(void **state)
{
    s_fixture_t *fx = *state;
    void *dealer = s_zap_dealer(fx->ctx);

    uint8_t client[CF_KEY_BIN_LEN], stranger[CF_KEY_BIN_LEN];
    assert_int_equal(cf_keys_decode(s_client.public_z85, client), CF_OK);
    assert_int_equal(cf_keys_decode(s_stranger.public_z85, stranger), CF_OK);

    s_reply_t reply = s_zap_curve(dealer, "CURVE", client, sizeof client);
    assert_string_equal(reply.status, "200");
    char expect[32], fp[CF_KEY_FP_SIZE];
    cf_keys_fingerprint(s_client.public_z85, fp);
    snprintf(expect, sizeof expect, "client:%s", fp);
    assert_string_equal(reply.user_id, expect);

    reply = s_zap_curve(dealer, "CURVE", stranger, sizeof stranger);
    assert_string_equal(reply.status, "400");
    assert_string_equal(reply.user_id, "");
    reply = s_zap_curve(dealer, "PLAIN", client, sizeof client);
    assert_string_equal(reply.status, "400");
    reply = s_zap_curve(dealer, "NULL", client, 0);
    assert_string_equal(reply.status, "400");

    //  Malformed: all answered 500, none admitted.
    reply = s_zap_curve(dealer, "CURVE", client, 31);
    assert_string_equal(reply.status, "500");
    size_t big_len = 1024 * 1024;
    uint8_t *big = calloc(1, big_len);
    assert_non_null(big);
    reply = s_zap_curve(dealer, "CURVE", big, big_len);
    assert_string_equal(reply.status, "500");
    {
        const void *frames[] = { "garbage" };
        size_t sizes[] = { 7 };
        reply = s_zap_ask(dealer, frames, sizes, 1);
        assert_string_equal(reply.status, "500");
    }
    {
        const void *frames[] = { "2.0", "7", "d", "a", "", "CURVE", client };
        size_t sizes[] = { 3, 1, 1, 1, 0, 5, sizeof client };
        reply = s_zap_ask(dealer, frames, sizes, 7);
        assert_string_equal(reply.status, "500");
    }
    {
        //  A request id too long to echo: answered, with an empty id.
        const void *frames[] = { "1.0", big, "d", "a", "", "CURVE", client };
        size_t sizes[] = { 3, 1000, 1, 1, 0, 5, sizeof client };
        reply = s_zap_ask(dealer, frames, sizes, 7);
        assert_string_equal(reply.status, "500");
        assert_int_equal(reply.id_len, 0);
    }
    {
        //  Two credentials, then many frames.
        const void *frames[] = { "1.0", "7", "d", "a", "", "CURVE", client, client };
        size_t sizes[] = { 3, 1, 1, 1, 0, 5, sizeof client, sizeof client };
        reply = s_zap_ask(dealer, frames, sizes, 8);
        assert_string_equal(reply.status, "500");
        const void *many[40];
        size_t many_sizes[40];
        for (size_t i = 0; i < 40; i++) {
            many[i] = i == 0 ? "1.0" : "x";
            many_sizes[i] = i == 0 ? 3 : 1;
        }
        reply = s_zap_ask(dealer, many, many_sizes, 40);
        assert_string_equal(reply.status, "500");
    }
    free(big);

    //  Still serving, and it counted.
    reply = s_zap_curve(dealer, "CURVE", client, sizeof client);
    assert_string_equal(reply.status, "200");
    cf_auth_stats_t stats;
    assert_int_equal(cf_auth_stats(fx->auth, &stats), CF_OK);
    assert_int_equal(stats.allowed, 2);
    assert_int_equal(stats.denied, 3);
    assert_int_equal(stats.malformed, 7);
    s_close(dealer);
    //  And real handshakes still work.
    s_assert_admitted(fx, &s_worker, CF_ROLE_WORKER);
}

// ---------------------------------------------------------------------------
//  Reload

//  A reload decides later handshakes, and cf_auth_user_allowed (what the
//  broker asks for connections made before) follows the lists too.
static void test_reload_admits_new_keys_and_keeps_old_lists_on_error(void **state)
{
    s_fixture_t *fx = *state;
    void *dealer = s_zap_dealer(fx->ctx);
    uint8_t stranger[CF_KEY_BIN_LEN];
    assert_int_equal(cf_keys_decode(s_stranger.public_z85, stranger), CF_OK);
    assert_string_equal(s_zap_curve(dealer, "CURVE", stranger, sizeof stranger).status, "400");
    char fp[CF_KEY_FP_SIZE], user[CF_AUTH_USER_ID_SIZE], as_worker[CF_AUTH_USER_ID_SIZE];
    cf_keys_fingerprint(s_stranger.public_z85, fp);
    snprintf(user, sizeof user, "client:%s", fp);
    snprintf(as_worker, sizeof as_worker, "worker:%s", fp);
    assert_false(cf_auth_user_allowed(fx->auth, user));
    assert_int_equal(cf_auth_generation(fx->auth), 0);

    //  The stranger's key joins the client directory.
    char text[128];
    snprintf(text, sizeof text, "%s\n", s_stranger.public_z85);
    s_write_text(s_path("clients/stranger.key"), text);
    assert_int_equal(cf_auth_reload(fx->auth), CF_OK);
    assert_string_equal(s_zap_curve(dealer, "CURVE", stranger, sizeof stranger).status, "200");
    assert_true(cf_auth_user_allowed(fx->auth, user));
    assert_false(cf_auth_user_allowed(fx->auth, as_worker));
    assert_false(cf_auth_user_allowed(fx->auth, "client:"));
    assert_false(cf_auth_user_allowed(fx->auth, NULL));
    assert_int_equal(cf_auth_generation(fx->auth), 1);
    cf_auth_stats_t stats;
    assert_int_equal(cf_auth_stats(fx->auth, &stats), CF_OK);
    assert_int_equal(stats.client_keys, 2);
    assert_int_equal(stats.reloads, 1);

    //  A broken file: the reload fails, the previous lists stay.
    s_write_text(s_path("clients/broken.key"), "not a key\n");
    assert_int_equal(cf_auth_reload(fx->auth), CF_EINVAL);
    assert_non_null(strstr(cf_last_error(), "broken.key"));
    assert_string_equal(s_zap_curve(dealer, "CURVE", stranger, sizeof stranger).status, "200");
    assert_true(cf_auth_user_allowed(fx->auth, user));
    assert_int_equal(cf_auth_generation(fx->auth), 1);
    assert_int_equal(unlink(s_path("clients/broken.key")), 0);

    //  Removing the key and reloading shuts the stranger out again.
    assert_int_equal(unlink(s_path("clients/stranger.key")), 0);
    assert_int_equal(cf_auth_reload(fx->auth), CF_OK);
    assert_string_equal(s_zap_curve(dealer, "CURVE", stranger, sizeof stranger).status, "400");
    assert_false(cf_auth_user_allowed(fx->auth, user));    //  connections made before too
    assert_int_equal(cf_auth_generation(fx->auth), 2);
    s_close(dealer);
}

//  The admin list is reloaded with the others: a key added there is
//  admitted as an admin, and a removed one is no longer allowed.
static void test_reload_reads_the_admin_list_too(void **state)
{
    s_fixture_t *fx = *state;
    void *dealer = s_zap_dealer(fx->ctx);
    uint8_t stranger[CF_KEY_BIN_LEN];
    assert_int_equal(cf_keys_decode(s_stranger.public_z85, stranger), CF_OK);
    char fp[CF_KEY_FP_SIZE], admin[CF_AUTH_USER_ID_SIZE], client[CF_AUTH_USER_ID_SIZE];
    cf_keys_fingerprint(s_stranger.public_z85, fp);
    snprintf(admin, sizeof admin, "admin:%s", fp);
    snprintf(client, sizeof client, "client:%s", fp);

    char text[128];
    snprintf(text, sizeof text, "%s\n", s_stranger.public_z85);
    s_write_text(s_path("admins/stranger.key"), text);
    assert_int_equal(cf_auth_reload(fx->auth), CF_OK);
    s_reply_t reply = s_zap_curve(dealer, "CURVE", stranger, sizeof stranger);
    assert_string_equal(reply.status, "200");
    assert_string_equal(reply.user_id, admin);
    assert_true(cf_auth_user_allowed(fx->auth, admin));
    assert_false(cf_auth_user_allowed(fx->auth, client));
    cf_auth_stats_t stats;
    assert_int_equal(cf_auth_stats(fx->auth, &stats), CF_OK);
    assert_int_equal(stats.admin_keys, 2);
    assert_true(s_log_has("allow-lists reloaded: 1 client and 1 worker keys, 2 admin keys"));

    assert_int_equal(unlink(s_path("admins/stranger.key")), 0);
    assert_int_equal(cf_auth_reload(fx->auth), CF_OK);
    assert_string_equal(s_zap_curve(dealer, "CURVE", stranger, sizeof stranger).status, "400");
    assert_false(cf_auth_user_allowed(fx->auth, admin));
    s_close(dealer);
}

// ---------------------------------------------------------------------------
//  Configuration errors

static cf_auth_t *s_try_new(void *ctx, const char *secret_file, const char *clients,
                            const char *workers)
{
    cf_auth_config_t config = {
        .zmq_context = ctx,
        .secret_key_file = secret_file,
        .client_keys = clients,
        .worker_keys = workers,
    };
    return cf_auth_new(&config);
}

static void test_new_rejects_bad_configuration(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    char secret[256];    //  s_path's buffers rotate: keep a copy
    snprintf(secret, sizeof secret, "%s", s_path("broker.key_secret"));
    char text[256];

    assert_null(cf_auth_new(NULL));
    assert_int_equal(cf_last_err(), CF_EINVAL);
    assert_null(s_try_new(ctx, secret, NULL, NULL));
    assert_int_equal(cf_last_err(), CF_EINVAL);
    assert_null(s_try_new(NULL, secret, s_path("clients"), NULL));
    assert_int_equal(cf_last_err(), CF_EINVAL);
    cf_auth_config_t both = { .zmq_context = ctx,
                              .secret_key_file = secret,
                              .secret_key = s_server.secret_z85,
                              .client_keys = s_path("clients") };
    assert_null(cf_auth_new(&both));
    assert_int_equal(cf_last_err(), CF_EINVAL);

    //  Missing list.
    assert_null(s_try_new(ctx, secret, s_path("no-such-dir"), NULL));
    assert_int_equal(cf_last_err(), CF_ENOTFOUND);

    //  A key on both lists.
    snprintf(text, sizeof text, "%s\n", s_client.public_z85);
    s_write_text(s_path("dup.list"), text);
    assert_null(s_try_new(ctx, secret, s_path("clients"), s_path("dup.list")));
    assert_int_equal(cf_last_err(), CF_EINVAL);
    assert_non_null(strstr(cf_last_error(), "both"));
    //  A key on the admin list and another: one key, one role.
    char dup[256], admins[256];
    snprintf(dup, sizeof dup, "%s", s_path("dup.list"));
    snprintf(admins, sizeof admins, "%s", s_path("admins"));
    snprintf(text, sizeof text, "%s\n", s_admin.public_z85);
    s_write_text(dup, text);
    for (size_t i = 0; i < 2; i++) {
        cf_auth_config_t config = { .zmq_context = ctx,
                                    .secret_key_file = secret,
                                    .client_keys = i == 0 ? dup : NULL,
                                    .worker_keys = i == 1 ? dup : NULL,
                                    .admin_keys = admins };
        assert_null(cf_auth_new(&config));
        assert_int_equal(cf_last_err(), CF_EINVAL);
        char expect[64];
        snprintf(expect, sizeof expect, "both the %s and the admin allow-list",
                 i == 0 ? "client" : "worker");
        if (!strstr(cf_last_error(), expect))
            fail_msg("expected '%s' in: %s", expect, cf_last_error());
    }
    //  An admin list alone is no configuration: nobody could submit or work.
    cf_auth_config_t admins_only = { .zmq_context = ctx,
                                     .secret_key_file = secret,
                                     .admin_keys = admins };
    assert_null(cf_auth_new(&admins_only));
    assert_int_equal(cf_last_err(), CF_EINVAL);

    //  A malformed line, reported by number, its text not quoted.
    snprintf(text, sizeof text, "# ok\n%s\n%.30sXYZ\n", s_worker.public_z85, s_stranger.public_z85);
    s_write_text(s_path("bad.list"), text);
    assert_null(s_try_new(ctx, secret, NULL, s_path("bad.list")));
    assert_int_equal(cf_last_err(), CF_EINVAL);
    assert_non_null(strstr(cf_last_error(), "line 3"));
    char head[16];
    snprintf(head, sizeof head, "%.12s", s_stranger.public_z85);
    assert_null(strstr(cf_last_error(), head));

    //  A list others may write.
    assert_int_equal(chmod(s_path("workers.list"), 0666), 0);
    assert_null(s_try_new(ctx, secret, NULL, s_path("workers.list")));
    assert_int_equal(cf_last_err(), CF_EAUTH);
    assert_int_equal(chmod(s_path("workers.list"), 0644), 0);

    //  A secret key file others may read.
    assert_int_equal(chmod(secret, 0644), 0);
    assert_null(s_try_new(ctx, secret, s_path("clients"), NULL));
    assert_int_equal(cf_last_err(), CF_EAUTH);
    assert_int_equal(chmod(secret, 0600), 0);

    //  A bad inline secret key.
    cf_auth_config_t inline_bad = { .zmq_context = ctx,
                                    .secret_key = "short",
                                    .client_keys = s_path("clients") };
    assert_null(cf_auth_new(&inline_bad));
    assert_int_equal(cf_last_err(), CF_EINVAL);

    //  One handler per context.
    cf_auth_config_t inline_ok = { .zmq_context = ctx,
                                   .secret_key = s_server.secret_z85,
                                   .client_keys = s_path("clients") };
    cf_auth_t *auth = cf_auth_new(&inline_ok);
    assert_non_null(auth);
    assert_string_equal(cf_auth_server_public(auth), s_server.public_z85);
    assert_null(s_try_new(ctx, secret, s_path("clients"), NULL));
    assert_int_equal(cf_last_err(), CF_ESYS);
    assert_non_null(strstr(cf_last_error(), "already"));
    cf_auth_destroy(&auth);
    assert_null(auth);
    //  Once stopped, the endpoint is free again at once (zmq_close alone
    //  frees it later, on libzmq's reaper thread), however often.
    for (int i = 0; i < 50; i++) {
        auth = s_try_new(ctx, secret, s_path("clients"), NULL);
        if (!auth)
            fail_msg("restart %d: %s", i, cf_last_error());
        cf_auth_destroy(&auth);
    }
    zmq_ctx_term(ctx);
}

static void test_list_directory_ignores_other_files(void **state)
{
    s_fixture_t *fx = *state;
    //  clients/ holds alice.key, alice.key_secret and README: one key.
    cf_auth_stats_t stats;
    assert_int_equal(cf_auth_stats(fx->auth, &stats), CF_OK);
    assert_int_equal(stats.client_keys, 1);
    assert_int_equal(stats.worker_keys, 1);
    assert_int_equal(stats.admin_keys, 1);    //  admins/ holds ops.key alone
    assert_string_equal(cf_auth_server_public(fx->auth), s_server.public_z85);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_allowed_client_key_is_admitted_as_client, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_allowed_worker_key_is_admitted_as_worker, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_allowed_admin_key_is_admitted_as_admin, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_unknown_key_is_refused_with_auth_failure, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_plaintext_client_is_refused, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_wrong_server_key_is_refused, s_setup, s_teardown),
        cmocka_unit_test(test_curve_without_handler_fails_open_by_default),
        cmocka_unit_test_setup_teardown(test_enforced_domain_without_handler_refuses_everyone,
                                        s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_role_domains_refuse_the_other_roles, s_setup,
                                        s_teardown),
        cmocka_unit_test(test_plaintext_messages_have_no_role),
        cmocka_unit_test_setup_teardown(test_stalled_connections_are_closed_while_a_client_works,
                                        s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(
            test_zap_handler_answers_malformed_requests_and_keeps_serving, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_reload_admits_new_keys_and_keeps_old_lists_on_error,
                                        s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_reload_reads_the_admin_list_too, s_setup, s_teardown),
        cmocka_unit_test(test_new_rejects_bad_configuration),
        cmocka_unit_test_setup_teardown(test_list_directory_ignores_other_files, s_setup,
                                        s_teardown),
    };
    return cmocka_run_group_tests(tests, s_group_setup, s_group_teardown);
}

//  A cluster over CurveZMQ, end to end (docs/security.md): cf-broker with
//  --curve-secret and allow-lists, cf-worker with --broker-key/--key,
//  clients with cf_options_t.curve_broker_key/curve_key. Keys are made in
//  the test's temporary directory with cf_keys.
//
//  Refusals are checked by what the refused party reports (CF_EAUTH, an
//  AuthError future, a worker that exits 1) and by what the broker counted
//  (nothing submitted, no client, no worker), never by timing.

#include "cf_testkit.h"

#include "cf_auth.h"
#include "cf_broker.h"
#include "cf_keys.h"
#include "cf_proto.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

//  Keys of one test: the broker, an allowed client and worker, an admin
//  key that reads the counters (STATS needs one under CURVE), and a
//  stranger on no list.
typedef struct {
    cf_testkit_t *kit;
    cf_keypair_t broker, alice, w1, mallory, ops;
    const char *broker_pub, *broker_secret;
    const char *clients, *workers, *admins;    //  allow-list directories
    const char *alice_secret, *w1_secret, *mallory_secret, *mallory_pub;
} s_keys_t;

static void s_make_pair(cf_testkit_t *kit, cf_keypair_t *pair, const char *pub, const char *secret)
{
    assert_int_equal(cf_keys_generate(pair), CF_OK);
    if (cf_keys_write(pair, cf_testkit_path(kit, pub), cf_testkit_path(kit, secret), pub) != CF_OK)
        fail_msg("cf_keys_write %s: %s", pub, cf_last_error());
}

static void s_keys(cf_testkit_t *kit, s_keys_t *k)
{
    memset(k, 0, sizeof *k);
    k->kit = kit;
    k->clients = cf_testkit_path(kit, "clients");
    k->workers = cf_testkit_path(kit, "workers");
    assert_int_equal(mkdir(k->clients, 0755), 0);
    assert_int_equal(mkdir(k->workers, 0755), 0);
    k->admins = cf_testkit_path(kit, "admins");
    assert_int_equal(mkdir(k->admins, 0755), 0);
    assert_int_equal(chmod(k->admins, 0755), 0);
    //  A umask may have taken write bits we never wanted anyway; others
    //  must not be able to write a list (cf_auth refuses it).
    assert_int_equal(chmod(k->clients, 0755), 0);
    assert_int_equal(chmod(k->workers, 0755), 0);
    s_make_pair(kit, &k->broker, "broker.key", "broker.key_secret");
    s_make_pair(kit, &k->alice, "clients/alice.key", "alice.key_secret");
    s_make_pair(kit, &k->w1, "workers/w1.key", "w1.key_secret");
    s_make_pair(kit, &k->mallory, "mallory.key", "mallory.key_secret");
    s_make_pair(kit, &k->ops, "admins/ops.key", "ops.key_secret");
    k->broker_pub = cf_testkit_path(kit, "broker.key");
    k->broker_secret = cf_testkit_path(kit, "broker.key_secret");
    k->alice_secret = cf_testkit_path(kit, "alice.key_secret");
    k->w1_secret = cf_testkit_path(kit, "w1.key_secret");
    k->mallory_secret = cf_testkit_path(kit, "mallory.key_secret");
    k->mallory_pub = cf_testkit_path(kit, "mallory.key");
}

static cf_testkit_proc_t *s_secure_broker(s_keys_t *k)
{
    return cf_testkit_start_broker(k->kit, "--curve-secret", k->broker_secret, "--client-keys",
                                   k->clients, "--worker-keys", k->workers, "--admin-keys",
                                   k->admins, "--verbose", NULL);
}

static cf_testkit_proc_t *s_secure_worker(s_keys_t *k, const char *endpoint, const char *secret,
                                          const char *procs)
{
    if (procs)
        return cf_testkit_start_worker(k->kit, endpoint, "--broker-key", k->broker_pub, "--key",
                                       secret, "--procs", procs, NULL);
    return cf_testkit_start_worker(k->kit, endpoint, "--broker-key", k->broker_pub, "--key", secret,
                                   "--threads", "2", NULL);
}

static cf_executor_t *s_connect(const char *endpoint, const char *broker_key, const char *key)
{
    return cf_executor_connect(endpoint, &(cf_options_t){
                                             .curve_broker_key = broker_key,
                                             .curve_key = key,
                                         });
}

//  A raw DEALER in ctx with the given CURVE keys (server NULL: plaintext),
//  connected to endpoint.
static void *s_dealer(void *ctx, const char *endpoint, const char *server, const cf_keypair_t *pair)
{
    void *sock = zmq_socket(ctx, ZMQ_DEALER);
    assert_non_null(sock);
    int linger = 0;
    assert_int_equal(zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger), 0);
    if (server)
        assert_int_equal(cf_keys_apply_client(sock, server, pair->public_z85, pair->secret_z85),
                         CF_OK);
    assert_int_equal(zmq_connect(sock, endpoint), 0);
    return sock;
}

//  The next message of type want on sock within timeout_ms (others, such as
//  heartbeats, skipped), or NULL.
static cf_proto_msg_t *s_recv_type(void *sock, cf_msg_type_t want, int timeout_ms)
{
    int64_t deadline = cf_testkit_now_ms() + timeout_ms;
    while (cf_testkit_now_ms() < deadline) {
        zmq_pollitem_t item = { sock, 0, ZMQ_POLLIN, 0 };
        int rc = zmq_poll(&item, 1, 100);
        if (rc <= 0)
            continue;
        cf_proto_msg_t *msg = NULL;
        if (cf_proto_recv(sock, false, NULL, &msg) != CF_OK)
            continue;
        if (msg->type == want)
            return msg;
        cf_proto_msg_destroy(&msg);
    }
    return NULL;
}

//  A broker counter asked over CURVE with an admin key pair (the kit's
//  cf_testkit_broker_stat speaks plaintext, which a CURVE broker refuses).
static uint64_t s_stat(const char *endpoint, const cf_keypair_t *broker, const cf_keypair_t *pair,
                       const char *name)
{
    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    void *sock = s_dealer(ctx, endpoint, broker->public_z85, pair);
    cf_proto_enc_t *enc = cf_proto_enc_new();
    assert_non_null(enc);
    cf_proto_enc_begin(enc, CF_MSG_STATS);
    assert_int_equal(cf_proto_enc_send(enc, sock, NULL, 0), CF_OK);
    cf_proto_msg_t *msg = s_recv_type(sock, CF_MSG_STATS, CF_TESTKIT_DEADLINE_MS);
    if (!msg)
        fail_msg("no STATS reply from %s over CURVE", endpoint);
    bool found = false;
    uint64_t value = 0;
    for (size_t i = 0; i < msg->count; i++) {
        if (msg->stats[i].name.len == strlen(name)
            && !memcmp(msg->stats[i].name.ptr, name, msg->stats[i].name.len)) {
            value = msg->stats[i].value;
            found = true;
        }
    }
    cf_proto_msg_destroy(&msg);
    cf_proto_enc_destroy(&enc);
    zmq_close(sock);
    zmq_ctx_term(ctx);
    if (!found)
        fail_msg("the broker has no counter '%s'", name);
    return value;
}

//  square(n) through ex completes with n * n.
static void s_expect_square(cf_testkit_t *kit, cf_executor_t *ex, int n)
{
    cf_future_t *f = cf_submit(ex, "square", "i", n);
    if (!f)
        fail_msg("cf_submit: %s", cf_last_error());
    cf_testkit_expect_int(kit, f, (int64_t)n * n);
    cf_future_release(&f);
}

static bool s_log_has(cf_testkit_proc_t *proc, const char *needle)
{
    char *log = cf_testkit_log(proc);
    bool found = log && strstr(log, needle);
    free(log);
    return found;
}

typedef struct {
    cf_testkit_proc_t *proc;
    const char *needle;
} s_log_wait_t;

static bool s_log_cond(void *arg)
{
    s_log_wait_t *w = arg;
    return s_log_has(w->proc, w->needle);
}

typedef struct {
    const char *endpoint;    //  the broker's client endpoint
    s_keys_t *keys;
    uint64_t workers;    //  how many it must know
} s_workers_wait_t;

static bool s_workers_known(void *arg)
{
    s_workers_wait_t *w = arg;
    return s_stat(w->endpoint, &w->keys->broker, &w->keys->ops, "workers") >= w->workers;
}

//  No log of proc may hold a whole key of k (public or secret).
static void s_expect_no_keys_in_log(s_keys_t *k, cf_testkit_proc_t *proc)
{
    char *log = cf_testkit_log(proc);
    assert_non_null(log);
    const cf_keypair_t *pairs[] = { &k->broker, &k->alice, &k->w1, &k->mallory, &k->ops };
    for (size_t i = 0; i < 5; i++) {
        assert_null(strstr(log, pairs[i]->public_z85));
        assert_null(strstr(log, pairs[i]->secret_z85));
    }
    free(log);
}

// ---------------------------------------------------------------------------

static void test_allowed_keys_run_tasks_on_threads_and_procs_workers(void **state)
{
    cf_testkit_t *kit = *state;
    s_keys_t k;
    s_keys(kit, &k);
    cf_testkit_proc_t *broker = s_secure_broker(&k);
    s_secure_worker(&k, cf_testkit_workers(broker), k.w1_secret, NULL);

    cf_executor_t *ex = s_connect(cf_testkit_clients(broker), k.broker_pub, k.alice_secret);
    if (!ex)
        fail_msg("allowed client refused: %s", cf_last_error());
    s_expect_square(kit, ex, 7);

    //  --procs children use the keys their supervisor read. Its ready line
    //  comes once they are forked; each then connects and says READY on
    //  its own time, so the broker is asked until it knows all three.
    s_secure_worker(&k, cf_testkit_workers(broker), k.w1_secret, "2");
    s_workers_wait_t known = { cf_testkit_clients(broker), &k, 3 };
    if (!cf_testkit_wait_until(s_workers_known, &known, CF_TESTKIT_DEADLINE_MS))
        fail_msg("the broker knows %" PRIu64 " workers, not 3",
                 s_stat(cf_testkit_clients(broker), &k.broker, &k.ops, "workers"));
    for (int i = 0; i < 8; i++)
        s_expect_square(kit, ex, i + 2);
    assert_int_equal(s_stat(cf_testkit_clients(broker), &k.broker, &k.ops, "workers"), 3);
    assert_int_equal(s_stat(cf_testkit_clients(broker), &k.broker, &k.ops, "refused"), 0);
    cf_executor_destroy(&ex);
    s_expect_no_keys_in_log(&k, broker);
}

//  Two brokers, each with its own key: a worker and a client that list
//  both keys (in the order of their endpoints) use both brokers; a client
//  that lists them the wrong way round is refused by both.
static void test_two_brokers_each_with_its_own_key(void **state)
{
    cf_testkit_t *kit = *state;
    s_keys_t k;
    s_keys(kit, &k);
    cf_keypair_t broker2;
    s_make_pair(kit, &broker2, "broker2.key", "broker2.key_secret");
    cf_testkit_proc_t *a = s_secure_broker(&k);
    cf_testkit_proc_t *b = cf_testkit_start_broker(
        kit, "--curve-secret", cf_testkit_path(kit, "broker2.key_secret"), "--client-keys",
        k.clients, "--worker-keys", k.workers, "--admin-keys", k.admins, NULL);
    char workers[512], clients[512], keys[2048], swapped[2048];
    snprintf(workers, sizeof workers, "%s,%s", cf_testkit_workers(a), cf_testkit_workers(b));
    snprintf(clients, sizeof clients, "%s,%s", cf_testkit_clients(a), cf_testkit_clients(b));
    snprintf(keys, sizeof keys, "%s,%s", k.broker_pub, cf_testkit_path(kit, "broker2.key"));
    snprintf(swapped, sizeof swapped, "%s,%s", cf_testkit_path(kit, "broker2.key"), k.broker_pub);
    cf_testkit_start_worker(kit, workers, "--broker-key", keys, "--key", k.w1_secret, "--threads",
                            "2", NULL);

    cf_executor_t *ex = s_connect(clients, keys, k.alice_secret);
    if (!ex)
        fail_msg("a client with both keys refused: %s", cf_last_error());
    //  The executor returns at the first handshake: rounds of a batch until
    //  each broker has completed some (each task goes to the broker holding
    //  the fewest of ours, so a batch spreads once both answer).
    uint64_t done_a = 0, done_b = 0, rounds = 0;
    while ((done_a == 0 || done_b == 0) && rounds++ < 50) {
        cf_future_t *fs[20];
        for (int i = 0; i < 20; i++)
            assert_non_null(fs[i] = cf_submit(ex, "square", "i", i));
        for (int i = 0; i < 20; i++) {
            cf_testkit_expect_int(kit, fs[i], (int64_t)i * i);
            cf_future_release(&fs[i]);
        }
        done_a = s_stat(cf_testkit_clients(a), &k.broker, &k.ops, "completed");
        done_b = s_stat(cf_testkit_clients(b), &broker2, &k.ops, "completed");
    }
    if (done_a == 0 || done_b == 0)
        fail_msg("after %" PRIu64 " rounds broker a completed %" PRIu64 " and b %" PRIu64, rounds,
                 done_a, done_b);
    assert_int_equal(done_a + done_b, 20 * rounds);
    cf_executor_destroy(&ex);

    cf_executor_t *bad = s_connect(clients, swapped, k.alice_secret);
    assert_null(bad);
    assert_int_equal(cf_last_err(), CF_EAUTH);

    //  A worker given the first broker's key for the second too: the
    //  second broker's handshake fails, and the worker says which broker.
    char wrong_second[2048];
    snprintf(wrong_second, sizeof wrong_second, "%s,%s", k.broker_pub, k.broker_pub);
    const char *argv[] = { cf_testkit_env("CF_WORKER_BIN"),
                           "--broker",
                           workers,
                           "--tasks",
                           cf_testkit_env("CF_TASKS_LIB"),
                           "--broker-key",
                           wrong_second,
                           "--key",
                           k.w1_secret,
                           NULL };
    cf_testkit_output_t out;
    assert_true(cf_testkit_run(kit, argv, CF_TESTKIT_DEADLINE_MS, &out));
    assert_true(out.exited);
    assert_int_equal(out.exit_code, 1);
    if (!strstr(out.err, cf_testkit_workers(b)))
        fail_msg("no error naming %s in:\n%s", cf_testkit_workers(b), out.err);
    s_expect_no_keys_in_log(&k, a);
}

static void test_unknown_plaintext_and_wrong_server_key_clients_are_refused(void **state)
{
    cf_testkit_t *kit = *state;
    s_keys_t k;
    s_keys(kit, &k);
    cf_testkit_proc_t *broker = s_secure_broker(&k);
    cf_testkit_proc_t *worker = s_secure_worker(&k, cf_testkit_workers(broker), k.w1_secret, NULL);
    (void)worker;
    const char *clients = cf_testkit_clients(broker);

    //  A key on no list: refused at connect, with the key's fingerprint.
    cf_executor_t *ex = s_connect(clients, k.broker_pub, k.mallory_secret);
    assert_null(ex);
    assert_int_equal(cf_last_err(), CF_EAUTH);
    char fp[CF_KEY_FP_SIZE];
    cf_keys_fingerprint(k.mallory.public_z85, fp);
    if (!strstr(cf_last_error(), fp))
        fail_msg("message without the fingerprint %s: %s", fp, cf_last_error());
    assert_null(strstr(cf_last_error(), k.mallory.public_z85));

    //  An allowed key but the wrong broker key (a server impersonating the
    //  broker looks the same): the broker drops the handshakes.
    s_make_pair(kit, &(cf_keypair_t){ 0 }, "other.key", "other.key_secret");
    ex = s_connect(clients, cf_testkit_path(kit, "other.key"), k.alice_secret);
    assert_null(ex);
    assert_int_equal(cf_last_err(), CF_EAUTH);
    assert_non_null(strstr(cf_last_error(), "broker key"));

    //  Plaintext: cf_executor_connect waits for the first handshake
    //  (connect_timeout_ms), so the refusal comes there, with its reason.
    ex = cf_executor_connect(clients, NULL);
    assert_null(ex);
    assert_int_equal(cf_last_err(), CF_EAUTH);
    assert_non_null(strstr(cf_last_error(), "requires CURVE"));
    //  Without the wait the executor starts (it cannot know before the
    //  first handshake), then its task fails with AuthError and later
    //  submits fail with CF_EAUTH. The refusal may come before the first
    //  submit (one run in a few on a loaded machine): then that submit
    //  fails too.
    ex = cf_executor_connect(clients, &(cf_options_t){ .connect_timeout_ms = -1 });
    assert_non_null(ex);
    cf_future_t *f = cf_submit(ex, "square", "i", 3);
    if (f)
        cf_testkit_expect_error(kit, f, "AuthError", "requires CURVE");
    else {
        assert_int_equal(cf_last_err(), CF_EAUTH);
        assert_non_null(strstr(cf_last_error(), "requires CURVE"));
    }
    cf_future_release(&f);
    f = cf_submit(ex, "square", "i", 3);
    assert_null(f);
    assert_int_equal(cf_last_err(), CF_EAUTH);
    cf_executor_destroy(&ex);

    //  One key alone is a usage error, not a plaintext fallback.
    ex = s_connect(clients, k.broker_pub, NULL);
    assert_null(ex);
    assert_int_equal(cf_last_err(), CF_EINVAL);

    //  Nothing of theirs reached the broker's task handling.
    assert_int_equal(s_stat(clients, &k.broker, &k.ops, "submitted"), 0);
    assert_int_equal(s_stat(clients, &k.broker, &k.ops, "clients"), 0);
    assert_int_equal(s_stat(clients, &k.broker, &k.ops, "malformed"), 0);
    assert_true(s_log_has(broker, fp));    //  the denial, by fingerprint
    s_expect_no_keys_in_log(&k, broker);

    //  SIGHUP: mallory added to the client list is admitted.
    char *text = cf_testkit_read_file(k.mallory_pub);
    assert_non_null(text);
    FILE *out = fopen(cf_testkit_path(kit, "clients/mallory.key"), "w");
    assert_non_null(out);
    assert_true(fputs(text, out) >= 0);
    assert_int_equal(fclose(out), 0);
    free(text);
    assert_true(cf_testkit_signal(broker, SIGHUP));
    s_log_wait_t w = { broker, "2 client and 1 worker keys" };
    if (!cf_testkit_wait_until(s_log_cond, &w, CF_TESTKIT_DEADLINE_MS))
        fail_msg("the broker did not reload on SIGHUP");
    ex = s_connect(clients, k.broker_pub, k.mallory_secret);
    if (!ex)
        fail_msg("reloaded key refused: %s", cf_last_error());
    s_expect_square(kit, ex, 5);
    cf_executor_destroy(&ex);
    assert_true(cf_testkit_alive(broker));
}

//  A key taken off a list (SIGHUP) is cut off while connected: the client's
//  tasks fail with AuthError, its workers (threads and --procs) exit 1
//  saying why; the broker
//  audits by fingerprint, and a client and a worker still on the lists keep
//  working.
static void test_revoked_keys_are_cut_off_while_connected(void **state)
{
    cf_testkit_t *kit = *state;
    s_keys_t k;
    s_keys(kit, &k);
    cf_keypair_t bob, w2;
    s_make_pair(kit, &bob, "clients/bob.key", "bob.key_secret");
    s_make_pair(kit, &w2, "workers/w2.key", "w2.key_secret");
    cf_testkit_proc_t *broker = s_secure_broker(&k);
    const char *clients = cf_testkit_clients(broker);
    cf_testkit_proc_t *revoked[2] = {
        s_secure_worker(&k, cf_testkit_workers(broker), k.w1_secret, NULL),
        s_secure_worker(&k, cf_testkit_workers(broker), k.w1_secret, "2"),
    };
    s_secure_worker(&k, cf_testkit_workers(broker), cf_testkit_path(kit, "w2.key_secret"), NULL);
    cf_executor_t *alice = s_connect(clients, k.broker_pub, k.alice_secret);
    cf_executor_t *kept = s_connect(clients, k.broker_pub, cf_testkit_path(kit, "bob.key_secret"));
    if (!alice || !kept)
        fail_msg("allowed client refused: %s", cf_last_error());
    s_expect_square(kit, alice, 3);
    s_expect_square(kit, kept, 4);
    //  Every worker connected (a --procs child still in its handshake would
    //  be refused there instead, which is another test).
    int64_t deadline = cf_testkit_now_ms() + CF_TESTKIT_DEADLINE_MS;
    while (s_stat(clients, &k.broker, &k.ops, "workers") != 4) {
        if (cf_testkit_now_ms() > deadline)
            fail_msg("the four workers never joined");
        cf_testkit_nap_ms(20);
    }

    assert_int_equal(unlink(cf_testkit_path(kit, "clients/alice.key")), 0);
    assert_int_equal(unlink(cf_testkit_path(kit, "workers/w1.key")), 0);
    assert_true(cf_testkit_signal(broker, SIGHUP));
    s_log_wait_t reloaded = { broker, "1 client and 1 worker keys" };
    if (!cf_testkit_wait_until(s_log_cond, &reloaded, CF_TESTKIT_DEADLINE_MS))
        fail_msg("the broker did not reload on SIGHUP");

    //  A worker's next heartbeat is refused: it stops with a reason, in
    //  threads and in --procs mode (whose processes are not replaced).
    for (int i = 0; i < 2; i++) {
        int status = 0;
        if (!cf_testkit_wait_exit(revoked[i], CF_TESTKIT_DEADLINE_MS, &status))
            fail_msg("a worker (%s) whose key was revoked kept running",
                     i ? "--procs" : "--threads");
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 1);
        assert_true(s_log_has(revoked[i], "revoked"));
    }

    //  The client's next message is refused: a task in flight, or the
    //  submission itself once its heartbeat was, fails as an AuthError.
    cf_future_t *f = cf_submit(alice, "square", "i", 5);
    if (f) {
        cf_testkit_expect_error(kit, f, "AuthError", "revoked");
        cf_future_release(&f);
        f = cf_submit(alice, "square", "i", 5);
    }
    assert_null(f);
    assert_int_equal(cf_last_err(), CF_EAUTH);
    if (!strstr(cf_last_error(), "revoked"))
        fail_msg("refused without saying why: %s", cf_last_error());
    cf_executor_destroy(&alice);

    for (int i = 0; i < 4; i++)
        s_expect_square(kit, kept, i + 6);
    cf_executor_destroy(&kept);
    char fp[CF_KEY_FP_SIZE];
    cf_keys_fingerprint(k.alice.public_z85, fp);
    s_log_wait_t audited = { broker, fp };
    assert_true(s_log_has(broker, "removed from the allow-list"));
    assert_true(s_log_cond(&audited));
    s_expect_no_keys_in_log(&k, broker);
    assert_true(cf_testkit_alive(broker));
}

//  Roles at the handshake: the daemon gives each endpoint its role domain.
static void test_a_client_key_cannot_work_and_a_worker_key_cannot_submit(void **state)
{
    cf_testkit_t *kit = *state;
    s_keys_t k;
    s_keys(kit, &k);
    cf_testkit_proc_t *broker = s_secure_broker(&k);
    const char *clients = cf_testkit_clients(broker);
    s_secure_worker(&k, cf_testkit_workers(broker), k.w1_secret, NULL);
    cf_executor_t *alice = s_connect(clients, k.broker_pub, k.alice_secret);
    assert_non_null(alice);

    //  alice's key as a worker: refused, said in one line, exit status 1.
    const char *argv[] = { cf_testkit_env("CF_WORKER_BIN"),
                           "--broker",
                           cf_testkit_workers(broker),
                           "--tasks",
                           cf_testkit_env("CF_TASKS_LIB"),
                           "--broker-key",
                           k.broker_pub,
                           "--key",
                           k.alice_secret,
                           NULL };
    cf_testkit_output_t out;
    assert_true(cf_testkit_run(kit, argv, CF_TESTKIT_DEADLINE_MS, &out));
    assert_true(out.exited);
    assert_int_equal(out.exit_code, 1);
    char fp[CF_KEY_FP_SIZE];
    cf_keys_fingerprint(k.alice.public_z85, fp);
    char *line = cf_testkit_line_with(out.err, "refused this worker's key");
    if (!line || !strstr(line, fp))
        fail_msg("no refusal naming %s in:\n%s", fp, out.err);
    free(line);

    //  --procs checks before starting its children.
    const char *argv_procs[] = { cf_testkit_env("CF_WORKER_BIN"),
                                 "--broker",
                                 cf_testkit_workers(broker),
                                 "--tasks",
                                 cf_testkit_env("CF_TASKS_LIB"),
                                 "--broker-key",
                                 k.broker_pub,
                                 "--key",
                                 k.alice_secret,
                                 "--procs",
                                 "2",
                                 NULL };
    assert_true(cf_testkit_run(kit, argv_procs, CF_TESTKIT_DEADLINE_MS, &out));
    assert_int_equal(out.exit_code, 1);
    assert_non_null(strstr(out.err, "refused this worker's key"));

    //  A plaintext worker of a CURVE broker is told what is missing.
    const char *argv_plain[] = { cf_testkit_env("CF_WORKER_BIN"), "--broker",
                                 cf_testkit_workers(broker),      "--tasks",
                                 cf_testkit_env("CF_TASKS_LIB"),  NULL };
    assert_true(cf_testkit_run(kit, argv_plain, CF_TESTKIT_DEADLINE_MS, &out));
    assert_int_equal(out.exit_code, 1);
    assert_non_null(strstr(out.err, "requires CURVE"));

    //  w1's key as a client.
    cf_executor_t *ex = s_connect(clients, k.broker_pub, k.w1_secret);
    assert_null(ex);
    assert_int_equal(cf_last_err(), CF_EAUTH);

    //  Audited by fingerprint; everyone else unaffected.
    assert_true(s_log_has(broker, fp));
    s_expect_square(kit, alice, 11);
    assert_int_equal(s_stat(clients, &k.broker, &k.ops, "workers"), 1);
    assert_int_equal(s_stat(clients, &k.broker, &k.ops, "submitted"), 1);
    cf_executor_destroy(&alice);
    s_expect_no_keys_in_log(&k, broker);
}

// ---------------------------------------------------------------------------
//  In-process brokers: what the daemon cannot be made to do.

typedef struct {
    cf_auth_t *auth;
    const char *domain;
} s_setup_t;

static cf_err_t s_setup(void *socket, bool is_clients, void *arg)
{
    (void)is_clients;
    s_setup_t *setup = arg;
    return cf_auth_apply_server(socket, setup->auth, setup->domain);
}

static char s_log_text[64 * 1024];
static size_t s_log_len;
static pthread_mutex_t s_log_lock = PTHREAD_MUTEX_INITIALIZER;

static void s_log_capture(cf_log_level_t level, const char *component, const char *message,
                          void *arg)
{
    (void)level;
    (void)arg;
    pthread_mutex_lock(&s_log_lock);
    int n = snprintf(s_log_text + s_log_len, sizeof s_log_text - s_log_len, "%s: %s\n", component,
                     message);
    if (n > 0 && (size_t)n < sizeof s_log_text - s_log_len)
        s_log_len += (size_t)n;
    pthread_mutex_unlock(&s_log_lock);
}

static bool s_captured(const char *needle)
{
    pthread_mutex_lock(&s_log_lock);
    bool found = strstr(s_log_text, needle) != NULL;
    pthread_mutex_unlock(&s_log_lock);
    return found;
}

//  The broker's sockets fail closed when no ZAP handler serves their
//  context: here the handler runs in another context, as if it had failed
//  to start. Every client and worker is refused.
static void test_without_a_zap_handler_everyone_is_refused(void **state)
{
    cf_testkit_t *kit = *state;
    s_keys_t k;
    s_keys(kit, &k);
    void *auth_ctx = zmq_ctx_new();
    void *broker_ctx = zmq_ctx_new();
    assert_non_null(auth_ctx);
    assert_non_null(broker_ctx);
    cf_auth_t *auth = cf_auth_new(&(cf_auth_config_t){ .zmq_context = auth_ctx,
                                                       .secret_key_file = k.broker_secret,
                                                       .client_keys = k.clients,
                                                       .worker_keys = k.workers });
    assert_non_null(auth);
    s_setup_t setup = { auth, NULL };
    cf_broker_t *broker = cf_broker_new(
        &(cf_broker_config_t){ .client_endpoint = "tcp://127.0.0.1:*",
                               .worker_endpoint = "tcp://127.0.0.1:*",
                               .zmq_context = broker_ctx,
                               .socket_setup = s_setup,
                               .socket_setup_arg = &setup,
                               .require_roles = true });
    assert_non_null(broker);

    cf_executor_t *ex = s_connect(cf_broker_client_endpoint(broker), k.broker_pub, k.alice_secret);
    assert_null(ex);
    assert_int_equal(cf_last_err(), CF_EAUTH);

    const char *argv[] = { cf_testkit_env("CF_WORKER_BIN"),
                           "--broker",
                           cf_broker_worker_endpoint(broker),
                           "--tasks",
                           cf_testkit_env("CF_TASKS_LIB"),
                           "--broker-key",
                           k.broker_pub,
                           "--key",
                           k.w1_secret,
                           NULL };
    cf_testkit_output_t out;
    assert_true(cf_testkit_run(kit, argv, CF_TESTKIT_DEADLINE_MS, &out));
    assert_int_equal(out.exit_code, 1);
    assert_non_null(strstr(out.err, "dropped"));

    cf_broker_stats_t stats;
    assert_int_equal(cf_broker_stats(broker, &stats), CF_OK);
    assert_int_equal(stats.clients, 0);
    assert_int_equal(stats.workers, 0);
    assert_int_equal(stats.submitted, 0);
    assert_int_equal(stats.malformed, 0);

    cf_broker_destroy(&broker);
    cf_auth_destroy(&auth);
    zmq_ctx_term(broker_ctx);
    zmq_ctx_term(auth_ctx);
}

//  The per-message role check, with a domain that admits both roles on
//  both endpoints (the daemon never does this: its role domains refuse at
//  the handshake). A client key registering as a worker and a worker key
//  submitting get ERROR, are counted and audited; others keep working.
static void test_messages_of_the_wrong_role_are_refused_and_audited(void **state)
{
    cf_testkit_t *kit = *state;
    s_keys_t k;
    s_keys(kit, &k);
    s_log_len = 0;
    s_log_text[0] = '\0';
    cf_log_set_handler(s_log_capture, NULL, CF_LOG_INFO);
    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    cf_auth_t *auth = cf_auth_new(&(cf_auth_config_t){ .zmq_context = ctx,
                                                       .secret_key_file = k.broker_secret,
                                                       .client_keys = k.clients,
                                                       .worker_keys = k.workers,
                                                       .admin_keys = k.admins });
    assert_non_null(auth);
    s_setup_t setup = { auth, CF_AUTH_DOMAIN };
    cf_broker_t *broker = cf_broker_new(
        &(cf_broker_config_t){ .client_endpoint = "tcp://127.0.0.1:*",
                               .worker_endpoint = "tcp://127.0.0.1:*",
                               .zmq_context = ctx,
                               .socket_setup = s_setup,
                               .socket_setup_arg = &setup,
                               .require_roles = true });
    assert_non_null(broker);
    void *peers = zmq_ctx_new();
    assert_non_null(peers);
    cf_proto_enc_t *enc = cf_proto_enc_new();
    assert_non_null(enc);

    //  alice says READY on the worker endpoint.
    void *fake_worker = s_dealer(peers, cf_broker_worker_endpoint(broker), k.broker.public_z85,
                                 &k.alice);
    cf_proto_enc_ready(enc, 4, 4, "host", 1234, 0, NULL, 0);
    assert_int_equal(cf_proto_enc_send(enc, fake_worker, NULL, 0), CF_OK);
    cf_proto_msg_t *msg = s_recv_type(fake_worker, CF_MSG_ERROR, CF_TESTKIT_DEADLINE_MS);
    assert_non_null(msg);
    assert_int_equal(msg->text.len, strlen(CF_PROTO_NOT_ALLOWED));
    assert_memory_equal(msg->text.ptr, CF_PROTO_NOT_ALLOWED, msg->text.len);
    cf_proto_msg_destroy(&msg);

    //  w1 submits on the client endpoint.
    void *fake_client = s_dealer(peers, cf_broker_client_endpoint(broker), k.broker.public_z85,
                                 &k.w1);
    cf_proto_enc_begin(enc, CF_MSG_SUBMIT);
    assert_int_equal(cf_proto_enc_task(enc, 1, "square", 6, "\x91\x03", 2, 0, 0, 0), CF_OK);
    assert_int_equal(cf_proto_enc_send(enc, fake_client, NULL, 0), CF_OK);
    msg = s_recv_type(fake_client, CF_MSG_ERROR, CF_TESTKIT_DEADLINE_MS);
    assert_non_null(msg);
    cf_proto_msg_destroy(&msg);

    //  Counted, as ops (an admin key) sees.
    assert_int_equal(s_stat(cf_broker_client_endpoint(broker), &k.broker, &k.ops, "refused"), 2);
    cf_broker_stats_t stats;
    assert_int_equal(cf_broker_stats(broker, &stats), CF_OK);
    assert_int_equal(stats.workers, 0);
    assert_int_equal(stats.submitted, 0);
    assert_int_equal(stats.refused, 2);

    char fp_alice[CF_KEY_FP_SIZE], fp_w1[CF_KEY_FP_SIZE], line[64];
    cf_keys_fingerprint(k.alice.public_z85, fp_alice);
    cf_keys_fingerprint(k.w1.public_z85, fp_w1);
    snprintf(line, sizeof line, "refused READY from client:%s", fp_alice);
    assert_true(s_captured(line));
    snprintf(line, sizeof line, "refused SUBMIT from worker:%s", fp_w1);
    assert_true(s_captured(line));
    assert_false(s_captured(k.alice.public_z85));
    assert_false(s_captured(k.w1.public_z85));

    zmq_close(fake_worker);
    zmq_close(fake_client);
    cf_proto_enc_destroy(&enc);
    zmq_ctx_term(peers);
    cf_broker_destroy(&broker);
    cf_auth_destroy(&auth);
    zmq_ctx_term(ctx);
    cf_log_set_handler(cf_log_to_stderr, NULL, CF_LOG_WARN);
}

// ---------------------------------------------------------------------------
//  Bounded resources

static void test_oversize_and_too_many_frames_hurt_only_their_sender(void **state)
{
    cf_testkit_t *kit = *state;
    s_keys_t k;
    s_keys(kit, &k);
    cf_testkit_proc_t *broker = s_secure_broker(&k);
    const char *clients = cf_testkit_clients(broker);
    s_secure_worker(&k, cf_testkit_workers(broker), k.w1_secret, NULL);
    cf_executor_t *ex = s_connect(clients, k.broker_pub, k.alice_secret);
    assert_non_null(ex);
    s_expect_square(kit, ex, 3);

    //  The client library refuses an over-size task before sending it.
    size_t big = CF_PROTO_MAX_FRAME + 1;
    char *blob = malloc(big + 16);
    assert_non_null(blob);
    blob[0] = (char)0x91;    //  [bin32 of big bytes]
    blob[1] = (char)0xc6;
    uint32_t be = htonl((uint32_t)big);
    memcpy(blob + 2, &be, 4);
    memset(blob + 6, 'x', big);
    cf_future_t *f = cf_submit_raw(ex, NULL, "echo", blob, big + 6);
    assert_null(f);
    assert_int_equal(cf_last_err(), CF_ETOOBIG);

    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    //  Too many frames from an allowed client: drained, answered ERROR.
    void *many = s_dealer(ctx, clients, k.broker.public_z85, &k.alice);
    for (int i = 0; i < CF_PROTO_MAX_FRAMES + 4; i++)
        assert_true(zmq_send(many, "x", 1, i + 1 < CF_PROTO_MAX_FRAMES + 4 ? ZMQ_SNDMORE : 0) == 1);
    cf_proto_msg_t *msg = s_recv_type(many, CF_MSG_ERROR, CF_TESTKIT_DEADLINE_MS);
    if (!msg)
        fail_msg("no ERROR for a message of too many frames");
    cf_proto_msg_destroy(&msg);

    //  A frame over ZMQ_MAXMSGSIZE (a body's limit plus slack): libzmq
    //  drops the connection before any of it reaches the broker; the
    //  sender sees it close.
    size_t over = CF_PROTO_MAX_FRAME + 64 * 1024;
    char *huge_frame = calloc(1, over);
    assert_non_null(huge_frame);
    void *huge = s_dealer(ctx, clients, k.broker.public_z85, &k.alice);
    void *monitor = cf_keys_monitor_new(ctx, huge);
    assert_non_null(monitor);
    assert_true(zmq_send(huge, huge_frame, over, 0) == (int)over);
    free(huge_frame);
    bool closed = false;
    int64_t deadline = cf_testkit_now_ms() + CF_TESTKIT_DEADLINE_MS;
    while (!closed && cf_testkit_now_ms() < deadline) {
        zmq_pollitem_t item = { monitor, 0, ZMQ_POLLIN, 0 };
        if (zmq_poll(&item, 1, 100) > 0 && cf_keys_monitor_read(monitor, NULL) == CF_ESTOP)
            closed = true;
    }
    assert_true(closed);
    free(blob);

    //  Everyone else keeps working.
    s_expect_square(kit, ex, 9);
    assert_int_equal(s_stat(clients, &k.broker, &k.ops, "malformed"), 1);
    cf_keys_monitor_close(huge, &monitor);
    zmq_close(huge);
    zmq_close(many);
    zmq_ctx_term(ctx);
    cf_executor_destroy(&ex);
    assert_true(cf_testkit_alive(broker));
}

#define S_IDLE_CONNECTIONS 200

//  Connections that never finish a handshake are closed after the
//  handshake interval; a legitimate client keeps working meanwhile.
static void test_idle_unauthenticated_connections_are_closed(void **state)
{
    cf_testkit_t *kit = *state;
    s_keys_t k;
    s_keys(kit, &k);
    cf_testkit_proc_t *broker = s_secure_broker(&k);
    const char *clients = cf_testkit_clients(broker);
    s_secure_worker(&k, cf_testkit_workers(broker), k.w1_secret, NULL);
    const char *colon = strrchr(clients, ':');
    assert_non_null(colon);
    int port = atoi(colon + 1);

    int fds[S_IDLE_CONNECTIONS];
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < S_IDLE_CONNECTIONS; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(fds[i] >= 0);
        if (connect(fds[i], (struct sockaddr *)&addr, sizeof addr) != 0)
            fail_msg("connect %d: %s", i, strerror(errno));
    }
    cf_executor_t *ex = s_connect(clients, k.broker_pub, k.alice_secret);
    assert_non_null(ex);
    s_expect_square(kit, ex, 4);

    //  Each idle connection ends with EOF or a reset from the broker.
    int open = S_IDLE_CONNECTIONS;
    int64_t deadline = cf_testkit_now_ms() + CF_TESTKIT_DEADLINE_MS;
    char buf[256];
    while (open > 0 && cf_testkit_now_ms() < deadline) {
        struct pollfd pfds[S_IDLE_CONNECTIONS];
        for (int i = 0; i < S_IDLE_CONNECTIONS; i++)
            pfds[i] = (struct pollfd){ .fd = fds[i], .events = POLLIN };
        if (poll(pfds, S_IDLE_CONNECTIONS, 200) <= 0)
            continue;
        for (int i = 0; i < S_IDLE_CONNECTIONS; i++) {
            if (fds[i] < 0 || !(pfds[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            ssize_t n = recv(fds[i], buf, sizeof buf, MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
                close(fds[i]);
                fds[i] = -1;
                open--;
            }
        }
    }
    for (int i = 0; i < S_IDLE_CONNECTIONS; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    if (open > 0)
        fail_msg("%d of %d idle connections still open", open, S_IDLE_CONNECTIONS);
    s_expect_square(kit, ex, 6);
    cf_executor_destroy(&ex);
    assert_int_equal(s_stat(clients, &k.broker, &k.ops, "clients"), 0);
}

static void test_broker_refuses_bad_secure_configurations(void **state)
{
    cf_testkit_t *kit = *state;
    s_keys_t k;
    s_keys(kit, &k);
    const char *bin = cf_testkit_env("CF_BROKER_BIN");
    cf_testkit_output_t out;
    //  Flags that do not go together: usage errors (2); a key file that
    //  cannot be used: a failure to start (1).
    const char *no_secret[] = { bin, "--client-keys", k.clients, NULL };
    assert_true(cf_testkit_run(kit, no_secret, CF_TESTKIT_DEADLINE_MS, &out));
    assert_int_equal(out.exit_code, 2);
    assert_non_null(strstr(out.err, "needs --curve-secret"));
    const char *no_list[] = { bin, "--curve-secret", k.broker_secret, NULL };
    assert_true(cf_testkit_run(kit, no_list, CF_TESTKIT_DEADLINE_MS, &out));
    assert_int_equal(out.exit_code, 2);
    //  A secret key others may read.
    assert_int_equal(chmod(k.broker_secret, 0644), 0);
    const char *loose[] = { bin,
                            "--clients",
                            "tcp://127.0.0.1:*",
                            "--workers",
                            "tcp://127.0.0.1:*",
                            "--curve-secret",
                            k.broker_secret,
                            "--client-keys",
                            k.clients,
                            NULL };
    assert_true(cf_testkit_run(kit, loose, CF_TESTKIT_DEADLINE_MS, &out));
    assert_int_equal(out.exit_code, 1);
    assert_null(strstr(out.out, "ready"));
    assert_int_equal(chmod(k.broker_secret, 0600), 0);
    //  The worker wants both of its key options.
    const char *half[] = { cf_testkit_env("CF_WORKER_BIN"),
                           "--tasks",
                           cf_testkit_env("CF_TASKS_LIB"),
                           "--key",
                           k.w1_secret,
                           NULL };
    assert_true(cf_testkit_run(kit, half, CF_TESTKIT_DEADLINE_MS, &out));
    assert_int_equal(out.exit_code, 2);
    assert_non_null(strstr(out.err, "--broker-key"));
    //  Plaintext on a non-loopback address is allowed, with a warning.
    const char *open_broker[] = { bin,         "--clients",         "tcp://0.0.0.0:*",
                                  "--workers", "tcp://127.0.0.1:*", NULL };
    cf_testkit_proc_t *plain = cf_testkit_spawn(kit, "plain-broker", open_broker);
    assert_non_null(plain);
    assert_non_null(cf_testkit_wait_line(plain, "ready", CF_TESTKIT_READY_MS));
    s_log_wait_t w = { plain, "not encrypted" };
    assert_true(cf_testkit_wait_until(s_log_cond, &w, CF_TESTKIT_DEADLINE_MS));
    cf_testkit_stop(plain, CF_TESTKIT_STOP_MS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_allowed_keys_run_tasks_on_threads_and_procs_workers,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_two_brokers_each_with_its_own_key, cf_testkit_setup,
                                        cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_revoked_keys_are_cut_off_while_connected,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(
            test_unknown_plaintext_and_wrong_server_key_clients_are_refused, cf_testkit_setup,
            cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(
            test_a_client_key_cannot_work_and_a_worker_key_cannot_submit, cf_testkit_setup,
            cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_without_a_zap_handler_everyone_is_refused,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_messages_of_the_wrong_role_are_refused_and_audited,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_oversize_and_too_many_frames_hurt_only_their_sender,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_idle_unauthenticated_connections_are_closed,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_broker_refuses_bad_secure_configurations,
                                        cf_testkit_setup, cf_testkit_teardown),
    };
    //  CF_TEST_FILTER="*frames*" (a pattern) runs only matching tests.
    if (getenv("CF_TEST_FILTER"))
        cmocka_set_test_filter(getenv("CF_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}

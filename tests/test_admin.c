//  SPDX-License-Identifier: MIT
//
//  cf-admin against real brokers: the counters it shows follow the work
//  done (five tasks submitted and completed show as five, in the status
//  screen, the JSON and the Prometheus metrics), `workers` and `clients`
//  say plainly that a cf/1 broker does not report per-peer detail, --watch
//  redraws until Ctrl-C, a broker that does not answer fails within the
//  timeout with the endpoint named, and a CURVE broker answers cf-admin
//  with an admin key (--admin-keys) and nobody else: a client or worker
//  key's STATS gets a clear ERROR, an admin key's SUBMIT is refused, the
//  admin list reloads on SIGHUP; a plaintext broker answers anyone.

#include "cf_testkit.h"

#include "cf_keys.h"
#include "cf_proto.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#define S_RUN_MS 30000

static void s_admin(cf_testkit_t *kit, const char *const *args, cf_testkit_output_t *output)
{
    const char *argv[16];
    size_t n = 0;
    argv[n++] = cf_testkit_env("CF_ADMIN_BIN");
    for (size_t i = 0; args[i]; i++) {
        assert_true(n < 15);
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    assert_true(cf_testkit_run(kit, argv, S_RUN_MS, output));
    assert_true(output->exited);
}

static void s_expect_in(const char *text, const char *needle, const cf_testkit_output_t *output)
{
    if (!strstr(text, needle))
        fail_msg("expected '%s' in:\n%s\nstderr:\n%s", needle, output->out, output->err);
}

//  A broker with one worker that has run five squares for one client.
static cf_testkit_proc_t *s_busy_broker(cf_testkit_t *kit)
{
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    cf_testkit_start_worker(kit, cf_testkit_workers(broker), "--threads", "2", NULL);
    cf_executor_t *ex = cf_testkit_connect(cf_testkit_clients(broker), 0);
    for (int i = 1; i <= 5; i++) {
        cf_future_t *f = cf_submit(ex, "square", "i", i);
        assert_non_null(f);
        cf_testkit_expect_int(kit, f, (int64_t)i * i);
        cf_future_release(&f);
    }
    cf_executor_destroy(&ex);
    return broker;
}

static void test_status_json_and_metrics_show_the_work_done(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = s_busy_broker(kit);
    const char *clients = cf_testkit_clients(broker);
    cf_testkit_output_t output;

    s_admin(kit, (const char *[]){ "--broker", clients, "status", NULL }, &output);
    assert_int_equal(output.exit_code, 0);
    char heading[256];
    snprintf(heading, sizeof heading, "cf-broker at %s: answered in ", clients);
    s_expect_in(output.out, heading, &output);
    char *line = cf_testkit_line_with(output.out, "submitted");
    assert_non_null(line);
    //  "  submitted   5   completed   5"
    unsigned long submitted = 0, completed = 0;
    assert_int_equal(sscanf(line, " submitted %lu completed %lu", &submitted, &completed), 2);
    free(line);
    assert_int_equal(submitted, 5);
    assert_int_equal(completed, 5);
    //  Each worker and client too, with what each worker serves (issue 12).
    s_expect_in(output.out, "\nworkers:\nworker ", &output);
    s_expect_in(output.out, "function_count  functions", &output);
    s_expect_in(output.out, "cf.chunk", &output);
    s_expect_in(output.out, "\nclients:\nclient ", &output);

    s_admin(kit, (const char *[]){ "--json", "--broker", clients, NULL }, &output);
    assert_int_equal(output.exit_code, 0);
    s_expect_in(output.out, "\"submitted\": 5,", &output);
    s_expect_in(output.out, "\"completed\": 5,", &output);
    s_expect_in(output.out, "\"workers\": 1,", &output);
    s_expect_in(output.out, "\"failed\": 0,", &output);
    s_expect_in(output.out, "\"function_count\": ", &output);
    assert_int_equal(cf_testkit_count(output.out, "\n"), 1);    //  one object, one line

    s_admin(kit, (const char *[]){ "metrics", "-b", clients, NULL }, &output);
    assert_int_equal(output.exit_code, 0);
    s_expect_in(output.out, "\ncfutures_broker_up 1\n", &output);
    s_expect_in(output.out, "# TYPE cfutures_broker_completed_total counter\n", &output);
    s_expect_in(output.out, "\ncfutures_broker_completed_total 5\n", &output);
    s_expect_in(output.out, "# TYPE cfutures_broker_workers gauge\n", &output);
    s_expect_in(output.out, "\ncfutures_broker_workers 1\n", &output);
    //  The text format: comments, or "name value".
    char *copy = strdup(output.out);
    for (char *save = NULL, *l = strtok_r(copy, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        char name[128];
        double value;
        char extra;
        if (!strncmp(l, "# HELP cfutures_", 16) || !strncmp(l, "# TYPE cfutures_", 16))
            continue;
        if (sscanf(l, "%127[a-z_] %lf %c", name, &value, &extra) != 2
            || strncmp(name, "cfutures_broker_", 16))
            fail_msg("not a Prometheus sample line: '%s'", l);
    }
    free(copy);
}

//  workers and clients list each peer, as a table and as JSON, from the
//  broker's worker_list and client_list (STATS [flags]).
static void test_workers_and_clients_list_each_peer(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    cf_testkit_proc_t *worker = cf_testkit_start_worker(kit, cf_testkit_workers(broker),
                                                        "--threads", "2", NULL);
    const char *clients = cf_testkit_clients(broker);
    cf_executor_t *ex = cf_testkit_connect(clients, 0);
    for (int i = 1; i <= 3; i++) {
        cf_future_t *f = cf_submit(ex, "square", "i", i);
        assert_non_null(f);
        cf_testkit_expect_int(kit, f, (int64_t)i * i);
        cf_future_release(&f);
    }
    cf_testkit_output_t output;
    s_admin(kit, (const char *[]){ "workers", "--broker", clients, NULL }, &output);
    assert_int_equal(output.exit_code, 0);
    s_expect_in(output.out, "1 workers connected to ", &output);
    s_expect_in(output.out, "worker", &output);
    s_expect_in(output.out, "completed", &output);
    char pid[32];
    snprintf(pid, sizeof pid, " %d ", (int)cf_testkit_pid(worker));
    char *row = cf_testkit_line_with(output.out, pid);
    if (!row)
        fail_msg("no row with pid%s in:\n%s", pid, output.out);
    //  worker host pid threads credit held completed failed heard_ms
    char id[128], host[128];
    long row_pid, threads, credit, held, completed, failed, heard;
    assert_int_equal(sscanf(row, "%127s %127s %ld %ld %ld %ld %ld %ld %ld", id, host, &row_pid,
                            &threads, &credit, &held, &completed, &failed, &heard),
                     9);
    free(row);
    assert_int_equal(row_pid, cf_testkit_pid(worker));
    assert_int_equal(threads, 2);
    assert_int_equal(completed, 3);
    assert_int_equal(failed, 0);

    s_admin(kit, (const char *[]){ "workers", "--json", "--broker", clients, NULL }, &output);
    assert_int_equal(output.exit_code, 0);
    snprintf(pid, sizeof pid, "\"pid\": %d,", (int)cf_testkit_pid(worker));
    s_expect_in(output.out, pid, &output);
    s_expect_in(output.out, "\"completed\": 3,", &output);

    //  The executor still connected is the one client.
    s_admin(kit, (const char *[]){ "clients", "--broker", clients, NULL }, &output);
    assert_int_equal(output.exit_code, 0);
    s_expect_in(output.out, "1 clients connected to ", &output);
    s_admin(kit, (const char *[]){ "clients", "--json", "--broker", clients, NULL }, &output);
    assert_int_equal(output.exit_code, 0);
    s_expect_in(output.out, "\"submitted\": 3,", &output);
    s_expect_in(output.out, "\"queued\": 0,", &output);
    cf_executor_destroy(&ex);
}

static void test_a_silent_broker_fails_within_the_timeout_naming_the_endpoint(void **state)
{
    cf_testkit_t *kit = *state;
    //  An endpoint nobody serves: a broker's, after it stopped.
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    char endpoint[256];
    snprintf(endpoint, sizeof endpoint, "%s", cf_testkit_clients(broker));
    cf_testkit_stop(broker, CF_TESTKIT_STOP_MS);

    cf_testkit_output_t output;
    int64_t start_ms = cf_testkit_now_ms();
    s_admin(kit, (const char *[]){ "--broker", endpoint, "--timeout", "700", NULL }, &output);
    int64_t took_ms = cf_testkit_now_ms() - start_ms;
    assert_int_equal(output.exit_code, 1);
    char expected[512];
    snprintf(expected, sizeof expected, "cf-admin: no answer from %s within 700 ms", endpoint);
    s_expect_in(output.err, expected, &output);
    assert_true(took_ms >= 700);
    assert_true(took_ms < 700 + 10000);    //  the timeout bounds it, not a hang

    s_admin(kit, (const char *[]){ "metrics", "--broker", endpoint, "--timeout", "300", NULL },
            &output);
    assert_int_equal(output.exit_code, 1);
    s_expect_in(output.out, "\ncfutures_broker_up 0\n", &output);
}

static void test_watch_redraws_until_interrupted(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    const char *argv[] = { cf_testkit_env("CF_ADMIN_BIN"), "--watch", "--interval", "1", "--broker",
                           cf_testkit_clients(broker),     NULL };
    cf_testkit_proc_t *admin = cf_testkit_spawn(kit, "cf-admin", argv);
    assert_non_null(admin);
    //  Not a terminal: each refresh is a new block of lines.
    for (int i = 0; i < 2; i++)
        if (!cf_testkit_wait_line(admin, "cf-broker at ", CF_TESTKIT_DEADLINE_MS))
            fail_msg("refresh %d did not come", i + 1);
    assert_true(cf_testkit_signal(admin, SIGINT));
    int status = 0;
    assert_true(cf_testkit_wait_exit(admin, CF_TESTKIT_STOP_MS, &status));
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

//  cf-keygen dir/name; returns dir/name (owned by the kit).
static const char *s_keygen(cf_testkit_t *kit, const char *relative)
{
    const char *name = cf_testkit_path(kit, relative);
    cf_testkit_output_t output;
    const char *argv[] = { cf_testkit_env("CF_KEYGEN_BIN"), name, NULL };
    assert_true(cf_testkit_run(kit, argv, S_RUN_MS, &output));
    assert_int_equal(output.exit_code, 0);
    return name;
}

//  A CURVE cluster's keys, made by cf-keygen in the kit's directory: the
//  broker, alice on the client list, w1 on the worker list, ops on the admin
//  list, mallory on none. Paths are the kit's (they live as long as it).
typedef struct {
    const char *broker_public, *broker_secret;
    const char *alice_secret, *w1_secret, *ops_secret, *mallory_secret;
    const char *clients, *workers, *admins;    //  the list directories
    cf_keypair_t alice, w1, ops;               //  read back, for fingerprints
} s_keys_t;

static const char *s_with(cf_testkit_t *kit, const char *name, const char *suffix)
{
    char relative[256];
    snprintf(relative, sizeof relative, "%s%s", name, suffix);
    return cf_testkit_path(kit, relative);
}

static void s_keys(cf_testkit_t *kit, s_keys_t *k)
{
    memset(k, 0, sizeof *k);
    const char *dirs[] = { "clients", "workers", "admins" };
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(mkdir(cf_testkit_path(kit, dirs[i]), 0755), 0);
        assert_int_equal(chmod(cf_testkit_path(kit, dirs[i]), 0755), 0);    //  whatever the umask
    }
    k->clients = cf_testkit_path(kit, "clients");
    k->workers = cf_testkit_path(kit, "workers");
    k->admins = cf_testkit_path(kit, "admins");
    s_keygen(kit, "broker");
    s_keygen(kit, "clients/alice");
    s_keygen(kit, "workers/w1");
    s_keygen(kit, "admins/ops");
    s_keygen(kit, "mallory");
    k->broker_public = s_with(kit, "broker", ".key");
    k->broker_secret = s_with(kit, "broker", ".key_secret");
    k->alice_secret = s_with(kit, "clients/alice", ".key_secret");
    k->w1_secret = s_with(kit, "workers/w1", ".key_secret");
    k->ops_secret = s_with(kit, "admins/ops", ".key_secret");
    k->mallory_secret = s_with(kit, "mallory", ".key_secret");
    assert_int_equal(cf_keys_read_pair(k->alice_secret, &k->alice), CF_OK);
    assert_int_equal(cf_keys_read_pair(k->w1_secret, &k->w1), CF_OK);
    assert_int_equal(cf_keys_read_pair(k->ops_secret, &k->ops), CF_OK);
}

static cf_testkit_proc_t *s_curve_broker(cf_testkit_t *kit, const s_keys_t *k)
{
    return cf_testkit_start_broker(kit, "--curve-secret", k->broker_secret, "--client-keys",
                                   k->clients, "--worker-keys", k->workers, "--admin-keys",
                                   k->admins, NULL);
}

//  cf-admin ARGS... with a CURVE key: --broker-key and --key secret.
static void s_admin_keyed(cf_testkit_t *kit, const s_keys_t *k, const char *clients,
                          const char *secret, const char *const *args, cf_testkit_output_t *output)
{
    const char *argv[12] = { "-b", clients, "--broker-key", k->broker_public, "--key", secret };
    size_t n = 6;
    for (size_t i = 0; args[i]; i++) {
        assert_true(n < 11);
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    s_admin(kit, argv, output);
}

typedef struct {
    cf_testkit_proc_t *proc;
    const char *needle;
} s_log_wait_t;

static bool s_log_has(void *arg)
{
    s_log_wait_t *w = arg;
    char *log = cf_testkit_log(w->proc);
    bool found = log && strstr(log, w->needle);
    free(log);
    return found;
}

//  The broker's log gets a line with needle (it is written before the
//  refusal is sent, but read here from a file another process writes).
static void s_expect_logged(cf_testkit_proc_t *broker, const char *needle)
{
    s_log_wait_t w = { broker, needle };
    if (!cf_testkit_wait_until(s_log_has, &w, CF_TESTKIT_DEADLINE_MS))
        fail_msg("no '%s' in the broker's log (%s)", needle, cf_testkit_log_path(broker));
}

//  The next message of type want on sock, others skipped; NULL after
//  timeout_ms.
static cf_proto_msg_t *s_recv_type(void *sock, cf_msg_type_t want, int timeout_ms)
{
    int64_t deadline = cf_testkit_now_ms() + timeout_ms;
    while (cf_testkit_now_ms() < deadline) {
        zmq_pollitem_t item = { sock, 0, ZMQ_POLLIN, 0 };
        if (zmq_poll(&item, 1, 100) <= 0)
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

//  STATS sent by hand on endpoint with pair's key: the ERROR text that
//  answers it (into text), or fails.
static void s_raw_stats_refused(const s_keys_t *k, const char *endpoint, const cf_keypair_t *pair,
                                char *text, size_t size)
{
    char server[CF_KEY_Z85_SIZE];
    assert_int_equal(cf_keys_read_public(k->broker_public, server), CF_OK);
    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    void *sock = zmq_socket(ctx, ZMQ_DEALER);
    assert_non_null(sock);
    int linger = 0;
    assert_int_equal(zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger), 0);
    assert_int_equal(cf_keys_apply_client(sock, server, pair->public_z85, pair->secret_z85), CF_OK);
    assert_int_equal(zmq_connect(sock, endpoint), 0);
    cf_proto_enc_t *enc = cf_proto_enc_new();
    assert_non_null(enc);
    cf_proto_enc_begin(enc, CF_MSG_STATS);
    assert_int_equal(cf_proto_enc_send(enc, sock, NULL, 0), CF_OK);
    cf_proto_msg_t *msg = s_recv_type(sock, CF_MSG_ERROR, CF_TESTKIT_DEADLINE_MS);
    if (!msg)
        fail_msg("no ERROR for STATS at %s", endpoint);
    cf_proto_str_copy(msg->text, text, size);
    cf_proto_msg_destroy(&msg);
    cf_proto_enc_destroy(&enc);
    zmq_close(sock);
    zmq_ctx_term(ctx);
}

//  Under CURVE, STATS is for admin keys: cf-admin with one is answered; a
//  client key's STATS gets a clear ERROR, said by cf-admin with the fix and
//  logged by the broker; a worker key's STATS (on the worker endpoint, the
//  only one it may reach) the same ERROR; a key on no list and no key at
//  all are refused at the handshake, said at once with the endpoint.
static void test_under_curve_stats_needs_an_admin_key(void **state)
{
    cf_testkit_t *kit = *state;
    if (!zmq_has("curve"))
        skip();
    s_keys_t k;
    s_keys(kit, &k);
    cf_testkit_proc_t *broker = s_curve_broker(kit, &k);
    const char *clients = cf_testkit_clients(broker);
    s_expect_logged(broker, "1 client and 1 worker keys allowed, 1 admin keys");
    cf_testkit_output_t output;

    s_admin_keyed(kit, &k, clients, k.ops_secret, (const char *[]){ "--json", NULL }, &output);
    if (output.exit_code != 0)
        fail_msg("ops: exit %d\n%s%s", output.exit_code, output.out, output.err);
    s_expect_in(output.out, "\"clients\": 0,", &output);
    s_expect_in(output.out, "\"refused\": 0", &output);
    //  The lists too (workers and clients ask with flags).
    s_admin_keyed(kit, &k, clients, k.ops_secret, (const char *[]){ "workers", NULL }, &output);
    assert_int_equal(output.exit_code, 0);
    s_expect_in(output.out, "0 workers connected to ", &output);

    //  alice's client key: refused at once (well within the long timeout)
    //  with the broker's reason and the fix.
    char refused[512], fp[CF_KEY_FP_SIZE], line[128];
    snprintf(refused, sizeof refused,
             "cf-admin: the broker at %s refused STATS: not allowed: STATS needs an admin key",
             clients);
    int64_t start_ms = cf_testkit_now_ms();
    s_admin_keyed(kit, &k, clients, k.alice_secret, (const char *[]){ "-t", "60000", NULL },
                  &output);
    assert_int_equal(output.exit_code, 1);
    s_expect_in(output.err, refused, &output);
    s_expect_in(output.err, "--admin-keys", &output);
    assert_int_equal(output.out[0], '\0');
    cf_keys_fingerprint(k.alice.public_z85, fp);
    s_expect_in(output.err, fp, &output);
    snprintf(line, sizeof line, "refused STATS from client:%s (routing id ", fp);
    s_expect_logged(broker, line);
    s_expect_logged(broker, "STATS needs an admin key (cf-broker --admin-keys)");
    //  metrics says the broker is down to Prometheus, and why on stderr.
    s_admin_keyed(kit, &k, clients, k.alice_secret, (const char *[]){ "metrics", NULL }, &output);
    assert_int_equal(output.exit_code, 1);
    s_expect_in(output.out, "\ncfutures_broker_up 0\n", &output);
    s_expect_in(output.err, refused, &output);

    //  w1's worker key asking STATS where it may connect.
    char text[256];
    s_raw_stats_refused(&k, cf_testkit_workers(broker), &k.w1, text, sizeof text);
    assert_string_equal(text, "not allowed: STATS needs an admin key");
    cf_keys_fingerprint(k.w1.public_z85, fp);
    snprintf(line, sizeof line, "refused STATS from worker:%s", fp);
    s_expect_logged(broker, line);

    //  A key on no list, and no key at all: refused at the handshake.
    char no_key[512], plaintext[512];
    snprintf(no_key, sizeof no_key, "cf-admin: the broker at %s refused the key ", clients);
    snprintf(plaintext, sizeof plaintext,
             "cf-admin: the broker at %s requires CURVE: give --broker-key and --key", clients);
    s_admin_keyed(kit, &k, clients, k.mallory_secret, (const char *[]){ "-t", "60000", NULL },
                  &output);
    assert_int_equal(output.exit_code, 1);
    s_expect_in(output.err, no_key, &output);
    s_expect_in(output.err, "(not on its admin list", &output);
    s_admin(kit, (const char *[]){ "-b", clients, "-t", "60000", NULL }, &output);
    assert_int_equal(output.exit_code, 1);
    s_expect_in(output.err, plaintext, &output);
    assert_true(cf_testkit_now_ms() - start_ms < 50000);

    //  Every refusal counted: alice twice, w1 once.
    s_admin_keyed(kit, &k, clients, k.ops_secret, (const char *[]){ "--json", NULL }, &output);
    assert_int_equal(output.exit_code, 0);
    s_expect_in(output.out, "\"refused\": 3", &output);
    assert_true(cf_testkit_alive(broker));
}

//  An admin key may ask, never submit: its SUBMIT is refused with the ERROR
//  a client library takes as final (its tasks fail with AuthError, at once),
//  nothing is queued, and the broker logs it by fingerprint.
static void test_an_admin_key_cannot_submit(void **state)
{
    cf_testkit_t *kit = *state;
    if (!zmq_has("curve"))
        skip();
    s_keys_t k;
    s_keys(kit, &k);
    cf_testkit_proc_t *broker = s_curve_broker(kit, &k);
    const char *clients = cf_testkit_clients(broker);
    cf_testkit_start_worker(kit, cf_testkit_workers(broker), "--broker-key", k.broker_public,
                            "--key", k.w1_secret, NULL);
    //  The handshake passes (admin keys may connect to the client endpoint).
    cf_executor_t *ex = cf_executor_connect(clients, &(cf_options_t){
                                                         .curve_broker_key = k.broker_public,
                                                         .curve_key = k.ops_secret,
                                                     });
    if (!ex)
        fail_msg("the admin key was refused at the handshake: %s", cf_last_error());
    cf_future_t *f = cf_submit(ex, "square", "i", 3);
    if (f) {
        cf_testkit_expect_error(kit, f, "AuthError", "not allowed");
        cf_future_release(&f);
        f = cf_submit(ex, "square", "i", 4);
    }
    //  Once refused, the executor refuses every later submission.
    assert_null(f);
    assert_int_equal(cf_last_err(), CF_EAUTH);
    if (!strstr(cf_last_error(), "not allowed"))
        fail_msg("refused without saying why: %s", cf_last_error());
    cf_executor_destroy(&ex);

    char fp[CF_KEY_FP_SIZE], line[128];
    cf_keys_fingerprint(k.ops.public_z85, fp);
    snprintf(line, sizeof line, "refused SUBMIT from admin:%s (routing id ", fp);
    s_expect_logged(broker, line);
    s_expect_logged(broker, "an admin key may only ask for STATS");
    cf_testkit_output_t output;
    s_admin_keyed(kit, &k, clients, k.ops_secret, (const char *[]){ "--json", NULL }, &output);
    assert_int_equal(output.exit_code, 0);
    s_expect_in(output.out, "\"submitted\": 0,", &output);
    s_expect_in(output.out, "\"clients\": 0,", &output);

    //  alice, a client key, still submits.
    ex = cf_executor_connect(clients, &(cf_options_t){
                                          .curve_broker_key = k.broker_public,
                                          .curve_key = k.alice_secret,
                                      });
    assert_non_null(ex);
    f = cf_submit(ex, "square", "i", 6);
    assert_non_null(f);
    cf_testkit_expect_int(kit, f, 36);
    cf_future_release(&f);
    cf_executor_destroy(&ex);
}

//  --admin-keys is reloaded on SIGHUP with the other lists: a key added is
//  answered, a key removed is refused again.
static void test_the_admin_list_reloads_on_sighup(void **state)
{
    cf_testkit_t *kit = *state;
    if (!zmq_has("curve"))
        skip();
    s_keys_t k;
    s_keys(kit, &k);
    //  ops.key moves out of the list before the broker starts.
    char *ops_public = cf_testkit_read_file(s_with(kit, "admins/ops", ".key"));
    assert_non_null(ops_public);
    assert_int_equal(unlink(s_with(kit, "admins/ops", ".key")), 0);
    cf_testkit_proc_t *broker = s_curve_broker(kit, &k);
    const char *clients = cf_testkit_clients(broker);
    cf_testkit_output_t output;
    s_admin_keyed(kit, &k, clients, k.ops_secret, (const char *[]){ NULL }, &output);
    assert_int_equal(output.exit_code, 1);
    s_expect_in(output.err, "(not on its admin list", &output);

    FILE *f = fopen(s_with(kit, "admins/ops", ".key"), "w");
    assert_non_null(f);
    assert_true(fputs(ops_public, f) >= 0);
    assert_int_equal(fclose(f), 0);
    free(ops_public);
    assert_true(cf_testkit_signal(broker, SIGHUP));
    s_expect_logged(broker, "allow-lists reloaded: 1 client and 1 worker keys, 1 admin keys");
    s_admin_keyed(kit, &k, clients, k.ops_secret, (const char *[]){ NULL }, &output);
    if (output.exit_code != 0)
        fail_msg("ops after the reload: exit %d\n%s%s", output.exit_code, output.out, output.err);

    assert_int_equal(unlink(s_with(kit, "admins/ops", ".key")), 0);
    assert_true(cf_testkit_signal(broker, SIGHUP));
    s_expect_logged(broker, "allow-lists reloaded: 1 client and 1 worker keys, 0 admin keys");
    s_admin_keyed(kit, &k, clients, k.ops_secret, (const char *[]){ NULL }, &output);
    assert_int_equal(output.exit_code, 1);
    s_expect_in(output.err, "(not on its admin list", &output);
}

//  Without CURVE there are no keys and no roles: STATS is answered to
//  anyone who can connect, as before (docs/security.md), and admin key
//  flags are a usage error there.
static void test_a_plaintext_broker_answers_stats_from_anyone(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    cf_testkit_output_t output;
    s_admin(kit, (const char *[]){ "-b", cf_testkit_clients(broker), "--json", NULL }, &output);
    assert_int_equal(output.exit_code, 0);
    s_expect_in(output.out, "\"workers\": 0,", &output);

    const char *argv[] = { cf_testkit_env("CF_BROKER_BIN"), "--admin-keys", cf_testkit_dir(kit),
                           NULL };
    assert_true(cf_testkit_run(kit, argv, S_RUN_MS, &output));
    assert_int_equal(output.exit_code, 2);
    s_expect_in(output.err, "cf-broker: --admin-keys needs --curve-secret", &output);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_status_json_and_metrics_show_the_work_done,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_workers_and_clients_list_each_peer, cf_testkit_setup,
                                        cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(
            test_a_silent_broker_fails_within_the_timeout_naming_the_endpoint, cf_testkit_setup,
            cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_watch_redraws_until_interrupted, cf_testkit_setup,
                                        cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_under_curve_stats_needs_an_admin_key, cf_testkit_setup,
                                        cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_an_admin_key_cannot_submit, cf_testkit_setup,
                                        cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_the_admin_list_reloads_on_sighup, cf_testkit_setup,
                                        cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_a_plaintext_broker_answers_stats_from_anyone,
                                        cf_testkit_setup, cf_testkit_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

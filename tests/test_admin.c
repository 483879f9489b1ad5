//  SPDX-License-Identifier: MIT
//
//  cf-admin against real brokers: the counters it shows follow the work
//  done (five tasks submitted and completed show as five, in the status
//  screen, the JSON and the Prometheus metrics), `workers` and `clients`
//  say plainly that a cf/1 broker does not report per-peer detail, --watch
//  redraws until Ctrl-C, a broker that does not answer fails within the
//  timeout with the endpoint named, and a CURVE broker answers cf-admin
//  with an allowed key and nobody else.

#include "cf_testkit.h"

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

    s_admin(kit, (const char *[]){ "--json", "--broker", clients, NULL }, &output);
    assert_int_equal(output.exit_code, 0);
    s_expect_in(output.out, "\"submitted\": 5,", &output);
    s_expect_in(output.out, "\"completed\": 5,", &output);
    s_expect_in(output.out, "\"workers\": 1,", &output);
    s_expect_in(output.out, "\"failed\": 0,", &output);
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

static void test_a_curve_broker_answers_an_allowed_key_only(void **state)
{
    cf_testkit_t *kit = *state;
    if (!zmq_has("curve"))
        skip();
    assert_int_equal(mkdir(cf_testkit_path(kit, "clients"), 0755), 0);
    const char *broker_key = s_keygen(kit, "broker");
    const char *alice = s_keygen(kit, "clients/alice");
    const char *mallory = s_keygen(kit, "mallory");
    char broker_secret[4096], broker_public[4096], alice_secret[4096], mallory_secret[4096];
    snprintf(broker_secret, sizeof broker_secret, "%s.key_secret", broker_key);
    snprintf(broker_public, sizeof broker_public, "%s.key", broker_key);
    snprintf(alice_secret, sizeof alice_secret, "%s.key_secret", alice);
    snprintf(mallory_secret, sizeof mallory_secret, "%s.key_secret", mallory);
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, "--curve-secret", broker_secret,
                                                        "--client-keys",
                                                        cf_testkit_path(kit, "clients"), NULL);
    const char *clients = cf_testkit_clients(broker);
    cf_testkit_output_t output;
    s_admin(kit,
            (const char *[]){ "-b", clients, "--broker-key", broker_public, "--key", alice_secret,
                              "--json", NULL },
            &output);
    if (output.exit_code != 0)
        fail_msg("alice: exit %d\n%s%s", output.exit_code, output.out, output.err);
    s_expect_in(output.out, "\"clients\": 0,", &output);
    //  A key not on the list, and no key at all: refused at the handshake,
    //  said at once (well within the long timeout), with the endpoint.
    char refused[512], plaintext[512];
    snprintf(refused, sizeof refused, "cf-admin: the broker at %s refused the key ", clients);
    snprintf(plaintext, sizeof plaintext,
             "cf-admin: the broker at %s requires CURVE: give "
             "--broker-key and --key",
             clients);
    int64_t start_ms = cf_testkit_now_ms();
    s_admin(kit,
            (const char *[]){ "-b", clients, "--broker-key", broker_public, "--key", mallory_secret,
                              "-t", "60000", NULL },
            &output);
    assert_int_equal(output.exit_code, 1);
    s_expect_in(output.err, refused, &output);
    s_admin(kit, (const char *[]){ "-b", clients, "-t", "60000", NULL }, &output);
    assert_int_equal(output.exit_code, 1);
    s_expect_in(output.err, plaintext, &output);
    assert_true(cf_testkit_now_ms() - start_ms < 50000);
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
        cmocka_unit_test_setup_teardown(test_a_curve_broker_answers_an_allowed_key_only,
                                        cf_testkit_setup, cf_testkit_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

//  The daemons' command lines: --help, bad flags, a port already taken, and
//  clean exits on SIGTERM / SIGINT. What a user meets first, so each case
//  checks the exit status and that the message says something.

#include "cf_testkit.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define S_RUN_MS 30000

//  Runs a daemon with args to completion.
static void s_run(cf_testkit_t *kit, const char *bin_env, const char *const *args,
                  cf_testkit_output_t *output)
{
    const char *argv[16];
    size_t n = 0;
    argv[n++] = cf_testkit_env(bin_env);
    for (size_t i = 0; args[i]; i++) {
        assert_true(n < 15);
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    assert_true(cf_testkit_run(kit, argv, S_RUN_MS, output));
    assert_true(output->exited);
}

//  A refusal: a non-zero exit (not a crash), no ready line, and a message.
static void s_expect_refusal(cf_testkit_t *kit, const char *bin_env, const char *const *args)
{
    cf_testkit_output_t output;
    s_run(kit, bin_env, args, &output);
    if (output.exit_code == 0 || output.exit_code > 125 || !strncmp(output.out, "ready", 5)
        || strstr(output.out, "\nready") || output.err[0] == '\0') {
        fprintf(stderr, "%s %s: exit %d\nstdout: %s\nstderr: %s\n", bin_env, args[0],
                output.exit_code, output.out, output.err);
        fail_msg("expected a refusal with a message");
    }
}

static void test_broker_help_lists_its_flags_and_exits_zero(void **state)
{
    cf_testkit_output_t output;
    s_run(*state, "CF_BROKER_BIN", (const char *[]){"--help", NULL}, &output);
    assert_int_equal(output.exit_code, 0);
    //  Help may go to stdout or stderr; it must name every flag.
    static const char *const flags[] = {"--clients", "--workers", "--heartbeat-ms", "--liveness",
                                        "--max-queued", "--verbose", "--help"};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        if (!strstr(output.out, flags[i]) && !strstr(output.err, flags[i]))
            fail_msg("cf-broker --help does not mention %s:\n%s%s", flags[i], output.out,
                     output.err);
    }
}

static void test_worker_help_lists_its_flags_and_exits_zero(void **state)
{
    cf_testkit_output_t output;
    s_run(*state, "CF_WORKER_BIN", (const char *[]){"--help", NULL}, &output);
    assert_int_equal(output.exit_code, 0);
    static const char *const flags[] = {"--broker", "--tasks", "--threads", "--procs",
                                        "--heartbeat-ms", "--liveness", "--max-tasks",
                                        "--verbose", "--help"};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        if (!strstr(output.out, flags[i]) && !strstr(output.err, flags[i]))
            fail_msg("cf-worker --help does not mention %s:\n%s%s", flags[i], output.out,
                     output.err);
    }
}

static void test_broker_refuses_an_unknown_flag(void **state)
{
    s_expect_refusal(*state, "CF_BROKER_BIN", (const char *[]){"--bogus", NULL});
}

static void test_broker_refuses_bad_numbers(void **state)
{
    s_expect_refusal(*state, "CF_BROKER_BIN",
                     (const char *[]){"--heartbeat-ms", "abc", "--clients", "tcp://127.0.0.1:*",
                                      "--workers", "tcp://127.0.0.1:*", NULL});
    s_expect_refusal(*state, "CF_BROKER_BIN",
                     (const char *[]){"--heartbeat-ms", "-5", "--clients", "tcp://127.0.0.1:*",
                                      "--workers", "tcp://127.0.0.1:*", NULL});
    s_expect_refusal(*state, "CF_BROKER_BIN",
                     (const char *[]){"--liveness", "12x", "--clients", "tcp://127.0.0.1:*",
                                      "--workers", "tcp://127.0.0.1:*", NULL});
    s_expect_refusal(*state, "CF_BROKER_BIN",
                     (const char *[]){"--max-queued", "99999999999999999999999", "--clients",
                                      "tcp://127.0.0.1:*", "--workers", "tcp://127.0.0.1:*",
                                      NULL});
}

static void test_broker_refuses_a_flag_without_its_value(void **state)
{
    s_expect_refusal(*state, "CF_BROKER_BIN",
                     (const char *[]){"--workers", "tcp://127.0.0.1:*", "--clients", NULL});
}

static void test_broker_refuses_a_malformed_endpoint(void **state)
{
    s_expect_refusal(*state, "CF_BROKER_BIN",
                     (const char *[]){"--clients", "not-an-endpoint", "--workers",
                                      "tcp://127.0.0.1:*", NULL});
}

static void test_broker_refuses_a_port_already_taken(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *first = cf_testkit_start_broker(kit, NULL);
    s_expect_refusal(kit, "CF_BROKER_BIN",
                     (const char *[]){"--clients", cf_testkit_clients(first), "--workers",
                                      "tcp://127.0.0.1:*", NULL});
    //  The first one is unharmed.
    assert_true(cf_testkit_alive(first));
}

static void test_broker_exits_zero_on_sigterm_and_sigint(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    int status = cf_testkit_stop(broker, CF_TESTKIT_STOP_MS);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);

    broker = cf_testkit_start_broker(kit, NULL);
    assert_true(cf_testkit_signal(broker, SIGINT));
    assert_true(cf_testkit_wait_exit(broker, CF_TESTKIT_STOP_MS, &status));
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_broker_ready_line_reports_both_endpoints(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    //  Resolved loopback ports, distinct.
    assert_non_null(strstr(cf_testkit_clients(broker), "tcp://127.0.0.1:"));
    assert_non_null(strstr(cf_testkit_workers(broker), "tcp://127.0.0.1:"));
    assert_string_not_equal(cf_testkit_clients(broker), cf_testkit_workers(broker));
}

static void test_worker_refuses_an_unknown_flag(void **state)
{
    s_expect_refusal(*state, "CF_WORKER_BIN", (const char *[]){"--frobnicate", NULL});
}

static void test_worker_refuses_a_missing_task_library(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    s_expect_refusal(kit, "CF_WORKER_BIN",
                     (const char *[]){"--broker", cf_testkit_workers(broker), "--tasks",
                                      cf_testkit_path(kit, "no-such-library.so"), NULL});
}

static void test_worker_refuses_bad_counts(void **state)
{
    cf_testkit_t *kit = *state;
    const char *tasks = cf_testkit_env("CF_TASKS_LIB");
    s_expect_refusal(kit, "CF_WORKER_BIN",
                     (const char *[]){"--tasks", tasks, "--threads", "0", NULL});
    s_expect_refusal(kit, "CF_WORKER_BIN",
                     (const char *[]){"--tasks", tasks, "--threads", "many", NULL});
    s_expect_refusal(kit, "CF_WORKER_BIN",
                     (const char *[]){"--tasks", tasks, "--procs", "-1", NULL});
}

static void test_worker_exits_zero_on_sigterm(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    cf_testkit_proc_t *worker = cf_testkit_start_worker(kit, cf_testkit_workers(broker),
                                                        "--threads", "2", NULL);
    const char *threads = cf_testkit_field(worker, "threads");
    assert_non_null(threads);
    assert_string_equal(threads, "2");
    int status = cf_testkit_stop(worker, CF_TESTKIT_STOP_MS);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_worker_with_processes_exits_zero_on_sigterm(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    cf_testkit_proc_t *worker = cf_testkit_start_worker(kit, cf_testkit_workers(broker),
                                                        "--procs", "2", NULL);
    const char *procs = cf_testkit_field(worker, "procs");
    assert_non_null(procs);
    assert_string_equal(procs, "2");
    int status = cf_testkit_stop(worker, CF_TESTKIT_STOP_MS);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_broker_help_lists_its_flags_and_exits_zero,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_worker_help_lists_its_flags_and_exits_zero,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_broker_refuses_an_unknown_flag,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_broker_refuses_bad_numbers,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_broker_refuses_a_flag_without_its_value,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_broker_refuses_a_malformed_endpoint,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_broker_refuses_a_port_already_taken,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_broker_exits_zero_on_sigterm_and_sigint,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_broker_ready_line_reports_both_endpoints,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_worker_refuses_an_unknown_flag,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_worker_refuses_a_missing_task_library,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_worker_refuses_bad_counts,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_worker_exits_zero_on_sigterm,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_worker_with_processes_exits_zero_on_sigterm,
                                        cf_testkit_setup, cf_testkit_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

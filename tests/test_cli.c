//  SPDX-License-Identifier: MIT
//
//  The programs' command lines: --help and --version on every tool, bad
//  flags, a port already taken, key files open to others, clean exits on
//  SIGTERM / SIGINT, and the broker's stats line on SIGUSR1 and every
//  --stats-interval. What a user meets first, so each case checks the exact
//  exit status of the convention every tool follows (0 ok, 1 failure, 2
//  usage error) and that the message is one line that says something.

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

#define S_EXIT_FAILURE 1
#define S_EXIT_USAGE   2

//  A refusal: exit status code (not a crash), no ready line, and a message
//  of one line on stderr. Returns that line (owned by the kit's output).
static const char *s_expect_refusal_code(cf_testkit_t *kit, const char *bin_env,
                                         const char *const *args, int code)
{
    cf_testkit_output_t output;
    s_run(kit, bin_env, args, &output);
    const char *newline = strchr(output.err, '\n');
    if (output.exit_code != code || !strncmp(output.out, "ready", 5)
        || strstr(output.out, "\nready") || output.err[0] == '\0' || !newline
        || newline[1] != '\0') {
        fprintf(stderr, "%s %s: exit %d (expected %d)\nstdout: %s\nstderr: %s\n", bin_env, args[0],
                output.exit_code, code, output.out, output.err);
        fail_msg("expected a refusal with exit status %d and a one-line message", code);
    }
    return output.err;
}

//  A usage error: exit status 2.
static void s_expect_refusal(cf_testkit_t *kit, const char *bin_env, const char *const *args)
{
    s_expect_refusal_code(kit, bin_env, args, S_EXIT_USAGE);
}

static void test_broker_help_lists_its_flags_and_exits_zero(void **state)
{
    cf_testkit_output_t output;
    s_run(*state, "CF_BROKER_BIN", (const char *[]){ "--help", NULL }, &output);
    assert_int_equal(output.exit_code, 0);
    //  Help may go to stdout or stderr; it must name every flag.
    static const char *const flags[] = { "--clients",  "--workers",    "--heartbeat-ms",
                                         "--liveness", "--max-queued", "--verbose",
                                         "--help" };
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        if (!strstr(output.out, flags[i]) && !strstr(output.err, flags[i]))
            fail_msg("cf-broker --help does not mention %s:\n%s%s", flags[i], output.out,
                     output.err);
    }
}

static void test_worker_help_lists_its_flags_and_exits_zero(void **state)
{
    cf_testkit_output_t output;
    s_run(*state, "CF_WORKER_BIN", (const char *[]){ "--help", NULL }, &output);
    assert_int_equal(output.exit_code, 0);
    static const char *const flags[] = { "--broker",    "--tasks",        "--threads",
                                         "--procs",     "--heartbeat-ms", "--liveness",
                                         "--max-tasks", "--verbose",      "--help" };
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        if (!strstr(output.out, flags[i]) && !strstr(output.err, flags[i]))
            fail_msg("cf-worker --help does not mention %s:\n%s%s", flags[i], output.out,
                     output.err);
    }
}

static void test_broker_refuses_an_unknown_flag(void **state)
{
    s_expect_refusal(*state, "CF_BROKER_BIN", (const char *[]){ "--bogus", NULL });
}

static void test_broker_refuses_bad_numbers(void **state)
{
    s_expect_refusal(*state, "CF_BROKER_BIN",
                     (const char *[]){ "--heartbeat-ms", "abc", "--clients", "tcp://127.0.0.1:*",
                                       "--workers", "tcp://127.0.0.1:*", NULL });
    s_expect_refusal(*state, "CF_BROKER_BIN",
                     (const char *[]){ "--heartbeat-ms", "-5", "--clients", "tcp://127.0.0.1:*",
                                       "--workers", "tcp://127.0.0.1:*", NULL });
    s_expect_refusal(*state, "CF_BROKER_BIN",
                     (const char *[]){ "--liveness", "12x", "--clients", "tcp://127.0.0.1:*",
                                       "--workers", "tcp://127.0.0.1:*", NULL });
    s_expect_refusal(*state, "CF_BROKER_BIN",
                     (const char *[]){ "--max-queued", "99999999999999999999999", "--clients",
                                       "tcp://127.0.0.1:*", "--workers", "tcp://127.0.0.1:*",
                                       NULL });
}

static void test_broker_refuses_a_flag_without_its_value(void **state)
{
    s_expect_refusal(*state, "CF_BROKER_BIN",
                     (const char *[]){ "--workers", "tcp://127.0.0.1:*", "--clients", NULL });
}

static void test_broker_refuses_a_malformed_endpoint(void **state)
{
    s_expect_refusal(
        *state, "CF_BROKER_BIN",
        (const char *[]){ "--clients", "not-an-endpoint", "--workers", "tcp://127.0.0.1:*", NULL });
}

static void test_broker_refuses_a_port_already_taken(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *first = cf_testkit_start_broker(kit, NULL);
    s_expect_refusal_code(kit, "CF_BROKER_BIN",
                          (const char *[]){ "--clients", cf_testkit_clients(first), "--workers",
                                            "tcp://127.0.0.1:*", NULL },
                          S_EXIT_FAILURE);
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
    s_expect_refusal(*state, "CF_WORKER_BIN", (const char *[]){ "--frobnicate", NULL });
}

static void test_worker_refuses_a_missing_task_library(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    s_expect_refusal_code(kit, "CF_WORKER_BIN",
                          (const char *[]){ "--broker", cf_testkit_workers(broker), "--tasks",
                                            cf_testkit_path(kit, "no-such-library.so"), NULL },
                          S_EXIT_FAILURE);
}

static void test_worker_refuses_bad_counts(void **state)
{
    cf_testkit_t *kit = *state;
    const char *tasks = cf_testkit_env("CF_TASKS_LIB");
    s_expect_refusal(kit, "CF_WORKER_BIN",
                     (const char *[]){ "--tasks", tasks, "--threads", "0", NULL });
    s_expect_refusal(kit, "CF_WORKER_BIN",
                     (const char *[]){ "--tasks", tasks, "--threads", "many", NULL });
    s_expect_refusal(kit, "CF_WORKER_BIN",
                     (const char *[]){ "--tasks", tasks, "--procs", "-1", NULL });
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
    cf_testkit_proc_t *worker = cf_testkit_start_worker(kit, cf_testkit_workers(broker), "--procs",
                                                        "2", NULL);
    const char *procs = cf_testkit_field(worker, "procs");
    assert_non_null(procs);
    assert_string_equal(procs, "2");
    int status = cf_testkit_stop(worker, CF_TESTKIT_STOP_MS);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

// ---------------------------------------------------------------------------
//  Every tool: help, version, the exit-code convention

static const char *const s_tools[] = { "CF_BROKER_BIN", "CF_WORKER_BIN", "CF_KEYGEN_BIN",
                                       "CF_ADMIN_BIN" };
#define S_TOOLS (sizeof s_tools / sizeof s_tools[0])

static void test_every_tool_answers_help_and_version(void **state)
{
    cf_testkit_t *kit = *state;
    for (size_t t = 0; t < S_TOOLS; t++) {
        const char *path = cf_testkit_env(s_tools[t]);
        const char *name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
        static const char *const helps[] = { "-h", "--help" };
        for (size_t h = 0; h < 2; h++) {
            cf_testkit_output_t output;
            s_run(kit, s_tools[t], (const char *[]){ helps[h], NULL }, &output);
            if (output.exit_code != 0 || strncmp(output.out, "Usage: ", 7) != 0
                || !strstr(output.out, "--version") || !strstr(output.out, "Exit status"))
                fail_msg("%s %s: exit %d\n%s%s", name, helps[h], output.exit_code, output.out,
                         output.err);
        }
        cf_testkit_output_t output;
        s_run(kit, s_tools[t], (const char *[]){ "--version", NULL }, &output);
        char expected[128];
        //  The header's version, and the library's: one and the same.
        snprintf(expected, sizeof expected, "%s (cfutures) %s\n", name, CF_VERSION_STRING);
        assert_int_equal(output.exit_code, 0);
        assert_string_equal(output.out, expected);
        assert_string_equal(cf_version(NULL, NULL, NULL), CF_VERSION_STRING);
    }
}

static void test_every_tool_refuses_an_unknown_flag_with_status_2(void **state)
{
    for (size_t t = 0; t < S_TOOLS; t++) {
        const char *line = s_expect_refusal_code(
            *state, s_tools[t], (const char *[]){ "--frobnicate", NULL }, S_EXIT_USAGE);
        if (!strstr(line, "--frobnicate"))
            fail_msg("%s does not name the unknown flag: %s", s_tools[t], line);
    }
}

static void test_every_tool_refuses_a_missing_value_with_status_2(void **state)
{
    static const struct {
        const char *tool, *flag;
    } cases[] = {
        { "CF_BROKER_BIN", "--clients" }, { "CF_BROKER_BIN", "--stats-interval" },
        { "CF_WORKER_BIN", "--broker" },  { "CF_WORKER_BIN", "--key" },
        { "CF_ADMIN_BIN", "--broker" },   { "CF_ADMIN_BIN", "--timeout" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *line = s_expect_refusal_code(
            *state, cases[i].tool, (const char *[]){ cases[i].flag, NULL }, S_EXIT_USAGE);
        if (!strstr(line, cases[i].flag) || !strstr(line, "needs a value"))
            fail_msg("%s %s: %s", cases[i].tool, cases[i].flag, line);
    }
    //  cf-keygen's one argument.
    s_expect_refusal_code(*state, "CF_KEYGEN_BIN", (const char *[]){ NULL }, S_EXIT_USAGE);
}

static void test_malformed_endpoints_are_usage_errors(void **state)
{
    static const struct {
        const char *tool, *flag, *endpoint;
    } cases[] = {
        { "CF_BROKER_BIN", "--clients", "tcp://127.0.0.1:port" },
        { "CF_BROKER_BIN", "--workers", "tcp://:5556" },
        { "CF_BROKER_BIN", "--workers", "127.0.0.1:5556" },
        { "CF_BROKER_BIN", "--clients", "tcp://127.0.0.1:70000" },
        { "CF_WORKER_BIN", "--broker", "localhost:5556" },
        { "CF_WORKER_BIN", "--broker", "tcp://127.0.0.1:*" },
        { "CF_ADMIN_BIN", "--broker", "127.0.0.1:5555" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *line = s_expect_refusal_code(
            *state, cases[i].tool, (const char *[]){ cases[i].flag, cases[i].endpoint, NULL },
            S_EXIT_USAGE);
        if (!strstr(line, cases[i].endpoint) || !strstr(line, cases[i].flag))
            fail_msg("%s %s %s: the message names neither: %s", cases[i].tool, cases[i].flag,
                     cases[i].endpoint, line);
    }
}

// ---------------------------------------------------------------------------
//  Key files open to others

static void test_secret_key_files_open_to_others_are_refused_with_the_fix(void **state)
{
    cf_testkit_t *kit = *state;
    if (!zmq_has("curve"))
        skip();
    const char *name = cf_testkit_path(kit, "loose");
    cf_testkit_output_t output;
    s_run(kit, "CF_KEYGEN_BIN", (const char *[]){ name, NULL }, &output);
    assert_int_equal(output.exit_code, 0);
    char secret[4096], public[4096];
    snprintf(secret, sizeof secret, "%s.key_secret", name);
    snprintf(public, sizeof public, "%s.key", name);
    assert_int_equal(chmod(secret, 0640), 0);
    const char *broker_line = s_expect_refusal_code(
        kit, "CF_BROKER_BIN",
        (const char *[]){ "--clients", "tcp://127.0.0.1:*", "--workers", "tcp://127.0.0.1:*",
                          "--curve-secret", secret, "--client-keys", public, NULL },
        S_EXIT_FAILURE);
    const char *worker_line = s_expect_refusal_code(
        kit, "CF_WORKER_BIN",
        (const char *[]){ "--tasks", cf_testkit_env("CF_TASKS_LIB"), "--broker-key", public,
                          "--key", secret, NULL },
        S_EXIT_FAILURE);
    const char *admin_line = s_expect_refusal_code(
        kit, "CF_ADMIN_BIN", (const char *[]){ "--broker-key", public, "--key", secret, NULL },
        S_EXIT_FAILURE);
    char fix[4200];
    snprintf(fix, sizeof fix, "chmod 600 %s", secret);
    const char *lines[] = { broker_line, worker_line, admin_line };
    for (size_t i = 0; i < 3; i++)
        if (!strstr(lines[i], fix))
            fail_msg("no '%s' in: %s", fix, lines[i]);
}

// ---------------------------------------------------------------------------
//  The broker's stats line

typedef struct {
    cf_testkit_proc_t *proc;
    const char *needle;
    size_t count;    //  at least this many
} s_log_wait_t;

static bool s_log_has(void *arg)
{
    s_log_wait_t *wait = arg;
    char *log = cf_testkit_log(wait->proc);
    bool enough = log && cf_testkit_count(log, wait->needle) >= wait->count;
    free(log);
    return enough;
}

static void s_expect_log(cf_testkit_t *kit, cf_testkit_proc_t *proc, const char *needle,
                         size_t count)
{
    s_log_wait_t wait = { proc, needle, count };
    if (!cf_testkit_wait_until(s_log_has, &wait, CF_TESTKIT_DEADLINE_MS)) {
        cf_testkit_dump_logs(kit);
        fail_msg("%s: fewer than %zu '%s' lines", cf_testkit_label(proc), count, needle);
    }
}

static void test_broker_logs_stats_on_sigusr1_and_keeps_running(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    cf_testkit_start_worker(kit, cf_testkit_workers(broker), "--threads", "1", NULL);
    uint64_t workers = 0;
    while (workers < 1)
        assert_true(cf_testkit_broker_stat(cf_testkit_clients(broker), "workers",
                                           CF_TESTKIT_DEADLINE_MS, &workers));
    assert_true(cf_testkit_signal(broker, SIGUSR1));
    s_expect_log(kit, broker, "I: broker: stats uptime_s=", 1);
    assert_true(cf_testkit_signal(broker, SIGUSR1));
    s_expect_log(kit, broker, "I: broker: stats uptime_s=", 2);
    assert_true(cf_testkit_alive(broker));
    char *log = cf_testkit_log(broker);
    char *line = cf_testkit_line_with(log, "broker: stats ");
    free(log);
    assert_non_null(line);
    static const char *const fields[] = {
        " clients=0 ", " workers=1 ", " queued=0 ",     " running=0 ", " submitted=",
        " completed=", " failed=",    " lost_workers=", " busy=",      " refused="
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (!strstr(line, fields[i]))
            fail_msg("no '%s' in the stats line: %s", fields[i], line);
    free(line);
    int status = cf_testkit_stop(broker, CF_TESTKIT_STOP_MS);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_broker_logs_stats_every_interval(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, "--stats-interval", "1", NULL);
    int64_t start_ms = cf_testkit_now_ms();
    s_expect_log(kit, broker, "I: broker: stats uptime_s=", 2);
    //  Two lines a second apart: not before a second has passed.
    assert_true(cf_testkit_now_ms() - start_ms >= 1000);
    s_expect_refusal(kit, "CF_BROKER_BIN", (const char *[]){ "--stats-interval", "0", NULL });
    s_expect_refusal(kit, "CF_BROKER_BIN", (const char *[]){ "--stats-interval", "1s", NULL });
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_broker_help_lists_its_flags_and_exits_zero,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_worker_help_lists_its_flags_and_exits_zero,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_broker_refuses_an_unknown_flag, cf_testkit_setup,
                                        cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_broker_refuses_bad_numbers, cf_testkit_setup,
                                        cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_broker_refuses_a_flag_without_its_value,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_broker_refuses_a_malformed_endpoint, cf_testkit_setup,
                                        cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_broker_refuses_a_port_already_taken, cf_testkit_setup,
                                        cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_broker_exits_zero_on_sigterm_and_sigint,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_broker_ready_line_reports_both_endpoints,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_worker_refuses_an_unknown_flag, cf_testkit_setup,
                                        cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_worker_refuses_a_missing_task_library,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_worker_refuses_bad_counts, cf_testkit_setup,
                                        cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_worker_exits_zero_on_sigterm, cf_testkit_setup,
                                        cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_worker_with_processes_exits_zero_on_sigterm,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_every_tool_answers_help_and_version, cf_testkit_setup,
                                        cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_every_tool_refuses_an_unknown_flag_with_status_2,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_every_tool_refuses_a_missing_value_with_status_2,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_malformed_endpoints_are_usage_errors, cf_testkit_setup,
                                        cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(
            test_secret_key_files_open_to_others_are_refused_with_the_fix, cf_testkit_setup,
            cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_broker_logs_stats_on_sigusr1_and_keeps_running,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_broker_logs_stats_every_interval, cf_testkit_setup,
                                        cf_testkit_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

//  One cf-worker serving two cf-brokers at once (issue 11, the worker
//  side): real processes on loopback. The worker's slots are shared:
//  it never holds more than its limit (threads + prefetch allowance), which
//  its own counters show in the line it logs on exit; both brokers'
//  clients get their tasks done while one of them floods its broker; a
//  broker killed and started again on the same port is used again without
//  restarting the worker; worker processes (--procs) serve both brokers.

#include "cf_testkit.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_HEARTBEAT "200"

//  What the worker's exit line says: "held at most H tasks (limit L);
//  taken: EP1 N1, EP2 N2".
typedef struct {
    uint64_t max_held, limit;
    char endpoint[2][128];
    uint64_t taken[2];
} s_counters_t;

//  Reads the exit line from a stopped worker's log; fails the test when it
//  is not there.
static s_counters_t s_exit_line(cf_testkit_t *kit, cf_testkit_proc_t *worker)
{
    char *log = cf_testkit_log(worker);
    assert_non_null(log);
    const char *line = strstr(log, "held at most ");
    if (!line) {
        cf_testkit_dump_logs(kit);
        free(log);
        fail_msg("the worker logged no counters on exit");
    }
    s_counters_t c;
    memset(&c, 0, sizeof c);
    int got = sscanf(line,
                     "held at most %" SCNu64 " tasks (limit %" SCNu64 "); taken: %127s %" SCNu64
                     ", %127s %" SCNu64,
                     &c.max_held, &c.limit, c.endpoint[0], &c.taken[0], c.endpoint[1], &c.taken[1]);
    if (got != 6) {
        const char *end = strchr(line, '\n');
        fail_msg("cannot read the counters line (%d fields): %.*s", got,
                 (int)(end ? end - line : 200), line);
    }
    free(log);
    return c;
}

static void s_expect_all(cf_testkit_t *kit, cf_future_t **fs, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        cf_testkit_expect_done(kit, fs[i]);
        const cf_value_t *value = NULL;
        if (cf_future_result(fs[i], 0, &value) != CF_OK) {
            const cf_task_error_t *error = cf_future_error(fs[i]);
            fail_msg("task %zu failed: %s: %s", i, error ? error->type : "?",
                     error ? error->message : "?");
        }
        cf_future_release(&fs[i]);
    }
}

//  "A,B": the worker's --broker value for both brokers.
static const char *s_both(cf_testkit_proc_t *a, cf_testkit_proc_t *b, char *buf, size_t size)
{
    snprintf(buf, size, "%s,%s", cf_testkit_workers(a), cf_testkit_workers(b));
    return buf;
}

//  Two brokers, one cf-worker serving both (started with flag value), and a
//  client of each.
typedef struct {
    cf_testkit_proc_t *a, *b, *worker;
    cf_executor_t *ea, *eb;
} s_two_t;

static s_two_t s_two_brokers(cf_testkit_t *kit, const char *flag, const char *value)
{
    s_two_t two;
    two.a = cf_testkit_start_broker(kit, NULL);
    two.b = cf_testkit_start_broker(kit, NULL);
    char both[512];
    two.worker = cf_testkit_start_worker(kit, s_both(two.a, two.b, both, sizeof both), flag, value,
                                         NULL);
    two.ea = cf_testkit_connect(cf_testkit_clients(two.a), 0);
    two.eb = cf_testkit_connect(cf_testkit_clients(two.b), 0);
    return two;
}

//  A client floods broker A with short tasks and a few long ones while a
//  client of broker B submits too: both finish, the worker held at most
//  its limit at any moment, and it took tasks from both brokers.
static void test_a_worker_shared_by_two_brokers_serves_both_within_its_limit(void **state)
{
    cf_testkit_t *kit = *state;
    s_two_t two = s_two_brokers(kit, "--threads", "2");
    cf_executor_t *flood = two.ea, *other = two.eb;
    enum { SHORT = 600, LONG = 4, OTHER = 60 };
    static cf_future_t *fa[SHORT + LONG], *fb[OTHER];
    for (int i = 0; i < SHORT + LONG; i++) {
        fa[i] = i % (SHORT / LONG) == 0 && i / (SHORT / LONG) < LONG
                    ? cf_submit(flood, "sleep_ms", "i", 150)
                    : cf_submit(flood, "square", "i", i);
        assert_non_null(fa[i]);
    }
    for (int i = 0; i < OTHER; i++) {
        fb[i] = cf_submit(other, "sleep_ms", "i", 1);
        assert_non_null(fb[i]);
    }
    s_expect_all(kit, fb, OTHER);
    s_expect_all(kit, fa, SHORT + LONG);
    cf_executor_destroy(&flood);
    cf_executor_destroy(&other);

    assert_int_equal(WEXITSTATUS(cf_testkit_stop(two.worker, CF_TESTKIT_STOP_MS)), 0);
    s_counters_t c = s_exit_line(kit, two.worker);
    assert_int_equal(c.limit, 4);    //  2 threads + an allowance of 2
    if (c.max_held > c.limit)
        fail_msg("the worker held %" PRIu64 " tasks at once, over its limit %" PRIu64, c.max_held,
                 c.limit);
    assert_string_equal(c.endpoint[0], cf_testkit_workers(two.a));
    assert_string_equal(c.endpoint[1], cf_testkit_workers(two.b));
    assert_true(c.taken[0] >= SHORT + LONG);
    assert_true(c.taken[1] >= OTHER);
}

static bool s_log_has(void *arg)
{
    void **args = arg;
    char *log = cf_testkit_log(args[0]);
    bool has = log && strstr(log, (const char *)args[1]);
    free(log);
    return has;
}

//  Broker A holds a long queue of 50 ms tasks when broker B's client asks
//  for a few: B's tasks get every other slot the worker frees, so they are
//  all done while A still has most of its queue (without the rotation a
//  busy broker keeps the slots its results free, and B waits for all of
//  A's). An order of events, not a speed: A's queue is 8 times B's.
static void test_a_flooded_broker_does_not_starve_the_other(void **state)
{
    cf_testkit_t *kit = *state;
    s_two_t two = s_two_brokers(kit, "--threads", "2");
    enum { A = 40, B = 5 };
    cf_future_t *fa[A], *fb[B];
    for (int i = 0; i < A; i++)
        fa[i] = cf_submit(two.ea, "sleep_ms", "i", 50);
    //  A's tasks run before B asks.
    cf_testkit_expect_done(kit, fa[0]);
    for (int i = 0; i < B; i++)
        fb[i] = cf_submit(two.eb, "sleep_ms", "i", 50);
    for (int i = 0; i < B; i++)
        cf_testkit_expect_done(kit, fb[i]);
    int a_done = 0;
    for (int i = 0; i < A; i++)
        a_done += cf_future_done(fa[i]);
    if (a_done > A / 2)
        fail_msg("%d of broker A's %d tasks were done before broker B's %d", a_done, A, B);
    s_expect_all(kit, fb, B);
    s_expect_all(kit, fa, A);
    cf_executor_destroy(&two.ea);
    cf_executor_destroy(&two.eb);
}

//  Broker A killed (SIGKILL) and started again on the same ports: the same
//  worker process, never restarted, runs A's new client's tasks, and B's
//  client is served all along.
static void test_a_broker_that_comes_back_is_used_again(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *a = cf_testkit_start_broker(kit, "--heartbeat-ms", S_HEARTBEAT, NULL);
    cf_testkit_proc_t *b = cf_testkit_start_broker(kit, "--heartbeat-ms", S_HEARTBEAT, NULL);
    char both[512], a_clients[256], a_workers[256];
    snprintf(a_clients, sizeof a_clients, "%s", cf_testkit_clients(a));
    snprintf(a_workers, sizeof a_workers, "%s", cf_testkit_workers(a));
    cf_testkit_proc_t *worker = cf_testkit_start_worker(kit, s_both(a, b, both, sizeof both),
                                                        "--threads", "2", "--heartbeat-ms",
                                                        S_HEARTBEAT, NULL);
    int64_t pid = cf_testkit_pid(worker);

    cf_executor_t *ea = cf_testkit_connect(a_clients, 0);
    cf_future_t *f = cf_submit(ea, "sleep_pid", "i", 1);
    cf_testkit_expect_int(kit, f, pid);
    cf_future_release(&f);
    cf_executor_destroy(&ea);

    cf_testkit_kill(a);
    cf_executor_t *eb = cf_testkit_connect(cf_testkit_clients(b), 0);
    enum { N = 20 };
    cf_future_t *fs[N];
    for (int i = 0; i < N; i++)
        fs[i] = cf_submit(eb, "sleep_pid", "i", 5);
    //  B is served while A is away.
    for (int i = 0; i < N; i++) {
        cf_testkit_expect_int(kit, fs[i], pid);
        cf_future_release(&fs[i]);
    }

    cf_testkit_proc_t *again = cf_testkit_start_broker(
        kit, "--heartbeat-ms", S_HEARTBEAT, "--clients", a_clients, "--workers", a_workers, NULL);
    void *joined[2] = { again, "shared)" };
    if (!cf_testkit_wait_until(s_log_has, joined, CF_TESTKIT_DEADLINE_MS)) {
        cf_testkit_dump_logs(kit);
        fail_msg("the worker never joined the restarted broker");
    }
    ea = cf_testkit_connect(a_clients, 0);
    for (int i = 0; i < N; i++)
        fs[i] = cf_submit(i % 2 ? ea : eb, "sleep_pid", "i", 5);
    for (int i = 0; i < N; i++) {
        cf_testkit_expect_int(kit, fs[i], pid);
        cf_future_release(&fs[i]);
    }
    cf_executor_destroy(&ea);
    cf_executor_destroy(&eb);
    assert_true(cf_testkit_alive(worker));
    assert_int_equal(WEXITSTATUS(cf_testkit_stop(worker, CF_TESTKIT_STOP_MS)), 0);
    s_counters_t c = s_exit_line(kit, worker);
    assert_true(c.max_held <= c.limit);
    assert_true(c.taken[0] >= 1 + N / 2);
    assert_true(c.taken[1] >= N + N / 2);
}

//  A bad endpoint in a list is refused, named.
static void test_a_bad_broker_in_a_list_is_named(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_output_t out;
    const char *const bad[] = { cf_testkit_env("CF_WORKER_BIN"),     "--tasks",
                                cf_testkit_env("CF_TASKS_LIB"),      "--broker",
                                "tcp://127.0.0.1:5556,tcp://nohost", NULL };
    assert_true(cf_testkit_run(kit, bad, CF_TESTKIT_DEADLINE_MS, &out));
    assert_int_equal(out.exit_code, 2);
    assert_non_null(strstr(out.err, "'tcp://nohost'"));
}

//  --procs: every worker process serves both brokers, and both brokers'
//  clients get their tasks done by them.
static void test_worker_processes_serve_both_brokers(void **state)
{
    cf_testkit_t *kit = *state;
    s_two_t two = s_two_brokers(kit, "--procs", "2");
    cf_executor_t *ea = two.ea, *eb = two.eb;
    cf_testkit_proc_t *worker = two.worker;
    enum { N = 40 };
    cf_future_t *fs[N];
    for (int i = 0; i < N; i++)
        fs[i] = cf_submit(i % 2 ? eb : ea, "sleep_pid", "i", 2);
    for (int i = 0; i < N; i++) {
        cf_testkit_expect_done(kit, fs[i]);
        int64_t pid = 0;
        assert_int_equal(cf_future_int(fs[i], 0, &pid), CF_OK);
        assert_true(pid != cf_testkit_pid(worker));    //  a worker process ran it
        cf_future_release(&fs[i]);
    }
    cf_executor_destroy(&ea);
    cf_executor_destroy(&eb);
    assert_int_equal(WEXITSTATUS(cf_testkit_stop(worker, CF_TESTKIT_STOP_MS)), 0);
    //  Each process logs its own counters as it ends: two brokers each.
    char *log = cf_testkit_log(worker);
    assert_non_null(log);
    assert_non_null(strstr(log, "(limit 2); taken:"));
    free(log);
}

//  The same broker twice is one connection: the worker serves it alone,
//  with classic credit (a warning says so).
static void test_a_broker_given_twice_is_served_once(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *a = cf_testkit_start_broker(kit, NULL);
    char twice[512];
    snprintf(twice, sizeof twice, "%s,%s", cf_testkit_workers(a), cf_testkit_workers(a));
    cf_testkit_proc_t *worker = cf_testkit_start_worker(kit, twice, "--threads", "1", NULL);
    cf_executor_t *ex = cf_testkit_connect(cf_testkit_clients(a), 0);
    cf_future_t *f = cf_submit(ex, "square", "i", 7);
    cf_testkit_expect_int(kit, f, 49);
    cf_future_release(&f);
    cf_executor_destroy(&ex);
    cf_testkit_stop(worker, CF_TESTKIT_STOP_MS);
    char *log = cf_testkit_log(worker);
    assert_non_null(log);
    assert_non_null(strstr(log, "given twice"));
    assert_null(strstr(log, "shared with"));
    free(log);
}

//  One broker reached under two names is two links with routing ids of
//  their own (one id twice would be refused by the broker's ROUTER): it
//  serves, within the limit.
static void test_one_broker_under_two_names_is_served(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *a = cf_testkit_start_broker(kit, NULL);
    const char *port = strrchr(cf_testkit_workers(a), ':');
    assert_non_null(port);
    char names[256];
    snprintf(names, sizeof names, "%s,tcp://localhost%s", cf_testkit_workers(a), port);
    cf_testkit_proc_t *worker = cf_testkit_start_worker(kit, names, "--threads", "2", NULL);
    cf_executor_t *ex = cf_testkit_connect(cf_testkit_clients(a), 0);
    enum { N = 40 };
    cf_future_t *fs[N];
    for (int i = 0; i < N; i++)
        fs[i] = cf_submit(ex, "sleep_ms", "i", 2);
    s_expect_all(kit, fs, N);
    cf_executor_destroy(&ex);
    assert_int_equal(WEXITSTATUS(cf_testkit_stop(worker, CF_TESTKIT_STOP_MS)), 0);
    s_counters_t c = s_exit_line(kit, worker);
    assert_true(c.max_held <= c.limit);
    assert_true(c.taken[0] + c.taken[1] >= N);
    //  Both links served: the broker took both connections.
    assert_true(c.taken[0] > 0 && c.taken[1] > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_a_worker_shared_by_two_brokers_serves_both_within_its_limit, cf_testkit_setup,
            cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_a_flooded_broker_does_not_starve_the_other,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_a_broker_that_comes_back_is_used_again,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_one_broker_under_two_names_is_served, cf_testkit_setup,
                                        cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_a_bad_broker_in_a_list_is_named, cf_testkit_setup,
                                        cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_worker_processes_serve_both_brokers, cf_testkit_setup,
                                        cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_a_broker_given_twice_is_served_once, cf_testkit_setup,
                                        cf_testkit_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

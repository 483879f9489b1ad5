//  Routing by function and priorities through a real cluster (issue 10):
//  cf-workers that load different task libraries on one cf-broker each get
//  only the tasks they can run; a task no connected worker serves waits for
//  one, then fails with NoWorker; clients take turns whatever their
//  priorities.

#include "cf_testkit.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int64_t s_int_result(cf_testkit_t *kit, cf_future_t *f)
{
    cf_testkit_expect_done(kit, f);
    const cf_value_t *value = NULL;
    if (cf_future_result(f, 0, &value) != CF_OK) {
        const cf_task_error_t *error = cf_future_error(f);
        fail_msg("task failed: %s: %s", error ? error->type : "?", error ? error->message : "?");
    }
    int64_t n = 0;
    assert_int_equal(cf_value_get_int(value, &n), CF_OK);
    return n;
}

//  A worker with the example library and one with only routing_tasks:
//  interleaved tasks of both land where they can run, none fails with
//  UnknownFunction (cf/1 workers, serving everything, sent half of them to
//  the wrong one).
static void test_tasks_go_only_to_workers_that_serve_their_function(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    cf_testkit_proc_t *examples = cf_testkit_start_worker(kit, cf_testkit_workers(broker),
                                                          "--threads", "2", NULL);
    const char *const two_threads[] = { "--threads", "2", NULL };
    cf_testkit_proc_t *routing = cf_testkit_start_worker_tasks(
        kit, cf_testkit_workers(broker), cf_testkit_env("CF_ROUTING_TASKS_LIB"), two_threads);
    cf_executor_t *ex = cf_testkit_connect(cf_testkit_clients(broker), 0);
    enum { N = 200 };
    cf_future_t *fs[2 * N];
    for (int i = 0; i < N; i++) {
        fs[2 * i] = cf_submit(ex, "sleep_pid", "i", 0);
        fs[2 * i + 1] = cf_submit(ex, "route_pid", "");
        assert_non_null(fs[2 * i]);
        assert_non_null(fs[2 * i + 1]);
    }
    for (int i = 0; i < 2 * N; i++) {
        int64_t pid = s_int_result(kit, fs[i]);
        assert_int_equal(pid, cf_testkit_pid(i % 2 ? routing : examples));
        cf_future_release(&fs[i]);
    }
    //  map's chunks travel as cf.chunk, which every worker runs: they are
    //  routed by the function they carry.
    static const int64_t inputs[40] = { 0 };
    cf_map_opts_t chunked = { .chunksize = 5 };
    const char *fns[] = { "route_pid", "sleep_pid" };
    for (int k = 0; k < 2; k++) {
        cf_map_t *map = cf_map_ints(ex, fns[k], inputs, 40, &chunked);
        assert_non_null(map);
        const cf_value_t *value;
        int count = 0;
        cf_err_t rc;
        while ((rc = cf_map_next(map, &value)) == CF_OK) {
            int64_t pid = 0;
            assert_int_equal(cf_value_get_int(value, &pid), CF_OK);
            assert_int_equal(pid, cf_testkit_pid(k == 0 ? routing : examples));
            count++;
        }
        if (rc != CF_ESTOP)
            fail_msg("map of %s over chunks ended with %s: %s", fns[k], cf_strerror(rc),
                     cf_map_error(map) ? cf_map_error(map)->message : "");
        assert_int_equal(count, 40);
        cf_map_destroy(&map);
    }
    cf_executor_destroy(&ex);
}

//  No worker serves it: it fails with NoWorker naming the function, after
//  its own wait (per task) or the broker's (--no-worker-timeout), and the
//  cluster goes on.
static void test_a_function_nobody_serves_fails_with_no_worker(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, "--no-worker-timeout", "400", NULL);
    cf_testkit_start_worker(kit, cf_testkit_workers(broker), NULL);
    cf_executor_t *ex = cf_testkit_connect(cf_testkit_clients(broker), 0);

    int64_t start = cf_testkit_now_ms();
    cf_task_opts_t own_wait = { .no_worker_timeout_ms = 200 };
    cf_future_t *own = cf_submit_with(ex, &own_wait, "route_pid", "");
    cf_future_t *brokers = cf_submit(ex, "no_such_function", "i", 1);
    const cf_task_error_t *error = cf_testkit_expect_error(
        kit, own, "NoWorker", "no connected worker serves function 'route_pid' (waited 200 ms)");
    assert_string_equal(error->function, "route_pid");
    assert_true(cf_testkit_now_ms() - start >= 200);
    error = cf_testkit_expect_error(kit, brokers, "NoWorker", "(waited 400 ms)");
    assert_string_equal(error->function, "no_such_function");
    assert_true(cf_testkit_now_ms() - start >= 400);
    cf_future_release(&own);
    cf_future_release(&brokers);

    cf_future_t *fine = cf_submit(ex, "square", "i", 12);
    cf_testkit_expect_int(kit, fine, 144);
    cf_future_release(&fine);
    cf_executor_destroy(&ex);
}

//  Workers may come later: a task waits for one that serves it, and when
//  that worker is lost its functions wait again for the next one.
static void test_a_task_waits_for_a_worker_that_serves_it(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    cf_testkit_start_worker(kit, cf_testkit_workers(broker), NULL);
    cf_executor_t *ex = cf_testkit_connect(cf_testkit_clients(broker), 0);

    cf_future_t *waiting = cf_submit(ex, "route_pid", "");
    cf_future_t *other = cf_submit(ex, "square", "i", 3);
    cf_testkit_expect_int(kit, other, 9);
    assert_false(cf_future_done(waiting));
    cf_testkit_proc_t *first = cf_testkit_start_worker_tasks(
        kit, cf_testkit_workers(broker), cf_testkit_env("CF_ROUTING_TASKS_LIB"), NULL);
    assert_int_equal(s_int_result(kit, waiting), cf_testkit_pid(first));

    cf_testkit_kill(first);
    //  Until the broker notices, the dead worker still counts; a task sent
    //  to it meanwhile is retried (WorkerLost) on the next one.
    cf_future_t *again = cf_submit(ex, "route_pid", "");
    cf_testkit_proc_t *second = cf_testkit_start_worker_tasks(
        kit, cf_testkit_workers(broker), cf_testkit_env("CF_ROUTING_TASKS_LIB"), NULL);
    assert_int_equal(s_int_result(kit, again), cf_testkit_pid(second));
    cf_future_release(&waiting);
    cf_future_release(&other);
    cf_future_release(&again);
    cf_executor_destroy(&ex);
}

static bool s_file_exists(void *path)
{
    return access(path, F_OK) == 0;
}

typedef struct {
    const char *clients;
    uint64_t want;
} s_queued_t;

static bool s_queued(void *arg)
{
    s_queued_t *q = arg;
    uint64_t queued = 0;
    return cf_testkit_broker_stat(q->clients, "queued", 1000, &queued) && queued == q->want;
}

//  Two clients share one busy worker; one submits its tasks at a high
//  priority, the other at a low one. Priorities order a client's own
//  tasks, never clients: once the worker is free, they take turns.
static void test_one_clients_priority_does_not_starve_another(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, NULL);
    cf_testkit_start_worker(kit, cf_testkit_workers(broker), "--threads", "1", NULL);
    cf_executor_t *high = cf_testkit_connect(cf_testkit_clients(broker), 0);
    cf_executor_t *low = cf_testkit_connect(cf_testkit_clients(broker), 0);
    const char *started = cf_testkit_path(kit, "started");
    const char *release = cf_testkit_path(kit, "release");
    const char *order = cf_testkit_path(kit, "order");
    cf_future_t *gate = cf_submit(high, "gate", "ss", started, release);
    assert_true(cf_testkit_wait_until(s_file_exists, (void *)started, CF_TESTKIT_DEADLINE_MS));
    enum { N = 20 };
    cf_future_t *fs[2 * N];
    cf_task_opts_t urgent = { .priority = 1000 };
    for (int i = 0; i < N; i++) {
        fs[i] = cf_submit_with(high, &urgent, "append_line", "si", order, 100 + i);
        fs[N + i] = cf_submit(low, "append_line", "si", order, i);
    }
    //  Both clients' tasks reached the broker before the gate opens.
    s_queued_t queued = { cf_testkit_clients(broker), 2 * N };
    assert_true(cf_testkit_wait_until(s_queued, &queued, CF_TESTKIT_DEADLINE_MS));
    FILE *open_gate = fopen(release, "w");
    assert_non_null(open_gate);
    fclose(open_gate);
    for (int i = 0; i < 2 * N; i++) {
        cf_testkit_expect_done(kit, fs[i]);
        cf_future_release(&fs[i]);
    }
    cf_testkit_expect_done(kit, gate);
    cf_future_release(&gate);
    //  Of the first 10 begun, each client has about half.
    FILE *file = fopen(order, "r");
    assert_non_null(file);
    long line;
    int highs = 0, lows = 0;
    for (int i = 0; i < 10 && fscanf(file, "%ld", &line) == 1; i++) {
        if (line >= 100)
            highs++;
        else
            lows++;
    }
    fclose(file);
    if (highs < 4 || lows < 4)
        fail_msg("of the first 10 tasks begun, %d were the urgent client's and %d the other's",
                 highs, lows);
    cf_executor_destroy(&high);
    cf_executor_destroy(&low);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_tasks_go_only_to_workers_that_serve_their_function,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_a_function_nobody_serves_fails_with_no_worker,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_a_task_waits_for_a_worker_that_serves_it,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_one_clients_priority_does_not_starve_another,
                                        cf_testkit_setup, cf_testkit_teardown),
    };
    return cmocka_run_group_tests_name("routing", tests, NULL, NULL);
}

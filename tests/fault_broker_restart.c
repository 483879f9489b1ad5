//  A broker restarted while a client has tasks pending: the old broker dies
//  (crash: SIGKILL, or a clean SIGTERM), a new one binds the same endpoints,
//  the worker announces itself again and the client resends what is still
//  pending, so every future ends with its right result. Tasks that were
//  running may run twice (at-least-once); the values are the same.

#include "cf_testkit.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <string.h>

#define S_HB_MS   CF_TESTKIT_FAST_HEARTBEAT_MS
#define S_HB_TEXT "200"
#define S_TASKS   30

static void s_restart_with_pending_tasks(cf_testkit_t *kit, int how)
{
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, "--heartbeat-ms", S_HB_TEXT,
                                                        "--liveness", "3", NULL);
    //  The new broker binds exactly these (no more "*").
    char clients[256], workers[256];
    snprintf(clients, sizeof clients, "%s", cf_testkit_clients(broker));
    snprintf(workers, sizeof workers, "%s", cf_testkit_workers(broker));
    cf_testkit_start_worker(kit, workers, "--threads", "2", "--heartbeat-ms", S_HB_TEXT,
                            "--liveness", "3", NULL);
    cf_executor_t *executor = cf_testkit_connect(clients, S_HB_MS);

    //  30 tasks of 100 ms on two threads: about 1.5 s of work, so most are
    //  still pending when the broker goes.
    cf_future_t *futures[S_TASKS];
    for (int i = 0; i < S_TASKS; i++) {
        futures[i] = cf_submit(executor, "slow_double", "i", i);
        assert_non_null(futures[i]);
    }
    cf_future_t *done[S_TASKS], *not_done[S_TASKS];
    size_t n_done = 0, n_not_done = 0;
    assert_int_equal(cf_wait(futures, S_TASKS, CF_TESTKIT_DEADLINE_MS, CF_FIRST_COMPLETED, done,
                             &n_done, not_done, &n_not_done),
                     CF_OK);
    assert_true(n_done >= 1);

    if (how == SIGKILL)
        cf_testkit_kill(broker);
    else
        cf_testkit_stop(broker, CF_TESTKIT_STOP_MS);

    cf_testkit_proc_t *again = cf_testkit_start_broker(kit, "--clients", clients, "--workers",
                                                       workers, "--heartbeat-ms", S_HB_TEXT,
                                                       "--liveness", "3", NULL);
    assert_string_equal(cf_testkit_clients(again), clients);

    for (int i = 0; i < S_TASKS; i++) {
        cf_testkit_expect_int(kit, futures[i], 2 * i);
        cf_future_release(&futures[i]);
    }
    //  And new work goes through the new broker.
    cf_future_t *f = cf_submit(executor, "add", "ii", 1, 2);
    cf_testkit_expect_int(kit, f, 3);
    cf_future_release(&f);
    cf_executor_destroy(&executor);
}

static void test_a_crashed_broker_is_replaced_and_pending_tasks_finish(void **state)
{
    s_restart_with_pending_tasks(*state, SIGKILL);
}

static void test_a_stopped_broker_is_replaced_and_pending_tasks_finish(void **state)
{
    s_restart_with_pending_tasks(*state, SIGTERM);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_a_crashed_broker_is_replaced_and_pending_tasks_finish,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_a_stopped_broker_is_replaced_and_pending_tasks_finish,
                                        cf_testkit_setup, cf_testkit_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

//  One re-introduction per broker restart (issue 9, section 4 and 3 iv): a
//  real cf-broker is stopped (SIGTERM: it says DISCONNECT) or killed
//  (SIGKILL) and started again on the same endpoints while a client has
//  tasks pending on a 4-thread cf-worker. A restart shows to each peer as
//  several signs (DISCONNECT, the socket's disconnection and reconnection,
//  a new boot id, one "unknown" ERROR per message sent before the peer
//  re-introduced itself); each peer must act on them once: the worker sends
//  one READY ("announcing again" once in its log), the client resends once
//  ("resending" once in its log), and the broker never has more tasks on
//  the worker than its 4 threads (a repeated READY used to reset the credit
//  while tasks were on the way: 7-8 tasks on 4 threads). Every future ends
//  with its right value.

#include "cf_testkit.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_HB_TEXT "200"
#define S_HB_MS   200
#define S_THREADS 4
//  Tasks of 300 ms (long enough that the worker asks for no prefetch:
//  credit = threads), 15 rounds on 4 threads: about 4.5 s of work.
#define S_TASKS   60
#define S_TASK_MS 300

static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER;
static int s_resends;    //  the client's "resending" lines

static void s_count_resends(cf_log_level_t level, const char *component, const char *message,
                            void *arg)
{
    (void)level;
    (void)arg;
    if (strcmp(component, "client") != 0)
        return;
    fprintf(stderr, "client: %s\n", message);
    if (strstr(message, "resending")) {
        pthread_mutex_lock(&s_lock);
        s_resends++;
        pthread_mutex_unlock(&s_lock);
    }
}

//  Tracks the broker's "running" counter until every future is done.
static uint64_t s_watch_running(const char *clients, cf_future_t **futures, size_t count)
{
    uint64_t most = 0;
    int64_t until = cf_testkit_now_ms() + CF_TESTKIT_DEADLINE_MS;
    while (cf_testkit_now_ms() < until) {
        uint64_t running = 0;
        if (cf_testkit_broker_stat(clients, "running", 500, &running) && running > most)
            most = running;
        size_t done = 0;
        for (size_t i = 0; i < count; i++)
            done += cf_future_wait(futures[i], 0) == CF_OK;
        if (done == count)
            break;
        cf_testkit_nap_ms(20);
    }
    return most;
}

static void s_restart_under_load(cf_testkit_t *kit, int how)
{
    pthread_mutex_lock(&s_lock);
    s_resends = 0;
    pthread_mutex_unlock(&s_lock);
    cf_log_set_handler(s_count_resends, NULL, CF_LOG_INFO);
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, "--heartbeat-ms", S_HB_TEXT,
                                                        "--liveness", "3", NULL);
    char clients[256], workers[256];
    snprintf(clients, sizeof clients, "%s", cf_testkit_clients(broker));
    snprintf(workers, sizeof workers, "%s", cf_testkit_workers(broker));
    cf_testkit_proc_t *worker = cf_testkit_start_worker(
        kit, workers, "--threads", "4", "--heartbeat-ms", S_HB_TEXT, "--liveness", "3", NULL);
    cf_executor_t *executor = cf_testkit_connect(clients, S_HB_MS);

    cf_future_t *futures[S_TASKS];
    for (int i = 0; i < S_TASKS; i++) {
        futures[i] = cf_submit(executor, "sleep_ms", "i", S_TASK_MS);
        assert_non_null(futures[i]);
    }
    cf_future_t *done[S_TASKS], *not_done[S_TASKS];
    size_t n_done = 0, n_not_done = 0;
    assert_int_equal(cf_wait(futures, S_TASKS, CF_TESTKIT_DEADLINE_MS, CF_FIRST_COMPLETED, done,
                             &n_done, not_done, &n_not_done),
                     CF_OK);

    if (how == SIGKILL)
        cf_testkit_kill(broker);
    else
        cf_testkit_stop(broker, CF_TESTKIT_STOP_MS);
    cf_testkit_start_broker(kit, "--clients", clients, "--workers", workers, "--heartbeat-ms",
                            S_HB_TEXT, "--liveness", "3", NULL);

    uint64_t most = s_watch_running(clients, futures, S_TASKS);
    for (int i = 0; i < S_TASKS; i++) {
        cf_testkit_expect_int(kit, futures[i], S_TASK_MS);
        cf_future_release(&futures[i]);
    }
    cf_executor_destroy(&executor);
    cf_log_set_handler(NULL, NULL, CF_LOG_WARN);

    char *log = cf_testkit_log(worker);
    assert_non_null(log);
    size_t readies = cf_testkit_count(log, "announcing again");
    pthread_mutex_lock(&s_lock);
    int resends = s_resends;
    pthread_mutex_unlock(&s_lock);
    printf("restart by %s: worker re-announced %zu time(s), client resent %d time(s), at most "
           "%" PRIu64 " tasks on the %d-thread worker\n",
           how == SIGKILL ? "SIGKILL" : "SIGTERM", readies, resends, most, S_THREADS);
    if (readies != 1)
        fprintf(stderr, "worker log:\n%s\n", log);
    free(log);
    assert_int_equal(readies, 1);
    assert_int_equal(resends, 1);
    assert_true(most <= S_THREADS);
}

static void test_a_stopped_broker_gets_one_ready_and_one_resubmission(void **state)
{
    s_restart_under_load(*state, SIGTERM);
}

static void test_a_killed_broker_gets_one_ready_and_one_resubmission(void **state)
{
    s_restart_under_load(*state, SIGKILL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_a_stopped_broker_gets_one_ready_and_one_resubmission,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_a_killed_broker_gets_one_ready_and_one_resubmission,
                                        cf_testkit_setup, cf_testkit_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

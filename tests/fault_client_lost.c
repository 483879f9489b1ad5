//  A lost client: a client process with many tasks queued is killed
//  (SIGKILL: no DISCONNECT, just silence). The broker must notice by
//  heartbeats, drop that client's queued tasks instead of running them for
//  nobody, and keep serving another client.
//
//  The doomed client is a forked copy of this test (cf_testkit_fork), made
//  before the test starts any thread of its own.

#include "cf_testkit.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <unistd.h>

#define S_HB_MS          CF_TESTKIT_FAST_HEARTBEAT_MS
#define S_HB_TEXT        "200"
//  The doomed client's queue: 40 tasks of 2 s on one worker thread would
//  take 80 s to drain, far longer than the deadline for dropping them, so
//  a broker that runs them instead of dropping them fails the test.
#define S_DOOMED_TASKS   40
#define S_DOOMED_TASK_MS 2000

//  Runs in the forked child: no cmocka, reports on stdout.
static int s_doomed_client(void *arg)
{
    const char *endpoint = arg;
    cf_options_t options = { .endpoint = endpoint, .heartbeat_ivl_ms = S_HB_MS };
    cf_executor_t *executor = cf_executor_connect(endpoint, &options);
    if (!executor) {
        printf("failed connect: %s\n", cf_last_error());
        return 1;
    }
    for (int i = 0; i < S_DOOMED_TASKS; i++) {
        cf_future_t *f = cf_submit(executor, "sleep_ms", "i", S_DOOMED_TASK_MS);
        if (!f) {
            printf("failed submit: %s\n", cf_last_error());
            return 1;
        }
        cf_future_release(&f);
    }
    printf("submitted %d\n", S_DOOMED_TASKS);
    fflush(stdout);
    //  Wait to be killed.
    for (;;)
        pause();
}

typedef struct {
    const char *endpoint;
    uint64_t want_at_least;    //  queued >= this (when not UINT64_MAX)
    uint64_t want_at_most;     //  queued <= this
} queued_t;

static bool s_queued_in_range(void *arg)
{
    queued_t *q = arg;
    uint64_t queued = 0;
    if (!cf_testkit_broker_stat(q->endpoint, "queued", 5000, &queued))
        return false;
    return queued >= q->want_at_least && queued <= q->want_at_most;
}

static void test_a_lost_client_has_its_queue_dropped_and_others_are_served(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, "--heartbeat-ms", S_HB_TEXT,
                                                        "--liveness", "3", NULL);
    cf_testkit_start_worker(kit, cf_testkit_workers(broker), "--threads", "1", "--heartbeat-ms",
                            S_HB_TEXT, NULL);
    const char *clients = cf_testkit_clients(broker);

    cf_testkit_proc_t *doomed = cf_testkit_fork(kit, "doomed-client", s_doomed_client,
                                                (void *)clients);
    assert_non_null(doomed);
    if (!cf_testkit_wait_line(doomed, "submitted", CF_TESTKIT_DEADLINE_MS)) {
        cf_testkit_dump_logs(kit);
        fail_msg("the doomed client did not submit its tasks");
    }
    //  The tasks are queued at the broker (a few may be on the worker).
    queued_t full = { .endpoint = clients,
                      .want_at_least = S_DOOMED_TASKS - 5,
                      .want_at_most = UINT64_MAX };
    if (!cf_testkit_wait_until(s_queued_in_range, &full, CF_TESTKIT_DEADLINE_MS)) {
        cf_testkit_dump_logs(kit);
        fail_msg("the broker never reported the doomed client's tasks as queued");
    }

    cf_testkit_kill(doomed);

    queued_t empty = { .endpoint = clients, .want_at_least = 0, .want_at_most = 0 };
    if (!cf_testkit_wait_until(s_queued_in_range, &empty, 30000)) {
        cf_testkit_dump_logs(kit);
        fail_msg("the lost client's queued tasks were not dropped");
    }

    //  Another client is served as usual.
    cf_executor_t *executor = cf_testkit_connect(clients, S_HB_MS);
    cf_future_t *f = cf_submit(executor, "square", "i", 7);
    cf_testkit_expect_int(kit, f, 49);
    cf_future_release(&f);
    assert_true(cf_testkit_alive(broker));
    cf_executor_destroy(&executor);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_a_lost_client_has_its_queue_dropped_and_others_are_served, cf_testkit_setup,
            cf_testkit_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

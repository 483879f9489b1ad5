//  Lost workers: one killed with SIGKILL in the middle of a task, one frozen
//  with SIGSTOP (alive to the kernel, silent to the broker). Either way the
//  broker must notice (a closed connection, or missed heartbeats), give the
//  task to another worker, and the client's future must end with that
//  worker's result. Every party heartbeats every 200 ms so this takes about
//  a second; the deadlines are far longer and never measure speed.

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

typedef struct {
    const char *pid_file;
    long pid;
} pid_wait_t;

static bool s_pid_written(void *arg)
{
    pid_wait_t *wait = arg;
    wait->pid = cf_testkit_read_number(wait->pid_file);
    return wait->pid > 0;
}

//  Waits until the task running sleep_pid(ms, pid_file) has written its pid.
static long s_running_pid(cf_testkit_t *kit, const char *pid_file)
{
    pid_wait_t wait = { .pid_file = pid_file, .pid = -1 };
    if (!cf_testkit_wait_until(s_pid_written, &wait, CF_TESTKIT_DEADLINE_MS)) {
        cf_testkit_dump_logs(kit);
        fail_msg("no worker started the task (no pid in %s)", pid_file);
    }
    return wait.pid;
}

static cf_testkit_proc_t *s_broker(cf_testkit_t *kit)
{
    return cf_testkit_start_broker(kit, "--heartbeat-ms", S_HB_TEXT, "--liveness", "3", NULL);
}

static cf_testkit_proc_t *s_worker(cf_testkit_t *kit, cf_testkit_proc_t *broker)
{
    return cf_testkit_start_worker(kit, cf_testkit_workers(broker), "--threads", "1",
                                   "--heartbeat-ms", S_HB_TEXT, "--liveness", "3", NULL);
}

static void test_a_task_on_a_killed_worker_finishes_on_another(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = s_broker(kit);
    cf_testkit_proc_t *doomed = s_worker(kit, broker);
    cf_executor_t *executor = cf_testkit_connect(cf_testkit_clients(broker), S_HB_MS);

    const char *pid_file = cf_testkit_path(kit, "running.pid");
    cf_future_t *f = cf_submit(executor, "sleep_pid", "is", 1500, pid_file);
    assert_non_null(f);
    //  Only the doomed worker exists yet, so that is where it runs.
    assert_int_equal(s_running_pid(kit, pid_file), cf_testkit_pid(doomed));

    cf_testkit_proc_t *survivor = s_worker(kit, broker);
    cf_testkit_kill(doomed);

    cf_testkit_expect_int(kit, f, cf_testkit_pid(survivor));
    cf_future_release(&f);

    //  The cluster goes on with the survivor.
    f = cf_submit(executor, "add", "ii", 40, 2);
    cf_testkit_expect_int(kit, f, 42);
    cf_future_release(&f);
    assert_true(cf_testkit_alive(broker));
    cf_executor_destroy(&executor);
}

static void test_a_task_without_retries_fails_with_worker_lost(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = s_broker(kit);
    cf_testkit_proc_t *doomed = s_worker(kit, broker);
    cf_executor_t *executor = cf_testkit_connect(cf_testkit_clients(broker), S_HB_MS);

    const char *pid_file = cf_testkit_path(kit, "running.pid");
    cf_task_opts_t no_retries = { .retries = -1 };
    cf_future_t *f = cf_submit_with(executor, &no_retries, "sleep_pid", "is", 1500, pid_file);
    assert_non_null(f);
    assert_int_equal(s_running_pid(kit, pid_file), cf_testkit_pid(doomed));
    cf_testkit_proc_t *survivor = s_worker(kit, broker);
    cf_testkit_kill(doomed);

    const cf_task_error_t *error = cf_testkit_expect_error(kit, f, "WorkerLost", NULL);
    assert_string_equal(error->function, "sleep_pid");
    cf_future_release(&f);

    //  Later tasks run on the survivor.
    f = cf_submit(executor, "sleep_pid", "i", 10);
    cf_testkit_expect_int(kit, f, cf_testkit_pid(survivor));
    cf_future_release(&f);
    cf_executor_destroy(&executor);
}

//  Submits two concurrent tasks and records which worker ran them.
typedef struct {
    cf_executor_t *executor;
    pid_t wanted;
    bool failed;
} rejoin_t;

static bool s_ran_on_wanted(void *arg)
{
    rejoin_t *rejoin = arg;
    cf_future_t *fs[2];
    fs[0] = cf_submit(rejoin->executor, "sleep_pid", "i", 100);
    fs[1] = cf_submit(rejoin->executor, "sleep_pid", "i", 100);
    bool seen = false;
    for (int i = 0; i < 2; i++) {
        int64_t pid = 0;
        if (!fs[i] || cf_future_int(fs[i], CF_TESTKIT_DEADLINE_MS, &pid) != CF_OK)
            rejoin->failed = true;
        else if (pid == rejoin->wanted)
            seen = true;
        cf_future_release(&fs[i]);
    }
    return seen || rejoin->failed;
}

static void test_a_frozen_worker_is_noticed_and_its_task_retried(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *broker = s_broker(kit);
    cf_testkit_proc_t *frozen = s_worker(kit, broker);
    cf_executor_t *executor = cf_testkit_connect(cf_testkit_clients(broker), S_HB_MS);

    const char *pid_file = cf_testkit_path(kit, "running.pid");
    cf_future_t *f = cf_submit(executor, "sleep_pid", "is", 1000, pid_file);
    assert_non_null(f);
    assert_int_equal(s_running_pid(kit, pid_file), cf_testkit_pid(frozen));

    cf_testkit_proc_t *healthy = s_worker(kit, broker);
    //  The connection stays open; only heartbeats can tell.
    assert_true(cf_testkit_signal(frozen, SIGSTOP));
    cf_testkit_expect_int(kit, f, cf_testkit_pid(healthy));
    cf_future_release(&f);

    //  Thawed, the worker finishes its stale task (its result must be
    //  dropped harmlessly), notices it was cut off and joins again.
    assert_true(cf_testkit_signal(frozen, SIGCONT));
    rejoin_t rejoin = { .executor = executor, .wanted = cf_testkit_pid(frozen) };
    bool rejoined = cf_testkit_wait_until(s_ran_on_wanted, &rejoin, CF_TESTKIT_DEADLINE_MS);
    if (rejoin.failed || !rejoined) {
        cf_testkit_dump_logs(kit);
        fail_msg("%s", rejoin.failed ? "a task failed after the worker thawed"
                                     : "the thawed worker never ran a task again");
    }
    assert_true(cf_testkit_alive(broker));
    assert_true(cf_testkit_alive(frozen));
    assert_true(cf_testkit_alive(healthy));
    cf_executor_destroy(&executor);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_a_task_on_a_killed_worker_finishes_on_another,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_a_task_without_retries_fails_with_worker_lost,
                                        cf_testkit_setup, cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_a_frozen_worker_is_noticed_and_its_task_retried,
                                        cf_testkit_setup, cf_testkit_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

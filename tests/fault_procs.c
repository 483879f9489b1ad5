//  cf-worker --procs: worker processes under a supervisor. A worker process
//  killed mid-task has its task retried on another process and is replaced;
//  a task that crashes every process it runs on fails alone with WorkerLost
//  once its retries are used up, while other tasks go on and the pool lives
//  (unlike Python's BrokenProcessPool, which fails the whole batch).

#include "cf_testkit.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <sys/types.h>

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

static cf_testkit_proc_t *s_cluster(cf_testkit_t *kit, cf_testkit_proc_t **pool)
{
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, "--heartbeat-ms", S_HB_TEXT,
                                                        "--liveness", "3", NULL);
    *pool = cf_testkit_start_worker(kit, cf_testkit_workers(broker), "--procs", "2",
                                    "--heartbeat-ms", S_HB_TEXT, "--liveness", "3", NULL);
    return broker;
}

typedef struct {
    cf_testkit_t *kit;
    cf_executor_t *executor;
    pid_t supervisor;
    long excluded;
    int64_t last_a, last_b;    //  the pids the last pair ran on
    int pairs;
} two_pids_t;

//  Runs two concurrent tasks; true once they ran in two distinct processes.
//  Every task must run in a worker process: neither the supervisor itself
//  nor the excluded (killed) one.
static bool s_two_distinct(void *arg)
{
    two_pids_t *t = arg;
    cf_future_t *a = cf_submit(t->executor, "sleep_pid", "i", 300);
    cf_future_t *b = cf_submit(t->executor, "sleep_pid", "i", 300);
    cf_testkit_expect_done(t->kit, a);
    cf_testkit_expect_done(t->kit, b);
    assert_int_equal(cf_future_int(a, 0, &t->last_a), CF_OK);
    assert_int_equal(cf_future_int(b, 0, &t->last_b), CF_OK);
    cf_future_release(&a);
    cf_future_release(&b);
    t->pairs++;
    assert_true(t->last_a > 0 && t->last_b > 0);
    assert_true(t->last_a != t->supervisor && t->last_b != t->supervisor);
    assert_true(t->last_a != t->excluded && t->last_b != t->excluded);
    return t->last_a != t->last_b;
}

//  Two concurrent tasks run in two distinct worker processes of the pool,
//  neither of them the supervisor itself nor excluded. A process that was
//  just started (a replacement) may not have joined the broker yet, and
//  then both tasks run one after the other in the same process: so pairs
//  are tried until one runs on two processes, and none may ever run on the
//  supervisor or the excluded process. A pool down to one process fails.
static void s_expect_two_live_processes(cf_testkit_t *kit, cf_executor_t *executor,
                                        pid_t supervisor, long excluded)
{
    two_pids_t t = {
        .kit = kit, .executor = executor, .supervisor = supervisor, .excluded = excluded
    };
    if (!cf_testkit_wait_until(s_two_distinct, &t, CF_TESTKIT_DEADLINE_MS)) {
        cf_testkit_dump_logs(kit);
        fail_msg("%d pairs of concurrent tasks, none on two processes (last pair: pids %lld "
                 "and %lld)",
                 t.pairs, (long long)t.last_a, (long long)t.last_b);
    }
}

static void test_a_killed_worker_process_is_replaced_and_its_task_retried(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *pool;
    cf_testkit_proc_t *broker = s_cluster(kit, &pool);
    cf_executor_t *executor = cf_testkit_connect(cf_testkit_clients(broker), S_HB_MS);

    const char *pid_file = cf_testkit_path(kit, "running.pid");
    cf_future_t *f = cf_submit(executor, "sleep_pid", "is", 1500, pid_file);
    assert_non_null(f);
    pid_wait_t wait = { .pid_file = pid_file, .pid = -1 };
    if (!cf_testkit_wait_until(s_pid_written, &wait, CF_TESTKIT_DEADLINE_MS)) {
        cf_testkit_dump_logs(kit);
        fail_msg("no worker process started the task");
    }
    //  A worker process, not the supervisor.
    assert_true(wait.pid != cf_testkit_pid(pool));
    assert_int_equal(kill((pid_t)wait.pid, SIGKILL), 0);

    cf_testkit_expect_done(kit, f);
    int64_t ran_on = 0;
    assert_int_equal(cf_future_int(f, 0, &ran_on), CF_OK);
    assert_true(ran_on != wait.pid);
    assert_true(ran_on != cf_testkit_pid(pool));
    cf_future_release(&f);

    //  The supervisor replaced the dead process: two still serve.
    assert_true(cf_testkit_alive(pool));
    s_expect_two_live_processes(kit, executor, cf_testkit_pid(pool), wait.pid);
    cf_executor_destroy(&executor);
}

static void test_a_crashing_task_fails_alone_and_the_pool_lives(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *pool;
    cf_testkit_proc_t *broker = s_cluster(kit, &pool);
    cf_executor_t *executor = cf_testkit_connect(cf_testkit_clients(broker), S_HB_MS);

    cf_task_opts_t one_retry = { .retries = 1 };
    cf_future_t *crash = cf_submit_with(executor, &one_retry, "crash", "");
    assert_non_null(crash);
    enum { OTHERS = 12 };
    cf_future_t *others[OTHERS];
    for (int i = 0; i < OTHERS; i++) {
        others[i] = cf_submit(executor, "add", "ii", i, i);
        assert_non_null(others[i]);
    }

    const cf_task_error_t *error = cf_testkit_expect_error(kit, crash, "WorkerLost", NULL);
    assert_string_equal(error->function, "crash");
    for (int i = 0; i < OTHERS; i++) {
        cf_testkit_expect_int(kit, others[i], 2 * i);
        cf_future_release(&others[i]);
    }
    cf_future_release(&crash);

    assert_true(cf_testkit_alive(pool));
    assert_true(cf_testkit_alive(broker));
    s_expect_two_live_processes(kit, executor, cf_testkit_pid(pool), -1);
    cf_executor_destroy(&executor);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_a_killed_worker_process_is_replaced_and_its_task_retried, cf_testkit_setup,
            cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_a_crashing_task_fails_alone_and_the_pool_lives,
                                        cf_testkit_setup, cf_testkit_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

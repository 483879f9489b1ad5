//  cf_future_stop through real daemons (issue 10, section 4): cf-broker and
//  `cf-worker --procs 2`. A task that ignores its stop is killed with its
//  process once the grace is over and the process is replaced, while the
//  task in the other process runs on untouched and the pool keeps serving;
//  a task that looks at its flag returns within the grace and nothing is
//  killed. (Threaded workers, CF_THREADS and CF_PROCESSES are covered on
//  every kind by tests/test_api_kinds.c.)

#include "cf_testkit.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define S_HB_MS   CF_TESTKIT_FAST_HEARTBEAT_MS
#define S_HB_TEXT "200"

static cf_testkit_proc_t *s_cluster(cf_testkit_t *kit, cf_testkit_proc_t **pool)
{
    cf_testkit_proc_t *broker = cf_testkit_start_broker(kit, "--heartbeat-ms", S_HB_TEXT,
                                                        "--liveness", "3", NULL);
    *pool = cf_testkit_start_worker(kit, cf_testkit_workers(broker), "--procs", "2",
                                    "--heartbeat-ms", S_HB_TEXT, "--liveness", "3", NULL);
    return broker;
}

static bool s_exists(void *path)
{
    return access(path, F_OK) == 0;
}

static void s_expect_file(cf_testkit_t *kit, const char *path, const char *what)
{
    if (!cf_testkit_wait_until(s_exists, (void *)path, CF_TESTKIT_DEADLINE_MS)) {
        cf_testkit_dump_logs(kit);
        fail_msg("%s did not start", what);
    }
}

static void test_a_task_that_ignores_its_stop_is_killed_with_its_process(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *pool;
    cf_testkit_proc_t *broker = s_cluster(kit, &pool);
    cf_executor_t *ex = cf_testkit_connect(cf_testkit_clients(broker), S_HB_MS);

    //  One process holds a gate, the other a task that never looks.
    const char *gate_started = cf_testkit_path(kit, "gate-started");
    const char *release = cf_testkit_path(kit, "release");
    cf_future_t *gate = cf_submit(ex, "gate", "ss", gate_started, release);
    assert_non_null(gate);
    s_expect_file(kit, gate_started, "the gate");
    const char *spin_started = cf_testkit_path(kit, "spin-started");
    cf_future_t *spin = cf_submit(ex, "spin_ignoring_stop", "is", 120000, spin_started);
    assert_non_null(spin);
    s_expect_file(kit, spin_started, "the spinning task");

    int64_t start = cf_testkit_now_ms();
    assert_int_equal(cf_future_stop(spin, 300), CF_OK);
    const cf_task_error_t *error = cf_testkit_expect_error(kit, spin, CF_INTERRUPTED, "killed");
    assert_non_null(strstr(error->message, "grace of 300 ms"));
    assert_string_equal(error->function, "spin_ignoring_stop");
    assert_true(error->pid > 0 && error->pid != cf_testkit_pid(pool));
    int64_t took = cf_testkit_now_ms() - start;
    //  Not the task's two minutes: the grace, and a message or two.
    if (took > 60000)
        fail_msg("the stop took %lld ms", (long long)took);

    //  The gate runs on in its process; the killed one was replaced, so a
    //  new task finds a free process while the gate holds the other.
    assert_false(cf_future_done(gate));
    cf_future_t *next = cf_submit(ex, "sleep_pid", "i", 0);
    cf_testkit_expect_done(kit, next);
    int64_t next_pid = 0;
    assert_int_equal(cf_future_int(next, 0, &next_pid), CF_OK);
    assert_true(next_pid != error->pid && next_pid != cf_testkit_pid(pool));
    assert_false(cf_future_done(gate));

    int fd = open(release, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    close(fd);
    int64_t gate_pid = 0;
    cf_testkit_expect_done(kit, gate);
    assert_int_equal(cf_future_int(gate, 0, &gate_pid), CF_OK);
    assert_true(gate_pid != error->pid);
    assert_true(cf_testkit_alive(pool));
    assert_true(cf_testkit_alive(broker));

    cf_future_release(&next);
    cf_future_release(&spin);
    cf_future_release(&gate);
    cf_executor_destroy(&ex);
}

static void test_a_task_that_checks_returns_within_the_grace(void **state)
{
    cf_testkit_t *kit = *state;
    cf_testkit_proc_t *pool;
    cf_testkit_proc_t *broker = s_cluster(kit, &pool);
    cf_executor_t *ex = cf_testkit_connect(cf_testkit_clients(broker), S_HB_MS);

    const char *started = cf_testkit_path(kit, "started");
    cf_future_t *spin = cf_submit(ex, "spin_until_stopped", "is", 120000, started);
    assert_non_null(spin);
    s_expect_file(kit, started, "the spinning task");
    //  A long grace: it must not be needed.
    assert_int_equal(cf_future_stop(spin, 60000), CF_OK);
    const cf_task_error_t *error = cf_testkit_expect_error(kit, spin, CF_INTERRUPTED,
                                                           "asked to stop and returned early");
    //  Its process lives on: it runs the next task.
    cf_future_t *next = cf_submit(ex, "sleep_pid", "i", 0);
    cf_testkit_expect_done(kit, next);
    cf_future_release(&next);
    assert_true(error->pid > 0);
    char *log = cf_testkit_log(pool);
    assert_non_null(log);
    assert_null(strstr(log, "did not stop"));
    free(log);
    cf_future_release(&spin);
    cf_executor_destroy(&ex);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_a_task_that_ignores_its_stop_is_killed_with_its_process, cf_testkit_setup,
            cf_testkit_teardown),
        cmocka_unit_test_setup_teardown(test_a_task_that_checks_returns_within_the_grace,
                                        cf_testkit_setup, cf_testkit_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

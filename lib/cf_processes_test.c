//  cf_processes: CF_PROCESSES end to end. Worker processes are forked
//  copies of this test program, so the tasks registered here with CF_TASK
//  run in them.

#include "cf_clock.h"
#include "cf_executor.h"
#include "cf_processes.h"
#include "cf_sanitize.h"
#include "cf_unitkit.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

//  Under ThreadSanitizer: worker processes start threads in a child of a
//  child of this multi-threaded program. That is safe here by design (the
//  zygote forks them single-threaded and they never touch our locks), but
//  TSan refuses it unless told. Ignored by other builds.
const char *__tsan_default_options(void);
const char *__tsan_default_options(void)
{
    return "die_after_fork=0";
}

// ---------------------------------------------------------------------------
//  Tasks (they run in worker processes)

static void t_square(cf_call_t *call)
{
    int64_t x = cf_arg_int(call, 0);
    cf_return_int(call, x * x);
}
CF_TASK(t_square);

static void t_pid(cf_call_t *call)
{
    cf_return_int(call, getpid());
}
CF_TASK(t_pid);

static void t_abort(cf_call_t *call)
{
    (void)call;
    abort();
}
CF_TASK(t_abort);

static void t_kill(cf_call_t *call)
{
    (void)call;
    raise(SIGKILL);
}
CF_TASK(t_kill);

static void t_sleep_ms(cf_call_t *call)
{
    int64_t ms = cf_arg_int(call, 0);
    usleep((useconds_t)ms * 1000);
    cf_return_int(call, ms);
}
CF_TASK(t_sleep_ms);

//  Where t_noted_sleep notes which inputs ran (one line each, O_APPEND so
//  the worker processes never interleave); set before the executor forks.
static char s_note_path[256];

static void t_noted_sleep(cf_call_t *call)
{
    int64_t index = cf_arg_int(call, 0), ms = cf_arg_int(call, 1);
    int fd = open(s_note_path, O_WRONLY | O_APPEND | O_CREAT, 0600);
    if (fd >= 0) {
        char line[32];
        int len = snprintf(line, sizeof line, "%" PRId64 "\n", index);
        if (write(fd, line, (size_t)len) != len)
            abort();
        close(fd);
    }
    usleep((useconds_t)ms * 1000);
    cf_return_int(call, index);
}
CF_TASK(t_noted_sleep);

//  Set by the initializer in each worker process, never in this one.
static int64_t s_init_value;

static void s_initializer(void *arg)
{
    s_init_value = *(const int64_t *)arg;
}

static void t_init_value(cf_call_t *call)
{
    cf_return_int(call, s_init_value);
}
CF_TASK(t_init_value);

// ---------------------------------------------------------------------------
//  Helpers

//  n short tasks, so the workers measure them and prefetch.
static void s_warm_up(cf_executor_t *ex, int n)
{
    int64_t *inputs = calloc((size_t)n, sizeof *inputs);
    assert_non_null(inputs);
    cf_map_t *map = cf_map_ints(ex, "t_square", inputs, (size_t)n, NULL);
    assert_non_null(map);
    const cf_value_t *value;
    while (cf_map_next(map, &value) == CF_OK)
        ;
    cf_map_destroy(&map);
    free(inputs);
}

//  Inputs (index, MS of 200) for t_noted_sleep from an int64_t array.
static int s_sleep_source(void *state, size_t index, cf_args_t *args)
{
    const int64_t *inputs = state;
    if (index >= 50)
        return 0;
    return cf_args_addf(args, "ii", inputs[index], 200) == CF_OK ? 1 : -1;
}

//  A new executor, or the test fails saying why.
static cf_executor_t *s_new(cf_kind_t kind, const cf_options_t *opts)
{
    cf_executor_t *ex = cf_executor_new(kind, opts);
    if (!ex)
        fail_msg("cf_executor_new(%s): %s", cf_kind_name(kind), cf_last_error());
    return ex;
}

//  The int result of f, within 60 s.
static int64_t s_int_result(cf_future_t *f)
{
    return cf_unitkit_expect_int(f, 60000);
}

//  The parent pid of pid from /proc, or -1.
static pid_t s_parent_of(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *file = fopen(path, "r");
    if (!file)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, file);
    fclose(file);
    buf[n] = '\0';
    //  "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    char *end = strrchr(buf, ')');
    char state;
    int ppid;
    if (!end || sscanf(end + 1, " %c %d", &state, &ppid) != 2)
        return -1;
    return (pid_t)ppid;
}

//  True while pid exists and is not a zombie.
static bool s_alive(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *file = fopen(path, "r");
    if (!file)
        return false;
    size_t n = fread(buf, 1, sizeof buf - 1, file);
    fclose(file);
    buf[n] = '\0';
    char *end = strrchr(buf, ')');
    return end && end[1] == ' ' && end[2] != 'Z' && end[2] != 'X';
}

//  Every descendant of this process, by walking /proc; returns how many
//  were written to pids.
static size_t s_descendants(pid_t *pids, size_t cap)
{
    size_t count = 0;
    pids[count++] = getpid();
    //  Repeated passes pick up grandchildren whatever the directory order.
    for (bool grew = true; grew;) {
        grew = false;
        DIR *dir = opendir("/proc");
        assert_non_null(dir);
        struct dirent *entry;
        while ((entry = readdir(dir))) {
            char *rest;
            long pid = strtol(entry->d_name, &rest, 10);
            if (*rest || pid <= 0)
                continue;
            bool known = false;
            for (size_t i = 0; i < count && !known; i++)
                known = pids[i] == (pid_t)pid;
            if (known)
                continue;
            pid_t parent = s_parent_of((pid_t)pid);
            for (size_t i = 0; i < count; i++) {
                if (pids[i] == parent && count < cap) {
                    pids[count++] = (pid_t)pid;
                    grew = true;
                    break;
                }
            }
        }
        closedir(dir);
    }
    //  Drop ourselves.
    memmove(pids, pids + 1, (count - 1) * sizeof *pids);
    return count - 1;
}

// ---------------------------------------------------------------------------
//  Tests

static void test_tasks_run_in_worker_processes(void **state)
{
    (void)state;
    cf_executor_t *ex = s_new(CF_PROCESSES, &(cf_options_t){ .max_workers = 2 });
    assert_non_null(ex);
    assert_int_equal(cf_executor_max_workers(ex), 2);
    cf_future_t *fs[50];
    for (int i = 0; i < 50; i++) {
        fs[i] = cf_submit(ex, "t_square", "i", i);
        assert_non_null(fs[i]);
    }
    for (int i = 0; i < 50; i++) {
        assert_int_equal(s_int_result(fs[i]), (int64_t)i * i);
        cf_future_release(&fs[i]);
    }
    cf_future_t *f = cf_submit(ex, "t_pid", "");
    int64_t pid = s_int_result(f);
    assert_true(pid > 0);
    assert_int_not_equal(pid, getpid());
    cf_future_release(&f);
    cf_executor_destroy(&ex);
}

static void test_initializer_runs_in_each_worker(void **state)
{
    (void)state;
    static const int64_t value = 4242;
    cf_executor_t *ex = s_new(CF_PROCESSES, &(cf_options_t){ .max_workers = 2,
                                                             .initializer = s_initializer,
                                                             .initarg = (void *)&value });
    assert_non_null(ex);
    for (int i = 0; i < 4; i++) {
        cf_future_t *f = cf_submit(ex, "t_init_value", "");
        assert_int_equal(s_int_result(f), value);
        cf_future_release(&f);
    }
    assert_int_equal(s_init_value, 0);    //  never in this process
    cf_executor_destroy(&ex);
}

static void test_a_crashing_task_fails_alone_and_the_pool_lives_on(void **state)
{
    (void)state;
    enum { N = 40 };
    cf_executor_t *ex = s_new(CF_PROCESSES, &(cf_options_t){ .max_workers = 2 });
    assert_non_null(ex);
    cf_future_t *fs[N];
    cf_task_opts_t once = { .retries = 1 };
    cf_future_t *aborting = NULL, *killed = NULL;
    for (int i = 0; i < N; i++) {
        fs[i] = cf_submit(ex, "t_square", "i", i);
        assert_non_null(fs[i]);
        if (i == N / 4)
            aborting = cf_submit_with(ex, &once, "t_abort", "");
        if (i == N / 2)
            killed = cf_submit_with(ex, &once, "t_kill", "");
    }
    assert_non_null(aborting);
    assert_non_null(killed);
    for (int i = 0; i < N; i++) {
        assert_int_equal(s_int_result(fs[i]), (int64_t)i * i);
        cf_future_release(&fs[i]);
    }
    (void)cf_unitkit_expect_task_error(aborting, 60000, "WorkerLost");
    (void)cf_unitkit_expect_task_error(killed, 60000, "WorkerLost");
    cf_future_release(&aborting);
    cf_future_release(&killed);
    //  The pool still has its workers and serves new work.
    for (int i = 0; i < 10; i++) {
        cf_future_t *f = cf_submit(ex, "t_square", "i", 3);
        assert_int_equal(s_int_result(f), 9);
        cf_future_release(&f);
    }
    assert_int_equal(cf_executor_shutdown(ex, true, false), CF_OK);
    cf_progress_t p = cf_executor_progress(ex);
    assert_int_equal(p.failed, 2);
    cf_executor_destroy(&ex);
}

//  Prefetched tasks held with a task that kills its worker lose one retry
//  at most: after that they run alone, so a crash names its culprit. With
//  one retry each, every innocent finishes; the poison tasks fail after
//  two attempts. (Before, each crash used a retry of every task held, and
//  an innocent t_square failed with WorkerLost after 4 attempts.)
static void test_tasks_held_with_a_crashing_task_lose_one_retry_at_most(void **state)
{
    (void)state;
    enum { WARM = 2000, N = 60 };
    cf_executor_t *ex = s_new(CF_PROCESSES, &(cf_options_t){ .max_workers = 1 });
    assert_non_null(ex);
    s_warm_up(ex, WARM);
    cf_task_opts_t once = { .retries = 1 };
    cf_future_t *fs[N], *poison[2];
    int poisons = 0;
    for (int i = 0; i < N; i++) {
        if (i % 30 == 15) {
            poison[poisons] = cf_submit_with(ex, &once, poisons % 2 ? "t_kill" : "t_abort", "");
            poisons++;
        }
        fs[i] = cf_submit_with(ex, &once, "t_square", "i", i);
        assert_non_null(fs[i]);
    }
    for (int i = 0; i < N; i++) {
        assert_int_equal(s_int_result(fs[i]), (int64_t)i * i);
        cf_future_release(&fs[i]);
    }
    for (int i = 0; i < poisons; i++) {
        (void)cf_unitkit_expect_task_error(poison[i], 60000, "WorkerLost");
        cf_future_release(&poison[i]);
    }
    cf_executor_destroy(&ex);
}

//  The supervisor reads from the dead process's memory which task it ran:
//  only that one is charged, so innocent tasks held with a poison task run
//  even with no retries at all.
static void test_only_the_task_that_killed_its_process_is_charged(void **state)
{
    (void)state;
    enum { WARM = 2000, N = 60 };
    cf_executor_t *ex = s_new(CF_PROCESSES, &(cf_options_t){ .max_workers = 1 });
    assert_non_null(ex);
    s_warm_up(ex, WARM);
    cf_task_opts_t none = { .retries = -1 };
    cf_future_t *fs[N], *poison = NULL;
    for (int i = 0; i < N; i++) {
        if (i == N / 2)
            poison = cf_submit_with(ex, &none, "t_abort", "");
        fs[i] = cf_submit_with(ex, &none, "t_square", "i", i);
        assert_non_null(fs[i]);
    }
    for (int i = 0; i < N; i++) {
        assert_int_equal(s_int_result(fs[i]), (int64_t)i * i);
        cf_future_release(&fs[i]);
    }
    (void)cf_unitkit_expect_task_error(poison, 60000, "WorkerLost");
    cf_future_release(&poison);
    cf_executor_destroy(&ex);
}

//  The indices t_noted_sleep noted, as a bit set of n.
static void s_read_notes(bool *ran, size_t n)
{
    memset(ran, 0, n * sizeof *ran);
    FILE *file = fopen(s_note_path, "r");
    if (!file)
        return;
    long index;
    while (fscanf(file, "%ld", &index) == 1) {
        assert_true(index >= 0 && (size_t)index < n);
        assert_false(ran[index]);    //  never twice
        ran[index] = true;
    }
    fclose(file);
}

static void s_note_path_new(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(s_note_path, sizeof s_note_path, "%s/cf_notes_%d", tmp ? tmp : "/tmp", (int)getpid());
    unlink(s_note_path);
}

//  After a warm-up the workers prefetch: tasks wait in their local queues.
//  Those still count as waiting: running() is false for them, cancel()
//  returns true and they never run. (Before, 38 of 40 said running at once
//  and none could be cancelled.)
static void test_cancel_reaches_tasks_prefetched_by_workers(void **state)
{
    (void)state;
    enum { N = 40, MS = 300 };
    s_note_path_new();
    cf_executor_t *ex = s_new(CF_PROCESSES, &(cf_options_t){ .max_workers = 2 });
    assert_non_null(ex);
    s_warm_up(ex, 3000);
    cf_future_t *fs[N];
    for (int i = 0; i < N; i++) {
        fs[i] = cf_submit(ex, "t_noted_sleep", "ii", i, MS);
        assert_non_null(fs[i]);
    }
    //  Once one runs, no more than the two workers' tasks do.
    int64_t deadline = cf_clock_now_ms() + 30000;
    bool any = false;
    while (!any && cf_clock_now_ms() < deadline) {
        for (int i = 0; i < N && !any; i++)
            any = cf_future_running(fs[i]);
        if (!any)
            usleep(1000);
    }
    assert_true(any);
    int running = 0;
    for (int i = 0; i < N; i++)
        running += cf_future_running(fs[i]);
    assert_in_range(running, 1, 2);
    //  Last first: the next to begin are cancelled last.
    bool cancelled[N];
    int n_cancelled = 0;
    for (int i = N - 1; i >= 0; i--) {
        cancelled[i] = cf_future_cancel(fs[i]);
        n_cancelled += cancelled[i];
    }
    assert_int_equal(cf_executor_shutdown(ex, true, false), CF_OK);
    bool ran[N];
    s_read_notes(ran, N);
    for (int i = 0; i < N; i++) {
        if (cancelled[i]) {
            assert_true(cf_future_cancelled(fs[i]));
            assert_false(ran[i]);
        }
        else {
            assert_int_equal(s_int_result(fs[i]), i);
            assert_true(ran[i]);
        }
        cf_future_release(&fs[i]);
    }
    //  Two ran for sure; a few more only if cancelling took over MS.
    assert_true(n_cancelled >= N - 6);
    cf_executor_destroy(&ex);
    unlink(s_note_path);
}

//  shutdown(cancel_futures) and cf_map_destroy cancel what has not begun,
//  prefetched or not, as ProcessPoolExecutor does (it may hold max_workers
//  + 1 in its call queue). Before, 0 of 50 were cancelled.
static void test_shutdown_and_map_destroy_cancel_what_did_not_begin(void **state)
{
    (void)state;
    enum { N = 50, MS = 200, WORKERS = 2 };
    s_note_path_new();
    cf_executor_t *ex = s_new(CF_PROCESSES, &(cf_options_t){ .max_workers = WORKERS });
    assert_non_null(ex);
    s_warm_up(ex, 3000);
    cf_future_t *fs[N];
    for (int i = 0; i < N; i++)
        fs[i] = cf_submit(ex, "t_noted_sleep", "ii", i, MS);
    assert_int_equal(cf_future_wait(fs[0], 30000), CF_OK);
    assert_int_equal(cf_executor_shutdown(ex, true, true), CF_OK);
    bool ran[N];
    s_read_notes(ran, N);
    int n_ran = 0;
    for (int i = 0; i < N; i++) {
        n_ran += ran[i];
        assert_true(ran[i] ? cf_future_done(fs[i]) && !cf_future_cancelled(fs[i])
                           : cf_future_cancelled(fs[i]));
        cf_future_release(&fs[i]);
    }
    assert_true(n_ran <= 3 * WORKERS + 1);
    cf_executor_destroy(&ex);

    s_note_path_new();
    ex = s_new(CF_PROCESSES, &(cf_options_t){ .max_workers = WORKERS });
    assert_non_null(ex);
    s_warm_up(ex, 3000);
    int64_t inputs[N];
    for (int i = 0; i < N; i++)
        inputs[i] = i;
    cf_map_t *map = cf_map_new(ex, "t_noted_sleep", s_sleep_source, inputs,
                               &(cf_map_opts_t){ .window = N });
    assert_non_null(map);
    const cf_value_t *value;
    assert_int_equal(cf_map_next(map, &value), CF_OK);
    cf_map_destroy(&map);
    assert_int_equal(cf_executor_shutdown(ex, true, false), CF_OK);
    s_read_notes(ran, N);
    n_ran = 0;
    for (int i = 0; i < N; i++)
        n_ran += ran[i];
    assert_true(n_ran <= 3 * WORKERS + 1);
    cf_executor_destroy(&ex);
    unlink(s_note_path);
}

static void test_max_tasks_per_worker_recycles_processes(void **state)
{
    (void)state;
    enum { N = 6 };
    cf_executor_t *ex = s_new(CF_PROCESSES,
                              &(cf_options_t){ .max_workers = 1, .max_tasks_per_worker = 2 });
    assert_non_null(ex);
    int64_t pids[N];
    for (int i = 0; i < N; i++) {
        cf_future_t *f = cf_submit(ex, "t_pid", "");
        pids[i] = s_int_result(f);
        cf_future_release(&f);
    }
    //  One process at a time, two tasks each: three processes at least.
    int distinct = 0;
    for (int i = 0; i < N; i++) {
        bool seen = false;
        for (int j = 0; j < i && !seen; j++)
            seen = pids[j] == pids[i];
        distinct += !seen;
    }
    assert_true(distinct >= N / 2);
    cf_executor_destroy(&ex);
}

//  Not under AddressSanitizer: GCC 12's ASan allocator has no fork
//  handlers, so a fork while another thread is inside malloc leaves its
//  lock held in the child, and the pool's workers hang on their first
//  allocation. glibc's malloc is fork-safe; this test forks while a thread
//  pool's tasks and a first pool's actors allocate, which is its point, and
//  hung once in about ten ASan runs ("worker processes did not start").
//  So it runs as a program of its own (argument --fork-while-busy, CTest
//  entry cf_processes_test.fork_while_busy), which exits 77 under ASan:
//  CTest shows it Skipped there, never Passed.
static void test_a_process_pool_starts_while_a_thread_pool_is_busy(void **state)
{
    (void)state;
    enum { N = 4 };
    cf_executor_t *threads = s_new(CF_THREADS, &(cf_options_t){ .max_workers = N });
    assert_non_null(threads);
    cf_future_t *busy[N];
    for (int i = 0; i < N; i++)
        busy[i] = cf_submit(threads, "t_sleep_ms", "i", 300);
    cf_executor_t *procs = s_new(CF_PROCESSES, &(cf_options_t){ .max_workers = 2 });
    assert_non_null(procs);
    for (int i = 0; i < 10; i++) {
        cf_future_t *f = cf_submit(procs, "t_square", "i", i);
        assert_int_equal(s_int_result(f), (int64_t)i * i);
        cf_future_release(&f);
    }
    //  A second pool beside the first.
    cf_executor_t *procs2 = s_new(CF_PROCESSES, &(cf_options_t){ .max_workers = 1 });
    assert_non_null(procs2);
    cf_future_t *f = cf_submit(procs2, "t_square", "i", 12);
    assert_int_equal(s_int_result(f), 144);
    cf_future_release(&f);
    cf_executor_destroy(&procs2);
    cf_executor_destroy(&procs);
    for (int i = 0; i < N; i++) {
        assert_int_equal(s_int_result(busy[i]), 300);
        cf_future_release(&busy[i]);
    }
    cf_executor_destroy(&threads);
}

static void test_destroy_leaves_no_process_and_no_directory(void **state)
{
    (void)state;
    //  A private TMPDIR shows whether the pool's directory is removed.
    char tmp[] = "/tmp/cf-processes-test-XXXXXX";
    assert_non_null(mkdtemp(tmp));
    const char *old = getenv("TMPDIR");
    char *saved = old ? strdup(old) : NULL;
    setenv("TMPDIR", tmp, 1);

    cf_executor_t *ex = s_new(CF_PROCESSES, &(cf_options_t){ .max_workers = 3 });
    assert_non_null(ex);
    cf_future_t *f = cf_submit(ex, "t_square", "i", 5);
    assert_int_equal(s_int_result(f), 25);
    cf_future_release(&f);

    pid_t pids[256];
    size_t count = s_descendants(pids, 256);
    assert_true(count >= 3);    //  the workers (and the zygote)
    cf_executor_destroy(&ex);
    for (size_t i = 0; i < count; i++) {
        if (s_alive(pids[i]))
            fail_msg("process %d outlived its executor", (int)pids[i]);
    }

    DIR *dir = opendir(tmp);
    assert_non_null(dir);
    struct dirent *entry;
    int entries = 0;
    while ((entry = readdir(dir)))
        entries += strcmp(entry->d_name, ".") != 0 && strcmp(entry->d_name, "..") != 0;
    closedir(dir);
    assert_int_equal(entries, 0);
    assert_int_equal(rmdir(tmp), 0);
    if (saved) {
        setenv("TMPDIR", saved, 1);
        free(saved);
    }
    else
        unsetenv("TMPDIR");
}

static void test_new_rejects_zero_workers(void **state)
{
    (void)state;
    assert_null(cf_processes_new(NULL, 0));
    assert_int_equal(cf_last_err(), CF_EINVAL);
}

int main(int argc, char **argv)
{
    //  Crashing tasks should not leave core files behind.
    struct rlimit none = { 0, 0 };
    setrlimit(RLIMIT_CORE, &none);
    //  CF_TEST_LOG=1 shows what the broker, supervisor and client did.
    cf_unitkit_use_env();
    if (argc > 1 && strcmp(argv[1], "--fork-while-busy") == 0) {
#if CF_TEST_ASAN
        fprintf(stderr, "cf_processes_test --fork-while-busy: skipped under "
                        "AddressSanitizer (its allocator is not fork-safe)\n");
        return 77;
#endif
        const struct CMUnitTest fork_tests[] = {
            cmocka_unit_test(test_a_process_pool_starts_while_a_thread_pool_is_busy),
        };
        return cmocka_run_group_tests(fork_tests, NULL, NULL);
    }
    if (argc > 1) {
        fprintf(stderr, "usage: cf_processes_test [--fork-while-busy]\n");
        return 2;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tasks_run_in_worker_processes),
        cmocka_unit_test(test_initializer_runs_in_each_worker),
        cmocka_unit_test(test_a_crashing_task_fails_alone_and_the_pool_lives_on),
        cmocka_unit_test(test_tasks_held_with_a_crashing_task_lose_one_retry_at_most),
        cmocka_unit_test(test_only_the_task_that_killed_its_process_is_charged),
        cmocka_unit_test(test_cancel_reaches_tasks_prefetched_by_workers),
        cmocka_unit_test(test_shutdown_and_map_destroy_cancel_what_did_not_begin),
        cmocka_unit_test(test_max_tasks_per_worker_recycles_processes),
        cmocka_unit_test(test_destroy_leaves_no_process_and_no_directory),
        cmocka_unit_test(test_new_rejects_zero_workers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

//  CF_THREADS through the public API: the executor front and cf_pool.
//
//  Tasks that must be caught in the act block on a gate the test opens
//  (tests/cf_unitkit.h), which also tells the test they started, so no
//  test depends on timing; the only timeouts expected are ones nothing can
//  beat (a task blocked on a closed gate).

#define _GNU_SOURCE    //  pthread_getname_np

#include "cfutures.h"

#include "cf_clock.h"
#include "cf_executor.h"
#include "cf_registry.h"
#include "cf_unitkit.h"

#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdatomic.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

//  A hang guard for what must happen, not a timing assertion.
#define S_WAIT_MS 20000

// ---------------------------------------------------------------------------
//  Tasks

static void add(cf_call_t *call)
{
    cf_return_int(call, cf_arg_int(call, 0) + cf_arg_int(call, 1));
}
CF_TASK(add);

static void noop(cf_call_t *call)
{
    (void)call;
}
CF_TASK(noop);

static void raise_value(cf_call_t *call)
{
    cf_raise(call, "ValueError", "bad %lld", (long long)cf_arg_int(call, 0));
}
CF_TASK(raise_value);

//  Waits at the gate.
static void block(cf_call_t *call)
{
    cf_unitkit_gate_pass();
    cf_return_str(call, "unblocked");
}
CF_TASK(block);

static void thread_name(cf_call_t *call)
{
    //  Two of these meet at a barrier, so each runs on its own thread.
    pthread_barrier_t *barrier = (pthread_barrier_t *)(uintptr_t)cf_arg_uint(call, 0);
    pthread_barrier_wait(barrier);
    char name[16] = "";
    pthread_getname_np(pthread_self(), name, sizeof name);
    cf_return_str(call, name);
}
CF_TASK(thread_name);

static atomic_int s_inits;
static _Thread_local bool s_thread_inited;

static void s_initializer(void *arg)
{
    //  No cmocka asserts off the main thread (they longjmp): a wrong
    //  argument shows as a missing flag instead.
    atomic_fetch_add(&s_inits, 1);
    s_thread_inited = arg == &s_inits;
}

static void inited(cf_call_t *call)
{
    cf_return_bool(call, s_thread_inited);
}
CF_TASK(inited);

static atomic_int s_flaky_calls;

static void flaky(cf_call_t *call)
{
    //  Raises on its first two calls.
    if (atomic_fetch_add(&s_flaky_calls, 1) < 2)
        cf_raise(call, "IOError", "flaky");
    else
        cf_return_int(call, 7);
}
CF_TASK(flaky);

static cf_executor_t *s_self_ex;

static void shutdown_self(cf_call_t *call)
{
    cf_return_int(call, cf_executor_shutdown(s_self_ex, true, false));
}
CF_TASK(shutdown_self);

//  Shuts its executor down cancelling the queue, without waiting (a
//  worker cannot wait for itself).
static void cancel_queue(cf_call_t *call)
{
    cf_return_int(call, cf_executor_shutdown(s_self_ex, false, true));
}
CF_TASK(cancel_queue);

//  The order tasks started in: record appends its int argument (an id the
//  test gives) and returns it. The test reads the list only after the
//  futures are done, which orders the reads after the writes.
#define S_STARTS_MAX 2048
static int64_t s_starts[S_STARTS_MAX];
static atomic_int s_n_starts;

static void record(cf_call_t *call)
{
    int64_t id = cf_arg_int(call, 0);
    int slot = atomic_fetch_add(&s_n_starts, 1);
    if (slot < S_STARTS_MAX)
        s_starts[slot] = id;
    cf_return_int(call, id);
}
CF_TASK(record);

// ---------------------------------------------------------------------------

static cf_executor_t *s_threads(int max_workers)
{
    cf_executor_t *ex = cf_executor_new(CF_THREADS, &(cf_options_t){ .max_workers = max_workers });
    assert_non_null(ex);
    return ex;
}

//  All four progress counts of ex.
static void s_expect_progress(cf_executor_t *ex, cf_progress_t expected)
{
    cf_progress_t p = cf_executor_progress(ex);
    assert_int_equal(p.submitted, expected.submitted);
    assert_int_equal(p.done, expected.done);
    assert_int_equal(p.failed, expected.failed);
    assert_int_equal(p.cancelled, expected.cancelled);
}

//  Closes the gate and submits block; returns its future once the task
//  runs, held at the gate.
static cf_future_t *s_submit_held(cf_executor_t *ex)
{
    cf_unitkit_gate_close();
    cf_future_t *f = cf_submit(ex, "block", "");
    assert_non_null(f);
    cf_unitkit_expect_at_gate(1, S_WAIT_MS);
    return f;
}

//  Submits record(id) at priority for ids first..first+n-1.
static void s_submit_records(cf_executor_t *ex, cf_future_t **fs, int64_t first, int n,
                             int priority)
{
    for (int i = 0; i < n; i++) {
        fs[i] = cf_submit_with(ex, &(cf_task_opts_t){ .priority = priority }, "record", "L",
                               first + i);
        assert_non_null(fs[i]);
    }
}

//  Expects the record tasks since the last reset to have started with the
//  ids of expected, in that order.
static void s_expect_starts(const int64_t *expected, int n)
{
    assert_int_equal(atomic_load(&s_n_starts), n);
    for (int i = 0; i < n; i++)
        if (s_starts[i] != expected[i])
            fail_msg("start %d: record(%lld), expected record(%lld)", i, (long long)s_starts[i],
                     (long long)expected[i]);
}

static void test_submit_returns_the_result(void **state)
{
    (void)state;
    cf_executor_t *ex = s_threads(2);
    assert_int_equal(cf_executor_kind(ex), CF_THREADS);
    assert_int_equal(cf_executor_max_workers(ex), 2);
    cf_future_t *f = cf_submit(ex, "add", "ii", 2, 3);
    assert_non_null(f);
    assert_string_equal(cf_future_function(f), "add");
    int64_t value = 0;
    assert_int_equal(cf_future_int(f, -1, &value), CF_OK);
    assert_int_equal(value, 5);
    assert_false(cf_future_cancel(f));
    cf_future_release(&f);
    cf_executor_destroy(&ex);
    assert_null(ex);
    cf_executor_destroy(&ex);
}

static void test_task_error_says_what_and_where(void **state)
{
    (void)state;
    cf_executor_t *ex = s_threads(1);
    cf_future_t *f = cf_submit(ex, "raise_value", "i", 7);
    assert_int_equal(cf_future_result(f, -1, NULL), CF_ETASK);
    const cf_task_error_t *error = cf_future_error(f);
    assert_non_null(error);
    assert_string_equal(error->type, "ValueError");
    assert_string_equal(error->message, "bad 7");
    assert_string_equal(error->function, "raise_value");
    assert_string_equal(error->host, cf_registry_hostname());
    assert_int_equal(error->pid, getpid());
    cf_future_release(&f);

    f = cf_submit(ex, "no_such_task", "");
    assert_int_equal(cf_future_result(f, -1, NULL), CF_ETASK);
    assert_string_equal(cf_future_error(f)->type, "UnknownFunction");
    cf_future_release(&f);

    f = cf_submit(ex, "add", "is", 1, "two");
    assert_int_equal(cf_future_result(f, -1, NULL), CF_ETASK);
    assert_string_equal(cf_future_error(f)->type, "TypeError");
    cf_future_release(&f);
    cf_executor_destroy(&ex);
}

static void test_options_are_validated_with_clear_messages(void **state)
{
    (void)state;
    assert_null(cf_executor_new(CF_THREADS, &(cf_options_t){ .max_workers = -2 }));
    assert_int_equal(cf_last_err(), CF_EINVAL);
    assert_string_equal(cf_last_error(), "max_workers must be > 0 (or 0 for the default), got -2");
    assert_null(cf_executor_new(CF_THREADS, &(cf_options_t){ .timeout_ms = -5 }));
    assert_int_equal(cf_last_err(), CF_EINVAL);
    assert_string_equal(cf_last_error(), "timeout_ms must be > 0 (or 0 for none), got -5");
    assert_null(cf_executor_new((cf_kind_t)9, NULL));
    assert_int_equal(cf_last_err(), CF_EINVAL);
    assert_null(cf_executor_new(CF_REMOTE, NULL));
    assert_int_equal(cf_last_err(), CF_EINVAL);
    assert_string_equal(cf_kind_name(CF_THREADS), "threads");
    assert_string_equal(cf_kind_name(CF_PROCESSES), "processes");
    assert_string_equal(cf_kind_name(CF_REMOTE), "remote");
}

static void test_default_workers_follow_python(void **state)
{
    (void)state;
    cf_executor_t *ex = cf_executor_new(CF_THREADS, NULL);
    assert_non_null(ex);
    int cores = cf_executor_cores();
    assert_true(cores >= 1);
    assert_int_equal(cf_executor_max_workers(ex), cores + 4 < 32 ? cores + 4 : 32);
    cf_executor_destroy(&ex);
}

static void test_cancel_removes_a_queued_task_only(void **state)
{
    (void)state;
    cf_executor_t *ex = s_threads(1);
    cf_future_t *running = s_submit_held(ex);
    cf_future_t *queued = cf_submit(ex, "add", "ii", 1, 1);
    assert_true(cf_future_running(running));
    assert_false(cf_future_running(queued));
    assert_true(cf_future_cancel(queued));
    assert_true(cf_future_cancelled(queued));
    assert_int_equal(cf_future_result(queued, -1, NULL), CF_ECANCELLED);
    assert_false(cf_future_cancel(running));
    cf_unitkit_gate_open();
    const char *text = NULL;
    assert_int_equal(cf_future_str(running, -1, &text), CF_OK);
    assert_string_equal(text, "unblocked");
    assert_int_equal(cf_executor_shutdown(ex, true, false), CF_OK);
    s_expect_progress(ex,
                      (cf_progress_t){ .submitted = 2, .done = 2, .failed = 0, .cancelled = 1 });
    cf_future_release(&running);
    cf_future_release(&queued);
    cf_executor_destroy(&ex);
}

static void test_shutdown_cancel_futures_cancels_the_queue(void **state)
{
    (void)state;
    cf_executor_t *ex = s_threads(1);
    cf_future_t *running = s_submit_held(ex);
    cf_future_t *queued[5];
    for (int i = 0; i < 5; i++)
        queued[i] = cf_submit(ex, "add", "ii", i, i);
    assert_int_equal(cf_executor_shutdown(ex, false, true), CF_OK);
    for (int i = 0; i < 5; i++)
        assert_true(cf_future_cancelled(queued[i]));
    assert_true(cf_future_running(running));
    cf_unitkit_gate_open();
    assert_int_equal(cf_executor_shutdown(ex, true, false), CF_OK);
    assert_int_equal(cf_executor_shutdown(ex, true, true), CF_OK);    //  twice: fine
    assert_int_equal(cf_future_state(running), CF_FUTURE_FINISHED);
    cf_progress_t p = cf_executor_progress(ex);
    assert_int_equal(p.submitted, 6);
    assert_int_equal(p.done, 6);
    assert_int_equal(p.cancelled, 5);
    cf_future_release(&running);
    cf_unitkit_release_all(queued, 5);
    cf_executor_destroy(&ex);
}

static void test_submit_after_shutdown_is_refused(void **state)
{
    (void)state;
    cf_executor_t *ex = s_threads(1);
    assert_int_equal(cf_executor_shutdown(ex, false, false), CF_OK);
    assert_null(cf_submit(ex, "add", "ii", 1, 2));
    assert_int_equal(cf_last_err(), CF_ESHUTDOWN);
    assert_string_equal(cf_last_error(), "cannot submit add: the executor is shut down");
    assert_null(cf_submit_raw(ex, NULL, "noop", "\x90", 1));
    assert_int_equal(cf_last_err(), CF_ESHUTDOWN);
    assert_int_equal(cf_executor_progress(ex).submitted, 0);
    cf_executor_destroy(&ex);
}

static void test_bad_submissions_are_refused(void **state)
{
    (void)state;
    cf_executor_t *ex = s_threads(1);
    assert_null(cf_submit(ex, "add", "i?", 1));
    assert_int_equal(cf_last_err(), CF_EINVAL);
    assert_null(cf_submit(ex, "", ""));
    assert_int_equal(cf_last_err(), CF_EINVAL);
    assert_null(cf_submit(ex, NULL, ""));
    assert_int_equal(cf_last_err(), CF_EINVAL);
    assert_null(cf_submit_raw(ex, NULL, "noop", "\x01", 1));    //  not an array
    assert_int_equal(cf_last_err(), CF_EINVAL);
    assert_null(cf_submit_raw(ex, NULL, "noop", "\x92\x01", 2));    //  truncated
    assert_int_equal(cf_last_err(), CF_EINVAL);
    size_t big = 64u * 1024 * 1024 + 1;
    void *bytes = calloc(1, big);
    assert_non_null(bytes);
    assert_null(cf_submit(ex, "noop", "y", bytes, big));
    assert_int_equal(cf_last_err(), CF_ETOOBIG);
    free(bytes);

    cf_future_t *f = cf_submit_raw(ex, NULL, "add", "\x92\x01\x02", 3);
    int64_t value;
    assert_int_equal(cf_future_int(f, -1, &value), CF_OK);
    assert_int_equal(value, 3);
    cf_future_release(&f);
    assert_int_equal(cf_executor_progress(ex).submitted, 1);
    cf_executor_destroy(&ex);
}

static void test_initializer_runs_once_per_thread(void **state)
{
    (void)state;
    atomic_store(&s_inits, 0);
    cf_executor_t *ex = cf_executor_new(
        CF_THREADS,
        &(cf_options_t){ .max_workers = 3, .initializer = s_initializer, .initarg = &s_inits });
    assert_non_null(ex);
    cf_future_t *fs[20];
    for (int i = 0; i < 20; i++)
        fs[i] = cf_submit(ex, "inited", "");
    for (int i = 0; i < 20; i++) {
        bool flag = false;
        assert_int_equal(cf_future_bool(fs[i], -1, &flag), CF_OK);
        assert_true(flag);
        cf_future_release(&fs[i]);
    }
    cf_executor_destroy(&ex);
    assert_int_equal(atomic_load(&s_inits), 3);
}

static void s_check_names(const char *prefix, const char *expected_a, const char *expected_b)
{
    cf_options_t opts = { .max_workers = 2, .thread_name_prefix = prefix };
    cf_executor_t *ex = cf_executor_new(CF_THREADS, &opts);
    assert_non_null(ex);
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, 2);
    cf_future_t *a = cf_submit(ex, "thread_name", "U", (uint64_t)(uintptr_t)&barrier);
    cf_future_t *b = cf_submit(ex, "thread_name", "U", (uint64_t)(uintptr_t)&barrier);
    const char *name_a, *name_b;
    assert_int_equal(cf_future_str(a, -1, &name_a), CF_OK);
    assert_int_equal(cf_future_str(b, -1, &name_b), CF_OK);
    if (strcmp(name_a, name_b) > 0) {
        const char *swap = name_a;
        name_a = name_b;
        name_b = swap;
    }
    assert_string_equal(name_a, expected_a);
    assert_string_equal(name_b, expected_b);
    cf_future_release(&a);
    cf_future_release(&b);
    cf_executor_destroy(&ex);
    pthread_barrier_destroy(&barrier);
}

static void test_threads_are_named_prefix_n(void **state)
{
    (void)state;
    s_check_names(NULL, "cf-worker-0", "cf-worker-1");
    s_check_names("fetch", "fetch-0", "fetch-1");
    //  Linux allows 15 bytes: the prefix is cut, never the number.
    s_check_names("a-very-long-prefix", "a-very-long-p-0", "a-very-long-p-1");
}

static void test_task_timeout_fails_the_future_at_the_deadline(void **state)
{
    (void)state;
    cf_unitkit_gate_close();
    cf_executor_t *ex = s_threads(1);
    cf_future_t *f = cf_submit_with(ex, &(cf_task_opts_t){ .timeout_ms = 20 }, "block", "");
    assert_int_equal(cf_future_result(f, -1, NULL), CF_ETASK);
    const cf_task_error_t *error = cf_future_error(f);
    assert_string_equal(error->type, "TimeoutError");
    assert_string_equal(error->function, "block");
    //  The thread finishes the task; its late result is dropped.
    cf_unitkit_gate_open();
    cf_future_t *next = cf_submit(ex, "add", "ii", 20, 22);
    int64_t value;
    assert_int_equal(cf_future_int(next, -1, &value), CF_OK);
    assert_int_equal(value, 42);
    assert_int_equal(cf_future_state(f), CF_FUTURE_FAILED);
    assert_string_equal(cf_future_error(f)->type, "TimeoutError");
    cf_future_release(&f);
    cf_future_release(&next);
    cf_executor_destroy(&ex);
}

static void test_executor_timeout_is_the_task_default(void **state)
{
    (void)state;
    cf_unitkit_gate_close();
    cf_executor_t *ex = cf_executor_new(CF_THREADS,
                                        &(cf_options_t){ .max_workers = 1, .timeout_ms = 10 });
    cf_future_t *f = cf_submit(ex, "block", "");
    assert_int_equal(cf_future_result(f, -1, NULL), CF_ETASK);
    assert_string_equal(cf_future_error(f)->type, "TimeoutError");
    cf_future_release(&f);
    cf_unitkit_gate_open();    //  the single thread is still in the task
    //  A per-task timeout of -1 means none, overriding the default.
    cf_future_t *quick = cf_submit_with(ex, &(cf_task_opts_t){ .timeout_ms = -1 }, "add", "ii", 1,
                                        1);
    assert_int_equal(cf_future_result(quick, -1, NULL), CF_OK);
    cf_future_release(&quick);
    cf_executor_destroy(&ex);
}

static void test_retry_on_error_retries_a_raising_task(void **state)
{
    (void)state;
    cf_executor_t *ex = s_threads(1);
    atomic_store(&s_flaky_calls, 0);
    cf_future_t *f = cf_submit_with(ex, &(cf_task_opts_t){ .retries = 2, .retry_on_error = true },
                                    "flaky", "");
    int64_t value;
    assert_int_equal(cf_future_int(f, -1, &value), CF_OK);
    assert_int_equal(value, 7);
    assert_int_equal(atomic_load(&s_flaky_calls), 3);
    cf_future_release(&f);

    //  Without retry_on_error a raise is final (retries are for lost workers).
    atomic_store(&s_flaky_calls, 0);
    f = cf_submit_with(ex, &(cf_task_opts_t){ .retries = 2 }, "flaky", "");
    assert_int_equal(cf_future_result(f, -1, NULL), CF_ETASK);
    assert_string_equal(cf_future_error(f)->type, "IOError");
    assert_int_equal(atomic_load(&s_flaky_calls), 1);
    cf_future_release(&f);

    //  Too few retries: the last error is the one reported.
    atomic_store(&s_flaky_calls, 0);
    f = cf_submit_with(ex, &(cf_task_opts_t){ .retries = 1, .retry_on_error = true }, "flaky", "");
    assert_int_equal(cf_future_result(f, -1, NULL), CF_ETASK);
    assert_int_equal(atomic_load(&s_flaky_calls), 2);
    cf_future_release(&f);
    cf_executor_destroy(&ex);
}

static atomic_int s_progress_calls;

static void s_on_progress(const cf_progress_t *p, void *arg)
{
    (void)arg;
    atomic_fetch_add(&s_progress_calls, 1);
    (void)p;
}

static void test_progress_counts_every_outcome(void **state)
{
    (void)state;
    cf_executor_t *ex = s_threads(3);
    atomic_store(&s_progress_calls, 0);
    cf_executor_on_progress(ex, s_on_progress, NULL);
    cf_future_t *fs[10];
    for (int i = 0; i < 10; i++)
        fs[i] = i % 4 == 0 ? cf_submit(ex, "raise_value", "i", i) : cf_submit(ex, "noop", "");
    assert_int_equal(cf_executor_shutdown(ex, true, false), CF_OK);
    s_expect_progress(ex,
                      (cf_progress_t){ .submitted = 10, .done = 10, .failed = 3, .cancelled = 0 });
    assert_int_equal(atomic_load(&s_progress_calls), 10);
    cf_unitkit_release_all(fs, 10);
    cf_executor_destroy(&ex);
}

//  A slow hook whose arg dies as soon as the hook is replaced: it records
//  any call that starts after that.
typedef struct {
    atomic_bool retired;    //  cf_executor_on_progress(ex, NULL) returned
    atomic_int calls;
    atomic_int late_calls;    //  calls that began or ended after retirement
} s_slow_hook_t;

static void s_slow_progress(const cf_progress_t *p, void *arg)
{
    s_slow_hook_t *hook = arg;
    (void)p;
    if (atomic_load(&hook->retired))
        atomic_fetch_add(&hook->late_calls, 1);
    atomic_fetch_add(&hook->calls, 1);
    usleep(200);
    if (atomic_load(&hook->retired))
        atomic_fetch_add(&hook->late_calls, 1);
}

static void test_a_replaced_progress_hook_is_never_called_again(void **state)
{
    (void)state;
    cf_executor_t *ex = s_threads(4);
    s_slow_hook_t hook = { 0 };
    cf_executor_on_progress(ex, s_slow_progress, &hook);
    enum { N = 2000 };
    cf_future_t **fs = calloc(N, sizeof *fs);
    assert_non_null(fs);
    for (int i = 0; i < N; i++)
        assert_non_null(fs[i] = cf_submit(ex, "noop", ""));
    //  Retire the hook while completions are calling it.
    while (atomic_load(&hook.calls) < 10)
        sched_yield();
    cf_executor_on_progress(ex, NULL, NULL);
    atomic_store(&hook.retired, true);
    assert_int_equal(cf_executor_shutdown(ex, true, false), CF_OK);
    assert_int_equal(atomic_load(&hook.late_calls), 0);
    assert_true(atomic_load(&hook.calls) < N);
    cf_unitkit_release_all(fs, N);
    free(fs);
    cf_executor_destroy(&ex);
}

static void test_destroy_waits_for_queued_work_and_futures_outlive_it(void **state)
{
    (void)state;
    cf_executor_t *ex = s_threads(1);
    cf_future_t *fs[50];
    for (int i = 0; i < 50; i++)
        fs[i] = cf_submit(ex, "add", "ii", i, 1);
    cf_executor_destroy(&ex);
    for (int i = 0; i < 50; i++) {
        int64_t value;
        assert_int_equal(cf_future_int(fs[i], 0, &value), CF_OK);
        assert_int_equal(value, i + 1);
        cf_future_release(&fs[i]);
    }
}

static void test_shutdown_waiting_from_its_own_thread_is_refused(void **state)
{
    (void)state;
    s_self_ex = s_threads(1);
    cf_future_t *f = cf_submit(s_self_ex, "shutdown_self", "");
    int64_t rc;
    assert_int_equal(cf_future_int(f, -1, &rc), CF_OK);
    assert_int_equal(rc, CF_EINVAL);
    cf_future_release(&f);
    cf_executor_destroy(&s_self_ex);
}

static int s_count_done(cf_future_t *f, void *arg)
{
    (void)f;
    atomic_fetch_add((atomic_int *)arg, 1);
    return 0;
}

static void test_many_tasks_all_resolve(void **state)
{
    (void)state;
    enum { COUNT = 20000 };
    cf_executor_t *ex = s_threads(4);
    cf_future_t **fs = calloc(COUNT, sizeof *fs);
    atomic_int callbacks = 0;
    for (int i = 0; i < COUNT; i++) {
        fs[i] = cf_submit(ex, "noop", "");
        assert_non_null(fs[i]);
        assert_int_equal(cf_future_add_done_callback(fs[i], s_count_done, &callbacks), CF_OK);
    }
    for (int i = 0; i < COUNT; i++) {
        const cf_value_t *value;
        assert_int_equal(cf_future_result(fs[i], -1, &value), CF_OK);
        assert_int_equal(cf_value_type(value), CF_TYPE_NIL);
        cf_future_release(&fs[i]);
    }
    cf_executor_destroy(&ex);
    assert_int_equal(atomic_load(&callbacks), COUNT);
    free(fs);
}

typedef struct {
    cf_executor_t *ex;
    cf_future_t *f;
    atomic_bool returned;
} s_submitter_t;

static void *s_submit_in_thread(void *arg)
{
    s_submitter_t *sub = arg;
    sub->f = cf_submit(sub->ex, "noop", "");
    atomic_store(&sub->returned, true);
    return NULL;
}

//  options.max_outstanding bounds the tasks not done: over it, a submission
//  fails with CF_EBUSY (fail_when_full) or waits until a task is done; a
//  shutdown ends the wait with CF_ESHUTDOWN.
static void test_max_outstanding_bounds_tasks_not_done(void **state)
{
    (void)state;
    cf_executor_t *ex = cf_executor_new(
        CF_THREADS,
        &(cf_options_t){ .max_workers = 2, .max_outstanding = 2, .fail_when_full = true });
    assert_non_null(ex);
    cf_unitkit_gate_close();
    cf_future_t *held[2] = { cf_submit(ex, "block", ""), cf_submit(ex, "block", "") };
    assert_non_null(held[0]);
    assert_non_null(held[1]);
    cf_unitkit_expect_at_gate(2, S_WAIT_MS);
    assert_null(cf_submit(ex, "noop", ""));
    assert_int_equal(cf_last_err(), CF_EBUSY);
    cf_unitkit_gate_open();
    for (int i = 0; i < 2; i++) {
        assert_int_equal(cf_future_wait(held[i], S_WAIT_MS), CF_OK);
        cf_future_release(&held[i]);
    }
    //  A future is done before its completion hook gives its slot back;
    //  the hook counts it done (progress) after giving the slot.
    int64_t deadline = cf_clock_now_ms() + S_WAIT_MS;
    while (cf_executor_progress(ex).done < 2 && cf_clock_now_ms() < deadline)
        usleep(1000);
    cf_future_t *f = cf_submit(ex, "noop", "");
    assert_non_null(f);
    assert_int_equal(cf_future_wait(f, S_WAIT_MS), CF_OK);
    cf_future_release(&f);
    cf_executor_destroy(&ex);

    //  Waiting: the third submission returns only once a held task is done.
    ex = cf_executor_new(CF_THREADS, &(cf_options_t){ .max_workers = 2, .max_outstanding = 2 });
    assert_non_null(ex);
    cf_unitkit_gate_close();
    held[0] = cf_submit(ex, "block", "");
    held[1] = cf_submit(ex, "block", "");
    cf_unitkit_expect_at_gate(2, S_WAIT_MS);
    s_submitter_t sub = { .ex = ex };
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, s_submit_in_thread, &sub), 0);
    //  Not a timing check: it cannot return while both tasks are held.
    usleep(50 * 1000);
    assert_false(atomic_load(&sub.returned));
    cf_unitkit_gate_open();
    assert_int_equal(pthread_join(thread, NULL), 0);
    assert_non_null(sub.f);
    assert_true(cf_future_done(held[0]) || cf_future_done(held[1]));
    //  Both past the gate before it closes again: a task woken by the open
    //  gate but not yet past it would wait at the closed one.
    for (int i = 0; i < 2; i++)
        assert_int_equal(cf_future_wait(held[i], S_WAIT_MS), CF_OK);
    assert_int_equal(cf_future_wait(sub.f, S_WAIT_MS), CF_OK);
    cf_future_release(&sub.f);
    cf_unitkit_release_all(held, 2);

    //  A shutdown wakes a waiting submitter, which then fails.
    cf_unitkit_gate_close();
    held[0] = cf_submit(ex, "block", "");
    held[1] = cf_submit(ex, "block", "");
    cf_unitkit_expect_at_gate(2, S_WAIT_MS);
    sub = (s_submitter_t){ .ex = ex };
    assert_int_equal(pthread_create(&thread, NULL, s_submit_in_thread, &sub), 0);
    usleep(50 * 1000);
    assert_int_equal(cf_executor_shutdown(ex, false, false), CF_OK);
    assert_int_equal(pthread_join(thread, NULL), 0);
    assert_null(sub.f);
    cf_unitkit_gate_open();
    cf_unitkit_release_all(held, 2);
    cf_executor_destroy(&ex);
    assert_null(cf_executor_new(CF_THREADS, &(cf_options_t){ .max_outstanding = -1 }));
    assert_int_equal(cf_last_err(), CF_EINVAL);
}

//  The single worker is held while low tasks then high ones queue: every
//  high one starts before any low one, each priority in submission order.
static void test_higher_priority_starts_first(void **state)
{
    (void)state;
    atomic_store(&s_n_starts, 0);
    cf_executor_t *ex = s_threads(1);
    cf_future_t *held = s_submit_held(ex);
    cf_future_t *fs[10];
    s_submit_records(ex, fs, 0, 5, 0);
    s_submit_records(ex, fs + 5, 100, 5, 3);
    cf_unitkit_gate_open();
    for (int i = 0; i < 10; i++)
        cf_unitkit_expect_int(fs[i], S_WAIT_MS);
    static const int64_t expected[] = { 100, 101, 102, 103, 104, 0, 1, 2, 3, 4 };
    s_expect_starts(expected, 10);
    assert_int_equal(cf_future_wait(held, S_WAIT_MS), CF_OK);
    cf_future_release(&held);
    cf_unitkit_release_all(fs, 10);
    cf_executor_destroy(&ex);
}

//  Below the default and down to INT_MIN, and INT_MAX above everything.
static void test_negative_priorities_start_after_the_default(void **state)
{
    (void)state;
    atomic_store(&s_n_starts, 0);
    cf_executor_t *ex = s_threads(1);
    cf_future_t *held = s_submit_held(ex);
    cf_future_t *fs[7];
    s_submit_records(ex, fs, 0, 1, -1);
    s_submit_records(ex, fs + 1, 1, 1, INT_MIN);
    s_submit_records(ex, fs + 2, 2, 1, -5);
    s_submit_records(ex, fs + 3, 3, 1, 0);
    s_submit_records(ex, fs + 4, 4, 1, -1);
    s_submit_records(ex, fs + 5, 5, 1, INT_MAX);
    s_submit_records(ex, fs + 6, 6, 1, INT_MIN);
    cf_unitkit_gate_open();
    for (int i = 0; i < 7; i++)
        cf_unitkit_expect_int(fs[i], S_WAIT_MS);
    static const int64_t expected[] = { 5, 3, 0, 4, 2, 1, 6 };
    s_expect_starts(expected, 7);
    assert_int_equal(cf_future_wait(held, S_WAIT_MS), CF_OK);
    cf_future_release(&held);
    cf_unitkit_release_all(fs, 7);
    cf_executor_destroy(&ex);
}

//  A task submitted without options has the default priority, 0, whatever
//  the task whose memory it reuses had: tasks of priority 9 run and are
//  freed first, so their blocks are what the next submissions get.
static void test_a_task_without_options_has_priority_0(void **state)
{
    (void)state;
    enum { WARM = 32 };
    cf_executor_t *ex = s_threads(1);
    cf_future_t *fs[WARM];
    s_submit_records(ex, fs, 0, WARM, 9);
    for (int i = 0; i < WARM; i++)
        cf_unitkit_expect_int(fs[i], S_WAIT_MS);
    cf_unitkit_release_all(fs, WARM);
    atomic_store(&s_n_starts, 0);
    cf_future_t *held = s_submit_held(ex);
    s_submit_records(ex, fs, 0, 1, 1);
    for (int i = 1; i < 4; i++) {
        fs[i] = cf_submit(ex, "record", "L", (int64_t)i);
        assert_non_null(fs[i]);
    }
    s_submit_records(ex, fs + 4, 4, 1, -1);
    cf_unitkit_gate_open();
    for (int i = 0; i < 5; i++)
        cf_unitkit_expect_int(fs[i], S_WAIT_MS);
    static const int64_t expected[] = { 0, 1, 2, 3, 4 };
    s_expect_starts(expected, 5);
    assert_int_equal(cf_future_wait(held, S_WAIT_MS), CF_OK);
    cf_future_release(&held);
    cf_unitkit_release_all(fs, 5);
    cf_executor_destroy(&ex);
}

//  Many priorities queued at once, in a scrambled order, twice on one
//  executor: the start order is the submission order sorted by priority,
//  highest first, stably.
static void test_many_priorities_start_in_a_stable_order(void **state)
{
    (void)state;
    enum { N = 600 };
    cf_executor_t *ex = s_threads(1);
    cf_future_t **fs = calloc(N, sizeof *fs);
    int *priorities = calloc(N, sizeof *priorities);
    int64_t *expected = calloc(N, sizeof *expected);
    assert_non_null(fs);
    assert_non_null(priorities);
    assert_non_null(expected);
    uint32_t seed = 12345;
    for (int round = 0; round < 2; round++) {
        atomic_store(&s_n_starts, 0);
        cf_future_t *held = s_submit_held(ex);
        for (int i = 0; i < N; i++) {
            seed = seed * 1103515245u + 12345u;
            //  Forty levels in round 0, five in round 1 (levels come and go).
            priorities[i] = (int)((seed >> 16) % (round == 0 ? 40 : 5)) - 20;
            s_submit_records(ex, &fs[i], i, 1, priorities[i]);
        }
        cf_unitkit_gate_open();
        for (int i = 0; i < N; i++)
            cf_unitkit_expect_int(fs[i], S_WAIT_MS);
        //  Insertion sort: stable, and N is small.
        for (int i = 0; i < N; i++) {
            int j = i;
            while (j > 0 && priorities[expected[j - 1]] < priorities[i]) {
                expected[j] = expected[j - 1];
                j--;
            }
            expected[j] = i;
        }
        s_expect_starts(expected, N);
        assert_int_equal(cf_future_wait(held, S_WAIT_MS), CF_OK);
        cf_future_release(&held);
        cf_unitkit_release_all(fs, N);
    }
    cf_executor_destroy(&ex);
    free(fs);
    free(priorities);
    free(expected);
}

static int s_ids_from_100(void *state, size_t index, cf_args_t *args)
{
    (void)state;
    if (index >= 5)
        return 0;
    return cf_args_add_int(args, 100 + (int64_t)index) == CF_OK ? 1 : -1;
}

//  map's task options reach every input: its tasks overtake default ones
//  queued before it.
static void test_map_task_priority_applies_to_every_input(void **state)
{
    (void)state;
    atomic_store(&s_n_starts, 0);
    cf_executor_t *ex = s_threads(1);
    cf_future_t *held = s_submit_held(ex);
    cf_future_t *fs[3];
    s_submit_records(ex, fs, 0, 3, 0);
    //  The window (64) takes the five inputs at once.
    cf_map_t *map = cf_map_new(ex, "record", s_ids_from_100, NULL,
                               &(cf_map_opts_t){ .task = { .priority = 2 } });
    assert_non_null(map);
    cf_unitkit_gate_open();
    for (int64_t i = 0;; i++) {
        const cf_value_t *value = NULL;
        cf_err_t rc = cf_map_next(map, &value);
        if (rc == CF_ESTOP) {
            assert_int_equal(i, 5);
            break;
        }
        assert_int_equal(rc, CF_OK);
        int64_t id = -1;
        assert_int_equal(cf_value_get_int(value, &id), CF_OK);
        assert_int_equal(id, 100 + i);
    }
    cf_map_destroy(&map);
    for (int i = 0; i < 3; i++)
        cf_unitkit_expect_int(fs[i], S_WAIT_MS);
    static const int64_t expected[] = { 100, 101, 102, 103, 104, 0, 1, 2 };
    s_expect_starts(expected, 8);
    assert_int_equal(cf_future_wait(held, S_WAIT_MS), CF_OK);
    cf_future_release(&held);
    cf_unitkit_release_all(fs, 3);
    cf_executor_destroy(&ex);
}

//  A highest-priority task that shuts the executor down with
//  cancel_futures starts first and cancels every task of every level below
//  it; none of them runs.
static void test_shutdown_cancel_futures_cancels_every_level(void **state)
{
    (void)state;
    enum { PER_LEVEL = 4, LEVELS = 4, N = PER_LEVEL * LEVELS };
    static const int priorities[LEVELS] = { -2, 0, 3, 7 };
    atomic_store(&s_n_starts, 0);
    s_self_ex = s_threads(1);
    cf_future_t *held = s_submit_held(s_self_ex);
    cf_future_t *fs[N];
    //  Levels interleaved, so each ring holds tasks submitted apart.
    for (int i = 0; i < PER_LEVEL; i++)
        for (int l = 0; l < LEVELS; l++)
            s_submit_records(s_self_ex, &fs[i * LEVELS + l], i * LEVELS + l, 1, priorities[l]);
    cf_future_t *stop = cf_submit_with(s_self_ex, &(cf_task_opts_t){ .priority = 8 },
                                       "cancel_queue", "");
    assert_non_null(stop);
    cf_unitkit_gate_open();
    assert_int_equal(cf_unitkit_expect_int(stop, S_WAIT_MS), CF_OK);
    for (int i = 0; i < N; i++)
        assert_true(cf_future_cancelled(fs[i]));
    assert_int_equal(atomic_load(&s_n_starts), 0);
    assert_int_equal(cf_executor_shutdown(s_self_ex, true, false), CF_OK);
    s_expect_progress(
        s_self_ex,
        (cf_progress_t){ .submitted = N + 2, .done = N + 2, .failed = 0, .cancelled = N });
    assert_null(cf_submit_with(s_self_ex, &(cf_task_opts_t){ .priority = 1 }, "noop", ""));
    assert_int_equal(cf_last_err(), CF_ESHUTDOWN);
    cf_future_release(&held);
    cf_future_release(&stop);
    cf_unitkit_release_all(fs, N);
    cf_executor_destroy(&s_self_ex);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_submit_returns_the_result),
        cmocka_unit_test(test_task_error_says_what_and_where),
        cmocka_unit_test(test_options_are_validated_with_clear_messages),
        cmocka_unit_test(test_default_workers_follow_python),
        cmocka_unit_test(test_cancel_removes_a_queued_task_only),
        cmocka_unit_test(test_shutdown_cancel_futures_cancels_the_queue),
        cmocka_unit_test(test_submit_after_shutdown_is_refused),
        cmocka_unit_test(test_bad_submissions_are_refused),
        cmocka_unit_test(test_initializer_runs_once_per_thread),
        cmocka_unit_test(test_threads_are_named_prefix_n),
        cmocka_unit_test(test_task_timeout_fails_the_future_at_the_deadline),
        cmocka_unit_test(test_executor_timeout_is_the_task_default),
        cmocka_unit_test(test_retry_on_error_retries_a_raising_task),
        cmocka_unit_test(test_progress_counts_every_outcome),
        cmocka_unit_test(test_a_replaced_progress_hook_is_never_called_again),
        cmocka_unit_test(test_destroy_waits_for_queued_work_and_futures_outlive_it),
        cmocka_unit_test(test_shutdown_waiting_from_its_own_thread_is_refused),
        cmocka_unit_test(test_many_tasks_all_resolve),
        cmocka_unit_test(test_max_outstanding_bounds_tasks_not_done),
        cmocka_unit_test(test_higher_priority_starts_first),
        cmocka_unit_test(test_negative_priorities_start_after_the_default),
        cmocka_unit_test(test_a_task_without_options_has_priority_0),
        cmocka_unit_test(test_many_priorities_start_in_a_stable_order),
        cmocka_unit_test(test_map_task_priority_applies_to_every_input),
        cmocka_unit_test(test_shutdown_cancel_futures_cancels_every_level),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

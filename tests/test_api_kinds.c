//  The whole concurrent.futures API on every executor kind, with one test
//  body per behaviour: each body runs on CF_THREADS, CF_PROCESSES and
//  CF_REMOTE (a real cf-broker with two cf-workers of one thread each), so a
//  behaviour that holds on one kind and not on another shows up as one
//  failing (behaviour, kind) pair.
//
//  The task functions are the example library's, #included here so that the
//  program's own threads and forked worker processes find them by name, as
//  the remote workers find them in libexample_tasks.so. Every kind runs two
//  tasks at once, so two "gate" tasks occupy all of it: gate creates a file
//  when it starts and waits for a release file, which orders the tests'
//  steps across processes without sleeping. Nothing here asserts a duration.

#define _GNU_SOURCE    //  program_invocation_short_name

#include "cf_sanitize.h"
#include "cf_testkit.h"

#include "../examples/tasks_example.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

//  Tasks at once on every kind: max_workers, or two workers of one thread.
#define S_SLOTS    2
//  A wait that must end (a gate's release lets it end): only bounds a hang.
#define S_LONG_MS  CF_TESTKIT_DEADLINE_MS
//  A timeout that must pass (nothing can finish while the gates are shut).
#define S_SHORT_MS 50
//  How long a gate may take to start on a free slot (a hang bound: a gate
//  that has not started by then never will before the release).
#define S_START_MS 20000

typedef struct s_fixture s_fixture_t;
typedef void(s_body_fn)(s_fixture_t *fx);

//  One (behaviour, kind) pair: cmocka's initial state of the test.
typedef struct {
    s_body_fn *body;
    cf_kind_t kind;
} s_case_t;

struct s_fixture {
    const s_case_t *test;
    cf_testkit_t *kit;
    cf_executor_t *ex;                //  made by s_executor
    cf_testkit_proc_t *workers[2];    //  CF_REMOTE only
    int gates;                        //  gate names handed out
};

// ---------------------------------------------------------------------------
//  Fixture

static int s_setup(void **state)
{
    s_fixture_t *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    fx->test = *state;
    fx->kit = cf_testkit_new(program_invocation_short_name);
    if (!fx->kit) {
        fprintf(stderr, "cannot create a test directory: %s\n", strerror(errno));
        free(fx);
        return -1;
    }
    *state = fx;
    return 0;
}

//  Opens every gate first, so an assertion that failed half-way leaves no
//  task waiting and the executor's destroy (which waits) ends.
static int s_teardown(void **state)
{
    s_fixture_t *fx = *state;
    int fd = open(cf_testkit_path(fx->kit, "release"), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0)
        close(fd);
    cf_executor_destroy(&fx->ex);
    cf_testkit_destroy(&fx->kit);
    free(fx);
    return 0;
}

//  The fixture's executor, made on first use (opts may be NULL): for
//  CF_REMOTE it starts the broker and the two workers first.
static cf_executor_t *s_executor_with(s_fixture_t *fx, const cf_options_t *opts)
{
    if (fx->ex)
        return fx->ex;
    cf_options_t options = opts ? *opts : (cf_options_t){ 0 };
    if (fx->test->kind == CF_REMOTE) {
        cf_testkit_proc_t *broker = cf_testkit_start_broker(fx->kit, NULL);
        for (int i = 0; i < 2; i++)
            fx->workers[i] = cf_testkit_start_worker(fx->kit, cf_testkit_workers(broker),
                                                     "--threads", "1", NULL);
        options.endpoint = cf_testkit_clients(broker);
    }
    else if (options.max_workers == 0)
        options.max_workers = S_SLOTS;
    fx->ex = cf_executor_new(fx->test->kind, &options);
    if (!fx->ex)
        fail_msg("cannot make a %s executor: %s", cf_kind_name(fx->test->kind), cf_last_error());
    return fx->ex;
}

static cf_executor_t *s_executor(s_fixture_t *fx)
{
    return s_executor_with(fx, NULL);
}

static void s_run(void **state)
{
    s_fixture_t *fx = *state;
#if CF_TEST_ASAN
    //  GCC 12's ASan: a worker process forked from the zygote can hang in
    //  ASan's allocator (an allocator lock copied while held). It has not
    //  hung in this file's runs, so the kind runs; a machine where it does
    //  can leave it out with CF_TEST_ASAN_SKIP_PROCESSES=1 until that is
    //  fixed globally.
    if (fx->test->kind == CF_PROCESSES && getenv("CF_TEST_ASAN_SKIP_PROCESSES")) {
        fprintf(stderr, "skipped: CF_PROCESSES under AddressSanitizer "
                        "(CF_TEST_ASAN_SKIP_PROCESSES is set: forked workers can hang in ASan's "
                        "allocator)\n");
        skip();
    }
#endif
#if CF_TEST_TSAN
    //  The pool's zygote, forked from this threaded process, forks workers
    //  that start threads: TSan stops them ("starting new threads after
    //  multi-threaded fork is not supported") unless told not to.
    const char *tsan_options = getenv("TSAN_OPTIONS");
    if (fx->test->kind == CF_PROCESSES
        && !(tsan_options && strstr(tsan_options, "die_after_fork=0"))) {
        fprintf(stderr, "skipped: CF_PROCESSES under ThreadSanitizer needs "
                        "TSAN_OPTIONS=die_after_fork=0\n");
        skip();
    }
#endif
    fx->test->body(fx);
}

// ---------------------------------------------------------------------------
//  Gates

//  A gate task that stays running until s_release: its started file is
//  kit/started-N.
static cf_future_t *s_gate(s_fixture_t *fx, int *number)
{
    char name[48];
    *number = fx->gates++;
    snprintf(name, sizeof name, "started-%d", *number);
    cf_future_t *f = cf_submit(s_executor(fx), "gate", "ss", cf_testkit_path(fx->kit, name),
                               cf_testkit_path(fx->kit, "release"));
    assert_non_null(f);
    return f;
}

static bool s_file_exists(void *path)
{
    return access(path, F_OK) == 0;
}

//  Waits until gate number has started running in a worker.
static void s_expect_started(s_fixture_t *fx, int number)
{
    char name[48];
    snprintf(name, sizeof name, "started-%d", number);
    const char *path = cf_testkit_path(fx->kit, name);
    if (!cf_testkit_wait_until(s_file_exists, (void *)path, S_START_MS)) {
        cf_testkit_dump_logs(fx->kit);
        fail_msg("gate %d did not start although the executor has a slot for it (is it "
                 "queued behind another gate at a busy worker while one idles?)",
                 number);
    }
}

//  Two gates, both running: every slot of the executor is busy, so what is
//  submitted next stays queued until s_release.
static void s_fill_slots(s_fixture_t *fx, cf_future_t *gates[S_SLOTS])
{
    int numbers[S_SLOTS];
    for (int i = 0; i < S_SLOTS; i++)
        gates[i] = s_gate(fx, &numbers[i]);
    for (int i = 0; i < S_SLOTS; i++)
        s_expect_started(fx, numbers[i]);
}

static void s_release(s_fixture_t *fx)
{
    int fd = open(cf_testkit_path(fx->kit, "release"), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    close(fd);
}

//  f is queued behind busy slots, has not started: cancel must win.
static void s_expect_cancel(cf_future_t *f)
{
    assert_non_null(f);
    bool running = cf_future_running(f);
    if (!cf_future_cancel(f))
        fail_msg("cancel of a task that had not started (running before: %s, after: %s, "
                 "done: %s) returned false",
                 running ? "yes" : "no", cf_future_running(f) ? "yes" : "no",
                 cf_future_done(f) ? "yes" : "no");
}

static bool s_running(void *f)
{
    return cf_future_running(f);
}

static void s_release_all(cf_future_t **fs, size_t count)
{
    for (size_t i = 0; i < count; i++)
        cf_future_release(&fs[i]);
}

static const char *s_hostname(void)
{
    static char name[256];
    if (!name[0] && gethostname(name, sizeof name - 1) != 0)
        strcpy(name, "?");
    return name;
}

//  The pid a task's error (or result) names is one this kind runs tasks in.
static void s_expect_task_pid(s_fixture_t *fx, int64_t pid)
{
    switch (fx->test->kind) {
    case CF_THREADS:
        assert_int_equal(pid, getpid());
        break;
    case CF_PROCESSES:
        assert_true(pid > 0);
        assert_int_not_equal(pid, getpid());
        break;
    case CF_REMOTE:
        if (pid != cf_testkit_pid(fx->workers[0]) && pid != cf_testkit_pid(fx->workers[1]))
            fail_msg("pid %lld is neither worker's", (long long)pid);
        break;
    }
}

// ---------------------------------------------------------------------------
//  Behaviours

static void s_submit_returns_ints_strings_arrays_and_maps(s_fixture_t *fx)
{
    cf_executor_t *ex = s_executor(fx);
    cf_future_t *sum = cf_submit(ex, "add", "LL", (int64_t)-5, (int64_t)INT64_MAX);
    cf_future_t *word = cf_submit(ex, "shout", "s", "na\xc3\xafve words");
    cf_future_t *array = cf_submit(ex, "echo", "[is[d]]", 1, "two", 3.5);
    cf_future_t *map = cf_submit(ex, "echo", "{sisn}", "one", 1, "none");
    cf_future_t *empty = cf_submit(ex, "echo", "[]");

    int64_t i = 0;
    assert_int_equal(cf_future_int(sum, S_LONG_MS, &i), CF_OK);
    assert_true(i == INT64_MAX - 5);
    const char *text = NULL;
    assert_int_equal(cf_future_str(word, S_LONG_MS, &text), CF_OK);
    assert_string_equal(text, "NA\xc3\xafVE WORDS");
    //  A string is not an int: the conversion says so, the result stays.
    assert_int_equal(cf_future_int(word, 0, &i), CF_ETYPE);

    const cf_value_t *v = NULL;
    assert_int_equal(cf_future_result(array, S_LONG_MS, &v), CF_OK);
    assert_int_equal(cf_value_type(v), CF_TYPE_ARRAY);
    assert_int_equal(cf_value_len(v), 3);
    assert_int_equal(cf_value_get_int(cf_value_at(v, 0), &i), CF_OK);
    assert_int_equal(i, 1);
    assert_string_equal(cf_value_str(cf_value_at(v, 1), NULL), "two");
    double d = 0;
    assert_int_equal(cf_value_get_double(cf_value_at(cf_value_at(v, 2), 0), &d), CF_OK);
    assert_true(d == 3.5);

    assert_int_equal(cf_future_result(map, S_LONG_MS, &v), CF_OK);
    assert_int_equal(cf_value_type(v), CF_TYPE_MAP);
    assert_int_equal(cf_value_len(v), 2);
    assert_int_equal(cf_value_get_int(cf_value_get(v, "one"), &i), CF_OK);
    assert_int_equal(i, 1);
    assert_int_equal(cf_value_type(cf_value_get(v, "none")), CF_TYPE_NIL);
    assert_null(cf_value_get(v, "two"));

    assert_int_equal(cf_future_result(empty, S_LONG_MS, &v), CF_OK);
    assert_int_equal(cf_value_type(v), CF_TYPE_ARRAY);
    assert_int_equal(cf_value_len(v), 0);
    assert_string_equal(cf_future_function(map), "echo");

    cf_future_t *all[] = { sum, word, array, map, empty };
    s_release_all(all, 5);
}

static void s_result_timeout_is_not_a_task_error(s_fixture_t *fx)
{
    cf_executor_t *ex = s_executor(fx);
    int number;
    cf_future_t *gate = s_gate(fx, &number);
    //  The wait timed out: nothing is wrong with the task.
    const cf_value_t *v = NULL;
    assert_int_equal(cf_future_result(gate, S_SHORT_MS, &v), CF_ETIMEDOUT);
    assert_int_equal(cf_future_wait(gate, 0), CF_ETIMEDOUT);
    assert_false(cf_future_done(gate));
    assert_null(cf_future_error(gate));

    //  The task's own TimeoutError is a task error.
    cf_future_t *own = cf_submit(ex, "fail", "ss", "took too long", "TimeoutError");
    assert_int_equal(cf_future_result(own, S_LONG_MS, &v), CF_ETASK);
    const cf_task_error_t *error = cf_future_error(own);
    assert_non_null(error);
    assert_string_equal(error->type, "TimeoutError");

    s_release(fx);
    int64_t pid = 0;
    assert_int_equal(cf_future_int(gate, S_LONG_MS, &pid), CF_OK);
    s_expect_task_pid(fx, pid);
    cf_future_release(&gate);
    cf_future_release(&own);
}

static void s_errors_say_type_message_function_and_origin(s_fixture_t *fx)
{
    cf_executor_t *ex = s_executor(fx);
    cf_future_t *plain = cf_submit(ex, "fail", "s", "bad value 42");
    cf_future_t *typed = cf_submit(ex, "fail", "ss", "no such key", "KeyError");
    //  A pool runs what its process registered: an unknown function fails at
    //  once. A broker routes by function: no worker serves this one, so it
    //  waits for one, here 300 ms, then fails with NoWorker.
    cf_task_opts_t short_wait = { .no_worker_timeout_ms = 300 };
    cf_future_t *unknown = cf_submit_with(ex, &short_wait, "no_such_task", "i", 1);
    cf_future_t *mistyped = cf_submit(ex, "square", "s", "seven");

    assert_int_equal(cf_future_result(plain, S_LONG_MS, NULL), CF_ETASK);
    const cf_task_error_t *error = cf_future_error(plain);
    assert_non_null(error);
    assert_string_equal(error->type, "ValueError");
    assert_string_equal(error->message, "bad value 42");
    assert_string_equal(error->function, "fail");
    assert_string_equal(error->host, s_hostname());
    s_expect_task_pid(fx, error->pid);

    assert_int_equal(cf_future_result(typed, S_LONG_MS, NULL), CF_ETASK);
    assert_string_equal(cf_future_error(typed)->type, "KeyError");
    assert_string_equal(cf_future_error(typed)->message, "no such key");

    assert_int_equal(cf_future_result(unknown, S_LONG_MS, NULL), CF_ETASK);
    error = cf_future_error(unknown);
    assert_string_equal(error->type, fx->test->kind == CF_REMOTE ? "NoWorker" : "UnknownFunction");
    assert_string_equal(error->function, "no_such_task");
    assert_non_null(strstr(error->message, "no_such_task"));

    assert_int_equal(cf_future_result(mistyped, S_LONG_MS, NULL), CF_ETASK);
    error = cf_future_error(mistyped);
    assert_string_equal(error->type, "TypeError");
    assert_string_equal(error->function, "square");
    assert_string_equal(error->host, s_hostname());
    s_expect_task_pid(fx, error->pid);

    cf_future_t *all[] = { plain, typed, unknown, mistyped };
    s_release_all(all, 4);
}

static void s_cancel_wins_only_before_the_task_starts(s_fixture_t *fx)
{
    cf_executor_t *ex = s_executor(fx);
    cf_future_t *gates[S_SLOTS];
    s_fill_slots(fx, gates);
    cf_future_t *queued = cf_submit(ex, "square", "i", 7);
    assert_non_null(queued);
    assert_false(cf_future_running(queued));
    assert_false(cf_future_done(queued));

    //  Running: the worker took it, cancel loses.
    assert_true(cf_testkit_wait_until(s_running, gates[0], S_LONG_MS));
    assert_false(cf_future_cancel(gates[0]));
    assert_true(cf_future_running(gates[0]));
    assert_false(cf_future_cancelled(gates[0]));
    assert_false(cf_future_done(gates[0]));

    //  Queued behind the gates: cancel wins, and again.
    s_expect_cancel(queued);
    assert_true(cf_future_cancelled(queued));
    assert_true(cf_future_done(queued));
    assert_false(cf_future_running(queued));
    assert_true(cf_future_cancel(queued));
    assert_int_equal(cf_future_result(queued, 0, NULL), CF_ECANCELLED);
    assert_null(cf_future_error(queued));

    s_release(fx);
    for (int i = 0; i < S_SLOTS; i++) {
        assert_int_equal(cf_future_wait(gates[i], S_LONG_MS), CF_OK);
        assert_true(cf_future_done(gates[i]));
        assert_false(cf_future_running(gates[i]));
        assert_false(cf_future_cancelled(gates[i]));
        //  Done: cancel loses.
        assert_false(cf_future_cancel(gates[i]));
    }
    s_release_all(gates, S_SLOTS);
    cf_future_release(&queued);
}

typedef struct {
    atomic_int calls;
    atomic_int order[4];     //  calls[k] in the order they came
    atomic_bool not_done;    //  a callback saw its future not done
    pthread_t thread;        //  who ran the last call
} s_callbacks_t;

//  Records the call (no cmocka assertion: this may run on another thread).
static int s_callback_record(cf_future_t *f, s_callbacks_t *cbs, int which, int rc)
{
    if (!cf_future_done(f))
        atomic_store(&cbs->not_done, true);
    int n = atomic_fetch_add(&cbs->calls, 1);
    if (n < 4)
        atomic_store(&cbs->order[n], which);
    cbs->thread = pthread_self();
    return rc;
}

static int s_callback_fails(cf_future_t *f, void *arg)
{
    return s_callback_record(f, arg, 1, -1);
}

static int s_callback_ok(cf_future_t *f, void *arg)
{
    return s_callback_record(f, arg, 2, 0);
}

static bool s_two_calls(void *arg)
{
    s_callbacks_t *cbs = arg;
    return atomic_load(&cbs->calls) >= 2;
}

static void s_done_callbacks_run_once_each(s_fixture_t *fx)
{
    cf_executor_t *ex = s_executor(fx);

    //  Done already: the callback runs at once, in this thread.
    cf_future_t *done = cf_submit(ex, "square", "i", 3);
    assert_int_equal(cf_future_wait(done, S_LONG_MS), CF_OK);
    s_callbacks_t now = { 0 };
    assert_int_equal(cf_future_add_done_callback(done, s_callback_ok, &now), CF_OK);
    assert_int_equal(atomic_load(&now.calls), 1);
    assert_true(pthread_equal(now.thread, pthread_self()));

    //  Pending: both run on completion, in the order added, although the
    //  first one fails.
    int number;
    cf_future_t *gate = s_gate(fx, &number);
    s_callbacks_t later = { 0 };
    assert_int_equal(cf_future_add_done_callback(gate, s_callback_fails, &later), CF_OK);
    assert_int_equal(cf_future_add_done_callback(gate, s_callback_ok, &later), CF_OK);
    s_expect_started(fx, number);
    assert_int_equal(atomic_load(&later.calls), 0);
    s_release(fx);
    assert_true(cf_testkit_wait_until(s_two_calls, &later, S_LONG_MS));
    assert_int_equal(atomic_load(&later.order[0]), 1);
    assert_int_equal(atomic_load(&later.order[1]), 2);
    assert_false(atomic_load(&later.not_done));

    //  A cancelled future runs its callbacks too (gates shut again first).
    assert_int_equal(cf_future_wait(gate, S_LONG_MS), CF_OK);
    assert_int_equal(unlink(cf_testkit_path(fx->kit, "release")), 0);
    cf_future_t *gates[S_SLOTS];
    s_fill_slots(fx, gates);
    cf_future_t *queued = cf_submit(ex, "square", "i", 4);
    s_callbacks_t cancelled = { 0 };
    assert_int_equal(cf_future_add_done_callback(queued, s_callback_ok, &cancelled), CF_OK);
    s_expect_cancel(queued);
    assert_int_equal(atomic_load(&cancelled.calls), 1);
    assert_int_equal(atomic_load(&later.calls), 2);
    assert_int_equal(cf_future_add_done_callback(NULL, s_callback_ok, &later), CF_EINVAL);
    s_release_all(gates, S_SLOTS);
    cf_future_release(&queued);
    cf_future_release(&gate);
    cf_future_release(&done);
}

static void s_map_keeps_order_with_and_without_chunks(s_fixture_t *fx)
{
    cf_executor_t *ex = s_executor(fx);
    enum { INPUTS = 41 };
    int64_t inputs[INPUTS];
    for (int i = 0; i < INPUTS; i++)
        inputs[i] = 20 - i;
    static const size_t chunksizes[] = { 1, 4, 64 };
    for (size_t c = 0; c < 3; c++) {
        cf_map_opts_t opts = { .chunksize = chunksizes[c], .window = 3 };
        cf_map_t *map = cf_map_ints(ex, "square", inputs, INPUTS, &opts);
        assert_non_null(map);
        const cf_value_t *v = NULL;
        size_t count = 0;
        cf_err_t rc;
        while ((rc = cf_map_next(map, &v)) == CF_OK) {
            int64_t got = 0;
            assert_int_equal(cf_value_get_int(v, &got), CF_OK);
            assert_int_equal(cf_map_index(map), count);
            assert_int_equal(got, inputs[count] * inputs[count]);
            count++;
        }
        assert_int_equal(rc, CF_ESTOP);
        assert_int_equal(count, INPUTS);
        assert_null(cf_map_error(map));
        assert_int_equal(cf_map_next(map, &v), CF_ESTOP);
        cf_map_destroy(&map);
    }
    //  No inputs: the end at once.
    cf_map_t *map = cf_map_ints(ex, "square", NULL, 0, NULL);
    assert_non_null(map);
    assert_int_equal(cf_map_next(map, NULL), CF_ESTOP);
    cf_map_destroy(&map);
}

static void s_map_stops_at_the_first_error_after_earlier_results(s_fixture_t *fx)
{
    cf_executor_t *ex = s_executor(fx);
    static const char *const words[] = { "alpha", "beta", "!gamma", "delta", "!epsilon", "zeta" };
    for (size_t chunksize = 1; chunksize <= 4; chunksize += 3) {
        cf_map_opts_t opts = { .chunksize = chunksize };
        cf_map_t *map = cf_map_strs(ex, "shout", words, 6, &opts);
        assert_non_null(map);
        const cf_value_t *v = NULL;
        assert_int_equal(cf_map_next(map, &v), CF_OK);
        assert_string_equal(cf_value_str(v, NULL), "ALPHA");
        assert_int_equal(cf_map_next(map, &v), CF_OK);
        assert_string_equal(cf_value_str(v, NULL), "BETA");
        assert_int_equal(cf_map_index(map), 1);
        assert_int_equal(cf_map_next(map, &v), CF_ETASK);
        assert_null(v);
        assert_int_equal(cf_map_index(map), 2);
        const cf_task_error_t *error = cf_map_error(map);
        assert_non_null(error);
        assert_string_equal(error->type, "ValueError");
        assert_string_equal(error->message, "cannot shout '!gamma'");
        assert_string_equal(error->function, "shout");
        //  Where it ran, also when the input ran inside a chunk.
        assert_string_equal(error->host, s_hostname());
        s_expect_task_pid(fx, error->pid);
        //  Iteration ended there: delta is never delivered.
        assert_int_equal(cf_map_next(map, &v), CF_ESTOP);
        assert_int_equal(cf_map_next(map, &v), CF_ESTOP);
        cf_map_destroy(&map);
    }
}

typedef struct {
    s_fixture_t *fx;
    size_t asked;      //  inputs the source was asked for
    size_t count;      //  inputs it has
    bool gated;        //  inputs are gates, not squares
    size_t fail_at;    //  the input it fails on (0: none)
} s_source_t;

static int s_source(void *state, size_t index, cf_args_t *args)
{
    s_source_t *src = state;
    //  Asked in order, each index once.
    if (index != src->asked)
        return -1;
    src->asked++;
    if (index >= src->count)
        return 0;
    if (src->fail_at > 0 && index == src->fail_at)
        return -1;
    if (!src->gated)
        return cf_args_add_int(args, (int64_t)index) == CF_OK ? 1 : -1;
    char name[48];
    snprintf(name, sizeof name, "started-map-%zu", index);
    return cf_args_addf(args, "ss", cf_testkit_path(src->fx->kit, name),
                        cf_testkit_path(src->fx->kit, "release"))
                   == CF_OK
               ? 1
               : -1;
}

static void s_map_times_out_and_cancels_the_rest(s_fixture_t *fx)
{
    cf_executor_t *ex = s_executor(fx);
    s_source_t src = { .fx = fx, .count = 5, .gated = true };
    cf_map_opts_t opts = { .timeout_ms = S_SHORT_MS, .window = 5 };
    cf_map_t *map = cf_map_new(ex, "gate", s_source, &src, &opts);
    assert_non_null(map);
    const cf_value_t *v = NULL;
    assert_int_equal(cf_map_next(map, &v), CF_ETIMEDOUT);
    assert_null(v);
    assert_int_equal(cf_map_index(map), 0);
    assert_null(cf_map_error(map));
    assert_int_equal(cf_map_next(map, &v), CF_ESTOP);
    cf_map_destroy(&map);

    //  The executor is still fine afterwards.
    s_release(fx);
    cf_future_t *f = cf_submit(ex, "square", "i", 9);
    int64_t got = 0;
    assert_int_equal(cf_future_int(f, S_LONG_MS, &got), CF_OK);
    assert_int_equal(got, 81);
    cf_future_release(&f);
}

static void s_map_asks_its_source_only_within_the_window(s_fixture_t *fx)
{
    cf_executor_t *ex = s_executor(fx);
    for (size_t chunksize = 1; chunksize <= 3; chunksize += 2) {
        enum { WINDOW = 4, INPUTS = 50 };
        s_source_t src = { .fx = fx, .count = INPUTS };
        cf_map_opts_t opts = { .chunksize = chunksize, .window = WINDOW };
        cf_map_t *map = cf_map_new(ex, "square", s_source, &src, &opts);
        assert_non_null(map);
        //  Nothing taken yet: at most a window of chunks asked for.
        assert_true(src.asked <= WINDOW * chunksize);
        assert_true(src.asked > 0);
        const cf_value_t *v = NULL;
        size_t taken = 0;
        cf_err_t rc;
        while ((rc = cf_map_next(map, &v)) == CF_OK) {
            int64_t got = -1;
            assert_int_equal(cf_value_get_int(v, &got), CF_OK);
            assert_int_equal(got, (int64_t)(taken * taken));
            taken++;
            //  The window refills as results are taken, no further.
            if (src.asked > taken + (WINDOW + 1) * chunksize)
                fail_msg("chunksize %zu: %zu inputs asked for after %zu results", chunksize,
                         src.asked, taken);
        }
        assert_int_equal(rc, CF_ESTOP);
        assert_int_equal(taken, INPUTS);
        //  Every input once, then the end once.
        assert_int_equal(src.asked, INPUTS + 1);
        cf_map_destroy(&map);
    }

    //  A source error ends iteration at its input, after the ones before.
    s_source_t bad = { .fx = fx, .count = 5, .fail_at = 2 };
    cf_map_t *map = cf_map_new(ex, "square", s_source, &bad, NULL);
    assert_non_null(map);
    const cf_value_t *v = NULL;
    for (int64_t i = 0; i < 2; i++) {
        int64_t got = -1;
        assert_int_equal(cf_map_next(map, &v), CF_OK);
        assert_int_equal(cf_value_get_int(v, &got), CF_OK);
        assert_int_equal(got, i * i);
    }
    assert_int_equal(cf_map_next(map, &v), CF_EINVAL);
    assert_int_equal(cf_map_index(map), 2);
    assert_int_equal(cf_map_next(map, &v), CF_ESTOP);
    assert_int_equal(bad.asked, 3);
    cf_map_destroy(&map);
}

static void s_as_completed_yields_each_once_done_first(s_fixture_t *fx)
{
    cf_executor_t *ex = s_executor(fx);
    cf_future_t *done = cf_submit(ex, "square", "i", 5);
    assert_int_equal(cf_future_wait(done, S_LONG_MS), CF_OK);
    cf_future_t *gates[S_SLOTS];
    s_fill_slots(fx, gates);
    cf_future_t *gate = gates[0];

    //  Done first; duplicates count once; the gate holds the rest.
    cf_future_t *fs[] = { gate, done, gate, done };
    cf_as_completed_t *it = cf_as_completed_new(fs, 4, S_SHORT_MS);
    assert_non_null(it);
    assert_int_equal(cf_as_completed_pending(it), 1);
    cf_future_t *f = NULL;
    assert_int_equal(cf_as_completed_next(it, &f), CF_OK);
    assert_ptr_equal(f, done);
    assert_int_equal(cf_as_completed_next(it, &f), CF_ETIMEDOUT);
    assert_int_equal(cf_as_completed_pending(it), 1);
    cf_as_completed_destroy(&it);

    //  Without a timeout: each once, as they finish; queued waits for a
    //  slot, so done (finished already) comes first.
    cf_future_t *queued = cf_submit(ex, "square", "i", 6);
    cf_future_t *more[] = { queued, gate, done, queued, gate };
    it = cf_as_completed_new(more, 5, -1);
    assert_non_null(it);
    assert_int_equal(cf_as_completed_next(it, &f), CF_OK);
    assert_ptr_equal(f, done);
    s_release(fx);
    bool seen_gate = false, seen_queued = false;
    for (int i = 0; i < 2; i++) {
        assert_int_equal(cf_as_completed_next(it, &f), CF_OK);
        assert_true(cf_future_done(f));
        if (f == gate) {
            assert_false(seen_gate);
            seen_gate = true;
        }
        else {
            assert_ptr_equal(f, queued);
            assert_false(seen_queued);
            seen_queued = true;
        }
    }
    assert_int_equal(cf_as_completed_next(it, &f), CF_ESTOP);
    assert_int_equal(cf_as_completed_pending(it), 0);
    cf_as_completed_destroy(&it);
    cf_future_release(&queued);
    s_release_all(gates, S_SLOTS);
    cf_future_release(&done);
}

static bool s_contains(cf_future_t *const *set, size_t n, const cf_future_t *f)
{
    for (size_t i = 0; i < n; i++)
        if (set[i] == f)
            return true;
    return false;
}

static void s_wait_modes_and_timeouts(s_fixture_t *fx)
{
    cf_executor_t *ex = s_executor(fx);
    cf_future_t *ok = cf_submit(ex, "square", "i", 2);
    cf_future_t *bad = cf_submit(ex, "fail", "s", "broken");
    assert_int_equal(cf_future_wait(ok, S_LONG_MS), CF_OK);
    assert_int_equal(cf_future_wait(bad, S_LONG_MS), CF_OK);
    cf_future_t *gates[S_SLOTS];
    s_fill_slots(fx, gates);

    cf_future_t *done[4], *not_done[4];
    size_t n_done = 99, n_not_done = 99;

    //  Nothing finishes while the gates are shut.
    cf_future_t *shut[] = { gates[0], gates[1] };
    assert_int_equal(
        cf_wait(shut, 2, S_SHORT_MS, CF_FIRST_COMPLETED, done, &n_done, not_done, &n_not_done),
        CF_ETIMEDOUT);
    assert_int_equal(n_done, 0);
    assert_int_equal(n_not_done, 2);

    //  FIRST_COMPLETED: one is done already.
    cf_future_t *first[] = { gates[0], ok, gates[1] };
    assert_int_equal(
        cf_wait(first, 3, S_SHORT_MS, CF_FIRST_COMPLETED, done, &n_done, not_done, &n_not_done),
        CF_OK);
    assert_int_equal(n_done, 1);
    assert_ptr_equal(done[0], ok);
    assert_int_equal(n_not_done, 2);

    //  FIRST_EXCEPTION: a failure ends the wait although others run.
    cf_future_t *exc[] = { gates[0], ok, bad };
    assert_int_equal(cf_wait(exc, 3, -1, CF_FIRST_EXCEPTION, done, &n_done, not_done, &n_not_done),
                     CF_OK);
    assert_int_equal(n_done, 2);
    assert_true(s_contains(done, n_done, bad));
    assert_true(s_contains(done, n_done, ok));
    assert_int_equal(n_not_done, 1);
    assert_ptr_equal(not_done[0], gates[0]);
    //  Without a failure it waits like ALL_COMPLETED, so it times out.
    cf_future_t *no_exc[] = { ok, gates[1] };
    assert_int_equal(
        cf_wait(no_exc, 2, S_SHORT_MS, CF_FIRST_EXCEPTION, done, &n_done, not_done, &n_not_done),
        CF_ETIMEDOUT);
    assert_int_equal(n_done, 1);
    assert_int_equal(n_not_done, 1);

    //  ALL_COMPLETED: times out with the gates shut, ends once released.
    cf_future_t *all[] = { ok, bad, gates[0], gates[1] };
    assert_int_equal(
        cf_wait(all, 4, S_SHORT_MS, CF_ALL_COMPLETED, done, &n_done, not_done, &n_not_done),
        CF_ETIMEDOUT);
    assert_int_equal(n_done, 2);
    assert_int_equal(n_not_done, 2);
    assert_true(s_contains(not_done, 2, gates[0]));
    assert_true(s_contains(not_done, 2, gates[1]));
    s_release(fx);
    assert_int_equal(
        cf_wait(all, 4, S_LONG_MS, CF_ALL_COMPLETED, done, &n_done, not_done, &n_not_done), CF_OK);
    assert_int_equal(n_done, 4);
    assert_int_equal(n_not_done, 0);
    //  NULL sets are allowed.
    assert_int_equal(cf_wait(all, 4, 0, CF_ALL_COMPLETED, NULL, NULL, NULL, NULL), CF_OK);

    s_release_all(gates, S_SLOTS);
    cf_future_release(&ok);
    cf_future_release(&bad);
}

typedef struct {
    cf_executor_t *ex;
    cf_err_t rc;
} s_shutdown_call_t;

static void *s_shutdown_thread(void *arg)
{
    s_shutdown_call_t *call = arg;
    call->rc = cf_executor_shutdown(call->ex, true, true);
    return NULL;
}

static bool s_all_cancelled(void *arg)
{
    cf_future_t **fs = arg;
    for (int i = 0; i < 3; i++)
        if (!cf_future_cancelled(fs[i]))
            return false;
    return true;
}

static void s_shutdown_cancels_queued_and_finishes_running(s_fixture_t *fx)
{
    cf_executor_t *ex = s_executor(fx);
    cf_future_t *gates[S_SLOTS];
    s_fill_slots(fx, gates);
    cf_future_t *queued[3];
    for (int i = 0; i < 3; i++) {
        queued[i] = cf_submit(ex, "square", "i", i);
        assert_non_null(queued[i]);
    }
    //  shutdown(wait, cancel_futures) blocks on the running gates: from
    //  another thread, which must cancel the queued tasks meanwhile.
    s_shutdown_call_t call = { .ex = ex, .rc = CF_EINVAL };
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, s_shutdown_thread, &call), 0);
    bool cancelled = cf_testkit_wait_until(s_all_cancelled, queued, S_LONG_MS);
    s_release(fx);
    assert_int_equal(pthread_join(thread, NULL), 0);
    assert_true(cancelled);
    assert_int_equal(call.rc, CF_OK);
    for (int i = 0; i < S_SLOTS; i++) {
        //  Done on return, with their results.
        assert_true(cf_future_done(gates[i]));
        int64_t pid = 0;
        assert_int_equal(cf_future_int(gates[i], 0, &pid), CF_OK);
        s_expect_task_pid(fx, pid);
    }
    for (int i = 0; i < 3; i++)
        assert_int_equal(cf_future_result(queued[i], 0, NULL), CF_ECANCELLED);

    //  Closed for good: submit, map and a second shutdown.
    assert_null(cf_submit(ex, "square", "i", 1));
    assert_int_equal(cf_last_err(), CF_ESHUTDOWN);
    assert_non_null(strstr(cf_last_error(), "shut down"));
    static const int64_t one[] = { 1 };
    cf_map_t *map = cf_map_ints(ex, "square", one, 1, NULL);
    if (map) {
        assert_int_equal(cf_map_next(map, NULL), CF_ESHUTDOWN);
        cf_map_destroy(&map);
    }
    else
        assert_int_equal(cf_last_err(), CF_ESHUTDOWN);
    assert_int_equal(cf_executor_shutdown(ex, true, false), CF_OK);
    s_release_all(gates, S_SLOTS);
    s_release_all(queued, 3);
}

typedef struct {
    pthread_mutex_t lock;
    cf_progress_t last;
    int calls;
} s_progress_t;

static void s_on_progress(const cf_progress_t *progress, void *arg)
{
    s_progress_t *p = arg;
    pthread_mutex_lock(&p->lock);
    //  Snapshots may arrive out of order from two threads: keep the latest.
    if (progress->done >= p->last.done)
        p->last = *progress;
    p->calls++;
    pthread_mutex_unlock(&p->lock);
}

static bool s_progress_reached(void *arg)
{
    s_progress_t *p = arg;
    pthread_mutex_lock(&p->lock);
    bool reached = p->last.done == 6;
    pthread_mutex_unlock(&p->lock);
    return reached;
}

static void s_progress_counts_every_outcome(s_fixture_t *fx)
{
    cf_executor_t *ex = s_executor(fx);
    s_progress_t p = { .lock = PTHREAD_MUTEX_INITIALIZER };
    cf_executor_on_progress(ex, s_on_progress, &p);
    cf_future_t *gates[S_SLOTS];
    s_fill_slots(fx, gates);
    cf_future_t *queued = cf_submit(ex, "square", "i", 1);
    s_expect_cancel(queued);
    s_release(fx);
    cf_future_t *fs[] = { cf_submit(ex, "square", "i", 2), cf_submit(ex, "square", "i", 3),
                          cf_submit(ex, "fail", "s", "counted") };
    for (int i = 0; i < 3; i++)
        assert_int_equal(cf_future_wait(fs[i], S_LONG_MS), CF_OK);
    for (int i = 0; i < S_SLOTS; i++)
        assert_int_equal(cf_future_wait(gates[i], S_LONG_MS), CF_OK);

    //  The hook runs after each future's callbacks, so it may trail.
    assert_true(cf_testkit_wait_until(s_progress_reached, &p, S_LONG_MS));
    pthread_mutex_lock(&p.lock);
    cf_progress_t last = p.last;
    int calls = p.calls;
    pthread_mutex_unlock(&p.lock);
    assert_int_equal(calls, 6);
    assert_int_equal(last.submitted, 6);
    assert_int_equal(last.done, 6);
    assert_int_equal(last.failed, 1);
    assert_int_equal(last.cancelled, 1);
    cf_progress_t now = cf_executor_progress(ex);
    assert_int_equal(now.submitted, 6);
    assert_int_equal(now.done, 6);
    assert_int_equal(now.failed, 1);
    assert_int_equal(now.cancelled, 1);

    //  A refused submission is not counted.
    cf_executor_on_progress(ex, NULL, NULL);
    assert_int_equal(cf_executor_shutdown(ex, true, false), CF_OK);
    assert_null(cf_submit(ex, "square", "i", 4));
    assert_int_equal(cf_executor_progress(ex).submitted, 6);
    s_release_all(gates, S_SLOTS);
    s_release_all(fs, 3);
    cf_future_release(&queued);
}

static void *s_destroy_thread(void *arg)
{
    cf_executor_destroy(arg);
    return NULL;
}

static void s_cancel_racing_destroy_is_safe(s_fixture_t *fx)
{
    //  Cancels of queued tasks while another thread destroys the executor:
    //  every future ends resolved, and no cancel touches a freed back end
    //  (which the sanitizer build would report).
    enum { QUEUED = 40 };
    for (int round = 0; round < 3; round++) {
        cf_executor_t *ex = s_executor(fx);
        cf_future_t *gates[S_SLOTS];
        s_fill_slots(fx, gates);
        cf_future_t *queued[QUEUED];
        for (int i = 0; i < QUEUED; i++) {
            queued[i] = cf_submit(ex, "square", "i", i);
            assert_non_null(queued[i]);
        }
        s_release(fx);
        //  destroy waits for every task: it runs them, while we cancel.
        pthread_t thread;
        assert_int_equal(pthread_create(&thread, NULL, s_destroy_thread, &fx->ex), 0);
        for (int i = QUEUED - 1; i >= 0; i--)
            (void)cf_future_cancel(queued[i]);
        assert_int_equal(pthread_join(thread, NULL), 0);
        assert_null(fx->ex);
        for (int i = 0; i < QUEUED; i++) {
            assert_true(cf_future_done(queued[i]));
            //  After destroy, cancel answers from the future alone.
            assert_int_equal(cf_future_cancel(queued[i]), cf_future_cancelled(queued[i]));
        }
        s_release_all(queued, QUEUED);
        s_release_all(gates, S_SLOTS);
        assert_int_equal(unlink(cf_testkit_path(fx->kit, "release")), 0);
        if (fx->test->kind == CF_REMOTE)
            break;    //  the cluster stays up; one round is enough there
    }
}

static void s_max_workers_must_not_be_negative(s_fixture_t *fx)
{
    static const int bad[] = { -1, -2, -1000 };
    for (size_t i = 0; i < 3; i++) {
        cf_options_t opts = { .max_workers = bad[i] };
        assert_null(cf_executor_new(fx->test->kind, &opts));
        assert_int_equal(cf_last_err(), CF_EINVAL);
        char expected[64];
        snprintf(expected, sizeof expected, "got %d", bad[i]);
        assert_non_null(strstr(cf_last_error(), "max_workers must be > 0"));
        assert_non_null(strstr(cf_last_error(), expected));
    }
    //  0 is the documented default, not an error.
    cf_executor_t *ex = cf_executor_new(fx->test->kind, &(cf_options_t){ .max_workers = 0 });
    assert_non_null(ex);
    assert_true(cf_executor_max_workers(ex) >= 1);
    assert_int_equal(cf_executor_kind(ex), fx->test->kind);
    cf_executor_destroy(&ex);
    assert_null(ex);
}

//  Set by the initializer in the thread (CF_THREADS) or process
//  (CF_PROCESSES, one thread each) that runs it.
static _Thread_local const char *s_init_tag;

static void s_initializer(void *arg)
{
    s_init_tag = arg;
}

//  init_probe(started_path, release_path) -> [tag, pid] once released: the
//  initializer's tag in the worker that runs it.
static void init_probe(cf_call_t *call)
{
    const char *started_path = cf_arg_str(call, 0);
    const char *release_path = cf_arg_str(call, 1);
    if (cf_failed(call))
        return;
    if (!s_init_tag) {
        cf_raise(call, "RuntimeError", "the initializer did not run in this worker");
        return;
    }
    int fd = open(started_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0)
        close(fd);
    while (access(release_path, F_OK) != 0)
        s_example_sleep_ms(2);
    cf_returnf(call, "[si]", s_init_tag, (int)getpid());
}
CF_TASK(init_probe);

static void s_initializer_runs_in_each_worker(s_fixture_t *fx)
{
    static char tag[] = "initialised";
    cf_options_t opts = { .max_workers = S_SLOTS, .initializer = s_initializer, .initarg = tag };
    cf_executor_t *ex = s_executor_with(fx, &opts);
    //  Two probes running at once: one in each worker.
    cf_future_t *probes[S_SLOTS];
    for (int i = 0; i < S_SLOTS; i++) {
        char name[48];
        snprintf(name, sizeof name, "started-%d", i);
        probes[i] = cf_submit(ex, "init_probe", "ss", cf_testkit_path(fx->kit, name),
                              cf_testkit_path(fx->kit, "release"));
        assert_non_null(probes[i]);
    }
    for (int i = 0; i < S_SLOTS; i++)
        s_expect_started(fx, i);
    s_release(fx);
    int64_t pids[S_SLOTS];
    for (int i = 0; i < S_SLOTS; i++) {
        const cf_value_t *v = NULL;
        cf_err_t rc = cf_future_result(probes[i], S_LONG_MS, &v);
        if (rc == CF_ETASK)
            fail_msg("%s: %s", cf_future_error(probes[i])->type,
                     cf_future_error(probes[i])->message);
        assert_int_equal(rc, CF_OK);
        assert_string_equal(cf_value_str(cf_value_at(v, 0), NULL), tag);
        assert_int_equal(cf_value_get_int(cf_value_at(v, 1), &pids[i]), CF_OK);
        s_expect_task_pid(fx, pids[i]);
    }
    if (fx->test->kind == CF_PROCESSES)
        assert_int_not_equal(pids[0], pids[1]);
    s_release_all(probes, S_SLOTS);
}

//  Priorities (issue 10): with every slot held, low-priority tasks then
//  high-priority ones are queued; once the slots open, the high ones are
//  handed out first. What a slot took runs in its order, and a slot may
//  take a few at once (the pool's batches, a worker's prefetch), so a low
//  one may begin beside the last high ones; but of the first N tasks to
//  begin, at most S_SLOTS are low (in submission order, all N would be).
static void s_priorities_start_high_before_low(s_fixture_t *fx)
{
    cf_executor_t *ex = s_executor(fx);
    cf_future_t *gates[S_SLOTS];
    s_fill_slots(fx, gates);
    const char *order = cf_testkit_path(fx->kit, "order");
    enum { N = 10 };
    cf_future_t *fs[2 * N];
    cf_task_opts_t low = { .priority = -1 }, high = { .priority = 7 };
    for (int i = 0; i < N; i++)
        fs[i] = cf_submit_with(ex, &low, "append_line", "si", order, i);
    for (int i = 0; i < N; i++)
        fs[N + i] = cf_submit_with(ex, &high, "append_line", "si", order, 100 + i);
    s_release(fx);
    for (int i = 0; i < 2 * N; i++) {
        assert_int_equal(cf_future_result(fs[i], S_LONG_MS, NULL), CF_OK);
        cf_future_release(&fs[i]);
    }
    for (int i = 0; i < S_SLOTS; i++)
        cf_future_release(&gates[i]);
    FILE *file = fopen(order, "r");
    assert_non_null(file);
    long line, lows = 0, highs = 0, early_lows = 0;
    char seen[256] = "";
    while (fscanf(file, "%ld", &line) == 1) {
        size_t used = strlen(seen);
        snprintf(seen + used, sizeof seen - used, " %ld", line);
        if (line < 100 && lows + highs < N)
            early_lows++;
        if (line >= 100)
            highs++;
        else
            lows++;
    }
    fclose(file);
    assert_int_equal(highs, N);
    assert_int_equal(lows, N);
    if (early_lows > S_SLOTS)
        fail_msg("%ld of the first %d tasks to begin were low-priority (order:%s)", early_lows, N,
                 seen);
}

// ---------------------------------------------------------------------------
//  Stopping a task (cf_future_stop). On CF_REMOTE here the workers are
//  threads (cf-worker --threads 1): only the cooperative stop exists there,
//  as on CF_THREADS; tests/test_stop.c covers cf-worker --procs.

//  Submits fn(ms, kit/name) (spin_until_stopped, spin_ignoring_stop) and
//  waits until it runs.
static cf_future_t *s_spin(s_fixture_t *fx, const char *fn, int64_t ms, const char *name)
{
    const char *path = cf_testkit_path(fx->kit, name);
    cf_future_t *f = cf_submit(s_executor(fx), fn, "Ls", ms, path);
    assert_non_null(f);
    if (!cf_testkit_wait_until(s_file_exists, (void *)path, S_START_MS)) {
        cf_testkit_dump_logs(fx->kit);
        fail_msg("%s did not start although the executor has a free slot", fn);
    }
    return f;
}

static void s_stop_ends_a_task_that_checks_with_interrupted(s_fixture_t *fx)
{
    //  It would spin for a minute; it looks at its flag every millisecond.
    int64_t start = cf_testkit_now_ms();
    cf_future_t *f = s_spin(fx, "spin_until_stopped", 60000, "spinning");
    assert_false(cf_future_done(f));
    assert_int_equal(cf_future_stop(f, 30000), CF_OK);
    assert_int_equal(cf_future_result(f, S_LONG_MS, NULL), CF_ETASK);
    const cf_task_error_t *error = cf_future_error(f);
    assert_string_equal(error->type, CF_INTERRUPTED);
    assert_string_equal(error->function, "spin_until_stopped");
    assert_non_null(strstr(error->message, "asked to stop"));
    s_expect_task_pid(fx, error->pid);
    assert_false(cf_future_cancelled(f));
    //  Well within the grace: it stopped, nobody killed it.
    assert_true(cf_testkit_now_ms() - start < 30000);
    //  Done now: a second stop changes nothing.
    assert_int_equal(cf_future_stop(f, 0), CF_ENOTFOUND);
    //  The executor goes on.
    cf_future_t *next = cf_submit(s_executor(fx), "square", "i", 7);
    cf_testkit_expect_int(fx->kit, next, 49);
    cf_future_release(&next);
    cf_future_release(&f);
}

static void s_stop_of_a_queued_task_cancels_it(s_fixture_t *fx)
{
    cf_future_t *gates[S_SLOTS];
    s_fill_slots(fx, gates);
    cf_future_t *queued = cf_submit(s_executor(fx), "square", "i", 3);
    assert_non_null(queued);
    assert_int_equal(cf_future_stop(queued, 1000), CF_OK);
    //  Answered by whoever holds it (a round trip on a broker): cancelled.
    assert_int_equal(cf_future_wait(queued, S_LONG_MS), CF_OK);
    assert_true(cf_future_cancelled(queued));
    assert_int_equal(cf_future_result(queued, 0, NULL), CF_ECANCELLED);
    s_release(fx);
    for (int i = 0; i < S_SLOTS; i++) {
        int64_t pid = 0;
        assert_int_equal(cf_future_int(gates[i], S_LONG_MS, &pid), CF_OK);
        s_expect_task_pid(fx, pid);
    }
    s_release_all(gates, S_SLOTS);
    cf_future_release(&queued);
}

static void s_stop_of_a_finished_task_changes_nothing(s_fixture_t *fx)
{
    cf_future_t *done = cf_submit(s_executor(fx), "square", "i", 5);
    cf_testkit_expect_int(fx->kit, done, 25);
    assert_int_equal(cf_future_stop(done, 100), CF_ENOTFOUND);
    int64_t value = 0;
    assert_int_equal(cf_future_int(done, 0, &value), CF_OK);
    assert_int_equal(value, 25);
    assert_null(cf_future_error(done));
    assert_int_equal(cf_future_stop(NULL, 100), CF_EINVAL);
    assert_int_equal(cf_future_stop(done, -1), CF_EINVAL);
    cf_future_release(&done);
}

//  A task that never looks: on threads it runs to its end with its own
//  result; in a worker process it is killed after the grace and the
//  process replaced. Either way the task next to it runs on untouched and
//  the executor serves on.
static void s_stop_of_a_task_that_ignores_it(s_fixture_t *fx)
{
    bool killed = fx->test->kind == CF_PROCESSES;
    int number;
    cf_future_t *gate = s_gate(fx, &number);
    s_expect_started(fx, number);
    //  Killed: it would spin for two minutes; on threads a short spin.
    cf_future_t *spin = s_spin(fx, "spin_ignoring_stop", killed ? 120000 : 300, "ignoring");
    int64_t start = cf_testkit_now_ms();
    assert_int_equal(cf_future_stop(spin, 200), CF_OK);
    assert_int_equal(cf_future_wait(spin, S_LONG_MS), CF_OK);
    if (killed) {
        const cf_task_error_t *error = cf_testkit_expect_error(fx->kit, spin, CF_INTERRUPTED,
                                                               "grace");
        assert_non_null(strstr(error->message, "killed"));
        assert_true(cf_testkit_now_ms() - start < 60000);
    }
    else {
        int64_t pid = 0;
        assert_int_equal(cf_future_int(spin, 0, &pid), CF_OK);
        s_expect_task_pid(fx, pid);
    }
    //  The other running task was not touched, and the executor serves on.
    assert_false(cf_future_done(gate));
    cf_future_t *next = cf_submit(s_executor(fx), "square", "i", 9);
    cf_testkit_expect_int(fx->kit, next, 81);
    s_release(fx);
    int64_t pid = 0;
    assert_int_equal(cf_future_int(gate, S_LONG_MS, &pid), CF_OK);
    s_expect_task_pid(fx, pid);
    cf_future_release(&next);
    cf_future_release(&spin);
    cf_future_release(&gate);
}

// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
//  Progress from inside a task (cf_task_progress, cf_future_on_progress)

//  What a progress callback saw; the callback runs on another thread.
typedef struct {
    pthread_mutex_t lock;
    unsigned calls;
    uint32_t last_seq;
    uint64_t last_done;
    uint64_t last_partial;    //  decoded uint of the latest partial, 0: none
    bool out_of_order;        //  a seq or done not above the one before
    bool after_done;          //  a call once the future was done
} s_watch_t;

static void s_watch_report(cf_future_t *f, const cf_task_report_t *report, void *arg)
{
    s_watch_t *watch = arg;
    pthread_mutex_lock(&watch->lock);
    watch->calls++;
    if (report->seq <= watch->last_seq || report->done < watch->last_done)
        watch->out_of_order = true;
    if (cf_future_done(f))
        watch->after_done = true;
    watch->last_seq = report->seq;
    watch->last_done = report->done;
    if (report->partial)
        (void)cf_value_get_uint(report->partial, &watch->last_partial);
    pthread_mutex_unlock(&watch->lock);
}

//  Runs report_loop(n, partial_every, pause_us) watched; returns the time it
//  took from submission to result, in ms.
static int64_t s_watch_loop(s_fixture_t *fx, s_watch_t *watch, cf_future_t **pf, uint64_t n,
                            uint64_t partial_every, uint64_t pause_us)
{
    cf_executor_t *ex = s_executor(fx);
    pthread_mutex_init(&watch->lock, NULL);
    int64_t start = cf_testkit_now_ms();
    cf_future_t *f = cf_submit(ex, "report_loop", "UUU", n, partial_every, pause_us);
    assert_non_null(f);
    assert_int_equal(cf_future_on_progress(f, s_watch_report, watch), CF_OK);
    int64_t value = 0;
    assert_int_equal(cf_future_int(f, S_LONG_MS, &value), CF_OK);
    assert_int_equal(value, (int64_t)n);
    *pf = f;
    return cf_testkit_now_ms() - start;
}

static void s_task_reports_arrive_in_order_the_last_before_the_result(s_fixture_t *fx)
{
    s_watch_t watch = { .calls = 0 };
    cf_future_t *f = NULL;
    //  200 reports over at least 200 ms: several intervals' worth.
    s_watch_loop(fx, &watch, &f, 200, 10, 1000);
    pthread_mutex_lock(&watch.lock);
    assert_false(watch.out_of_order);
    assert_false(watch.after_done);
    assert_true(watch.calls >= 2);    //  the first at once, the last before the result
    //  The last report comes before the result, decoded.
    assert_int_equal(watch.last_done, 200);
    assert_int_equal(watch.last_partial, 200);
    uint32_t seen = watch.last_seq;
    pthread_mutex_unlock(&watch.lock);
    //  The poll gives the latest, still there once done.
    uint64_t done = 0, total = 0;
    assert_int_equal(cf_future_progress(f, &done, &total), seen);
    assert_int_equal(done, 200);
    assert_int_equal(total, 200);
    const cf_task_report_t *report = cf_future_report(f);
    assert_non_null(report);
    assert_int_equal(report->seq, seen);
    uint64_t partial = 0;
    assert_non_null(report->partial);
    assert_int_equal(cf_value_get_uint(report->partial, &partial), CF_OK);
    assert_int_equal(partial, 200);
    cf_task_report_release(&report);
    assert_null(report);
    //  A callback set once done is called at once, with the latest, on this
    //  thread; then nothing more comes.
    s_watch_t late = { .calls = 0 };
    pthread_mutex_init(&late.lock, NULL);
    assert_int_equal(cf_future_on_progress(f, s_watch_report, &late), CF_OK);
    assert_int_equal(late.calls, 0);    //  done: reports are over
    cf_future_release(&f);
    pthread_mutex_destroy(&watch.lock);
    pthread_mutex_destroy(&late.lock);
}

static void s_a_task_reporting_a_million_times_does_not_flood(s_fixture_t *fx)
{
    s_watch_t watch = { .calls = 0 };
    cf_future_t *f = NULL;
    int64_t took_ms = s_watch_loop(fx, &watch, &f, 1000000, 1000, 0);
    pthread_mutex_lock(&watch.lock);
    assert_false(watch.out_of_order);
    //  One report per interval at most, plus the first and the last.
    unsigned bound = (unsigned)(took_ms / CF_TASK_REPORT_INTERVAL_MS) + 3;
    if (watch.calls > bound)
        fail_msg("%u progress callbacks in %" PRId64 " ms: over %u", watch.calls, took_ms, bound);
    assert_int_equal(watch.last_done, 1000000);
    assert_int_equal(watch.last_partial, 1000000);
    pthread_mutex_unlock(&watch.lock);
    cf_future_release(&f);
    pthread_mutex_destroy(&watch.lock);
}

static void s_a_task_that_never_reports_has_no_progress(s_fixture_t *fx)
{
    cf_future_t *f = cf_submit(s_executor(fx), "square", "i", 7);
    assert_non_null(f);
    assert_int_equal(cf_future_wait(f, S_LONG_MS), CF_OK);
    uint64_t done = 1, total = 1;
    assert_int_equal(cf_future_progress(f, &done, &total), 0);
    assert_int_equal(done, 0);
    assert_int_equal(total, 0);
    assert_null(cf_future_report(f));
    cf_future_release(&f);
}

//  One cmocka test per (behaviour, kind), named "behaviour on kind".
#define S_CASE(body, kind) \
    { \
#body " on " #kind, s_run, s_setup, s_teardown, &(s_case_t) \
        { \
            body, kind \
        } \
    }
#define S_ALL_KINDS(body) \
    S_CASE(body, CF_THREADS), S_CASE(body, CF_PROCESSES), S_CASE(body, CF_REMOTE)
#define S_LOCAL_KINDS(body) S_CASE(body, CF_THREADS), S_CASE(body, CF_PROCESSES)

int main(void)
{
    if (getenv("CF_TEST_LOG"))
        cf_log_set_handler(cf_log_to_stderr, NULL, CF_LOG_DEBUG);
    //  CF_TEST_FILTER="*wait*PROCESSES" (a pattern) runs only matching tests.
    if (getenv("CF_TEST_FILTER"))
        cmocka_set_test_filter(getenv("CF_TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        S_ALL_KINDS(s_submit_returns_ints_strings_arrays_and_maps),
        S_ALL_KINDS(s_result_timeout_is_not_a_task_error),
        S_ALL_KINDS(s_errors_say_type_message_function_and_origin),
        S_ALL_KINDS(s_cancel_wins_only_before_the_task_starts),
        S_ALL_KINDS(s_done_callbacks_run_once_each),
        S_ALL_KINDS(s_map_keeps_order_with_and_without_chunks),
        S_ALL_KINDS(s_map_stops_at_the_first_error_after_earlier_results),
        S_ALL_KINDS(s_map_times_out_and_cancels_the_rest),
        S_ALL_KINDS(s_map_asks_its_source_only_within_the_window),
        S_ALL_KINDS(s_as_completed_yields_each_once_done_first),
        S_ALL_KINDS(s_wait_modes_and_timeouts),
        S_ALL_KINDS(s_shutdown_cancels_queued_and_finishes_running),
        S_ALL_KINDS(s_progress_counts_every_outcome),
        S_ALL_KINDS(s_cancel_racing_destroy_is_safe),
        S_ALL_KINDS(s_priorities_start_high_before_low),
        S_ALL_KINDS(s_stop_ends_a_task_that_checks_with_interrupted),
        S_ALL_KINDS(s_stop_of_a_queued_task_cancels_it),
        S_ALL_KINDS(s_stop_of_a_finished_task_changes_nothing),
        S_ALL_KINDS(s_stop_of_a_task_that_ignores_it),
        S_LOCAL_KINDS(s_max_workers_must_not_be_negative),
        S_LOCAL_KINDS(s_initializer_runs_in_each_worker),
        S_ALL_KINDS(s_task_reports_arrive_in_order_the_last_before_the_result),
        S_ALL_KINDS(s_a_task_reporting_a_million_times_does_not_flood),
        S_ALL_KINDS(s_a_task_that_never_reports_has_no_progress),
    };
    return cmocka_run_group_tests_name("api on every executor kind", tests, NULL, NULL);
}

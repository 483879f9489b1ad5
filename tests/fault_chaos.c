//  Chaos under load: a client keeps a window of tasks in flight on a broker
//  with three cf-workers while, at seeded random moments, a worker is
//  killed with SIGKILL (and replaced), a worker is frozen with SIGSTOP and
//  thawed with SIGCONT a little later, the broker is restarted on the same
//  endpoints (SIGKILL or SIGTERM), and a poison task (crash(): it aborts the
//  cf-worker running it) is submitted. Workers that die are replaced.
//
//  What must hold: every future resolves exactly once, with the right
//  result. Each task's result names it (add(i, salt) = i + salt,
//  slow_double(i) = 2i), so a result delivered to the wrong future is seen;
//  a done callback counts completions per task id, so a future completed
//  twice is seen; a future still unresolved a deadline after the chaos
//  stopped is lost. A poison task must fail with WorkerLost once its retry
//  is used up, and only it: ordinary tasks get retries enough to survive any
//  number of lost workers.
//
//  Environment: CF_CHAOS_SECONDS (default 20) how long the chaos lasts;
//  CF_CHAOS_EVENTS (default "kill,stop,restart,poison") which events come;
//  CF_CHAOS_SEED (default: from the clock) the seed of the event schedule,
//  printed first so a failing run can be repeated (the schedule repeats;
//  the timing of a multi-process system does not, exactly). The last line
//  gives the totals; docs/reliability.md records a 10-minute soak of it.
//  No fixed sleeps: the test waits on futures, ready lines and exits.

#include "cf_testkit.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <inttypes.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define S_HB_MS          CF_TESTKIT_FAST_HEARTBEAT_MS
#define S_HB_TEXT        "200"
#define S_WORKERS        3                  //  live workers the test keeps
#define S_WINDOW         256                //  ordinary futures kept in flight
#define S_SLOTS          (S_WINDOW + 16)    //  room for poison tasks beyond them
#define S_RETRIES        1000               //  ordinary tasks: never run out
#define S_POISON_RETRIES 1                  //  a poison task kills two workers, then fails
#define S_BLOCK          (1u << 20)         //  completion counters per block
#define S_MAX_BLOCKS     4096               //  4 G tasks

typedef enum { S_ADD, S_SLOW, S_POISON } s_kind_t;

typedef struct {
    uint64_t id;
    s_kind_t kind;
    int64_t expected;    //  S_ADD, S_SLOW
} s_task_t;

//  Completions per task id, one byte each, in blocks that never move (the
//  done callbacks hold pointers into them).
typedef struct {
    atomic_uchar *blocks[S_MAX_BLOCKS];
    uint64_t count;
} s_counts_t;

typedef struct {
    cf_testkit_t *kit;
    char clients[256], workers[256];
    cf_testkit_proc_t *broker;
    cf_testkit_proc_t *workers_procs[64];
    size_t n_workers;
    cf_testkit_proc_t *frozen;    //  the worker under SIGSTOP, or NULL
    int64_t thaw_at_ms;
    uint64_t rng;
    uint64_t salt;
    //  Totals.
    uint64_t submitted, ok, poison_failed, wrong, kills, stops, restarts, poisons, replaced;
    long rss_first_kib, rss_max_kib;
} s_chaos_t;

static uint64_t s_next(s_chaos_t *c)
{
    //  splitmix64: a seed in, the same schedule out.
    uint64_t z = (c->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int s_between(s_chaos_t *c, int lo, int hi)
{
    return lo + (int)(s_next(c) % (uint64_t)(hi - lo + 1));
}

static atomic_uchar *s_counter(s_counts_t *counts, uint64_t id)
{
    uint64_t block = id / S_BLOCK;
    assert_true(block < S_MAX_BLOCKS);
    if (!counts->blocks[block]) {
        counts->blocks[block] = calloc(S_BLOCK, sizeof(atomic_uchar));
        assert_non_null(counts->blocks[block]);
    }
    if (id + 1 > counts->count)
        counts->count = id + 1;
    return &counts->blocks[block][id % S_BLOCK];
}

static int s_on_done(cf_future_t *f, void *arg)
{
    (void)f;
    atomic_fetch_add((atomic_uchar *)arg, 1);
    return 0;
}

static void s_broker_sample(s_chaos_t *c)
{
    long rss = cf_testkit_rss_kib(cf_testkit_pid(c->broker));
    if (rss > c->rss_max_kib)
        c->rss_max_kib = rss;
}

static cf_testkit_proc_t *s_start_broker(s_chaos_t *c, bool fixed)
{
    if (!fixed)
        return cf_testkit_start_broker(c->kit, "--heartbeat-ms", S_HB_TEXT, "--liveness", "3",
                                       NULL);
    return cf_testkit_start_broker(c->kit, "--clients", c->clients, "--workers", c->workers,
                                   "--heartbeat-ms", S_HB_TEXT, "--liveness", "3", NULL);
}

static void s_start_worker(s_chaos_t *c)
{
    assert_true(c->n_workers < sizeof c->workers_procs / sizeof c->workers_procs[0]);
    c->workers_procs[c->n_workers++] = cf_testkit_start_worker(
        c->kit, c->workers, "--threads", "2", "--heartbeat-ms", S_HB_TEXT, "--liveness", "3", NULL);
}

//  Forgets dead workers and starts new ones until S_WORKERS live.
static void s_keep_workers(s_chaos_t *c)
{
    size_t kept = 0;
    for (size_t i = 0; i < c->n_workers; i++) {
        if (cf_testkit_alive(c->workers_procs[i]))
            c->workers_procs[kept++] = c->workers_procs[i];
        else if (c->workers_procs[i] == c->frozen)
            c->frozen = NULL;
    }
    c->n_workers = kept;
    while (c->n_workers < S_WORKERS) {
        s_start_worker(c);
        c->replaced++;
    }
}

static cf_testkit_proc_t *s_some_worker(s_chaos_t *c)
{
    return c->workers_procs[s_next(c) % c->n_workers];
}

//  The events and how often each comes (of every 100), unless
//  CF_CHAOS_EVENTS names the ones wanted ("kill,stop,poison": a soak of one
//  broker's memory, without restarts).
enum { S_KILL, S_STOP, S_RESTART, S_POISON_TASK, S_EVENTS };
static const char *const s_event_names[S_EVENTS] = { "kill", "stop", "restart", "poison" };
static int s_weights[S_EVENTS] = { 35, 25, 15, 25 };

static void s_choose_events(const char *wanted)
{
    if (!wanted || !*wanted)
        return;
    int total = 0;
    for (int e = 0; e < S_EVENTS; e++) {
        const char *at = strstr(wanted, s_event_names[e]);
        size_t len = strlen(s_event_names[e]);
        bool named = at && (at == wanted || at[-1] == ',') && (at[len] == ',' || !at[len]);
        if (!named)
            s_weights[e] = 0;
        total += s_weights[e];
    }
    if (total == 0)
        fail_msg("CF_CHAOS_EVENTS=%s names none of kill, stop, restart, poison", wanted);
}

static void s_event(s_chaos_t *c, cf_executor_t *executor, s_counts_t *counts, s_task_t **tasks,
                    cf_future_t **window, size_t *n_window)
{
    int total = 0;
    for (int e = 0; e < S_EVENTS; e++)
        total += s_weights[e];
    int roll = s_between(c, 0, total - 1);
    int event = 0;
    while (roll >= s_weights[event])
        roll -= s_weights[event++];
    if (event == S_KILL) {
        cf_testkit_proc_t *victim = s_some_worker(c);
        if (victim == c->frozen)
            c->frozen = NULL;
        cf_testkit_kill(victim);
        c->kills++;
        s_keep_workers(c);
    }
    else if (event == S_STOP) {
        if (c->frozen)
            return;
        c->frozen = s_some_worker(c);
        assert_true(cf_testkit_signal(c->frozen, SIGSTOP));
        //  Long enough to be counted lost (3 x 200 ms) most of the time.
        c->thaw_at_ms = cf_testkit_now_ms() + s_between(c, 300, 2000);
        c->stops++;
    }
    else if (event == S_RESTART) {
        s_broker_sample(c);
        if (s_next(c) & 1)
            cf_testkit_kill(c->broker);
        else
            cf_testkit_stop(c->broker, CF_TESTKIT_STOP_MS);
        c->broker = s_start_broker(c, true);
        c->restarts++;
    }
    else if (*n_window < S_SLOTS) {
        cf_task_opts_t opts = { .retries = S_POISON_RETRIES };
        uint64_t id = c->submitted++;
        s_task_t *task = malloc(sizeof *task);
        assert_non_null(task);
        *task = (s_task_t){ .id = id, .kind = S_POISON };
        cf_future_t *f = cf_submit_with(executor, &opts, "crash", "");
        assert_non_null(f);
        assert_int_equal(cf_future_add_done_callback(f, s_on_done, s_counter(counts, id)), CF_OK);
        tasks[*n_window] = task;
        window[(*n_window)++] = f;
        c->poisons++;
    }
}

static void s_submit(s_chaos_t *c, cf_executor_t *executor, s_counts_t *counts, s_task_t **tasks,
                     cf_future_t **window, size_t *n_window)
{
    uint64_t id = c->submitted++;
    s_task_t *task = malloc(sizeof *task);
    assert_non_null(task);
    cf_future_t *f;
    //  One in twenty takes 100 ms, so a kill often finds tasks mid-run.
    if (s_next(c) % 20 == 0) {
        *task = (s_task_t){ .id = id, .kind = S_SLOW, .expected = 2 * (int64_t)id };
        f = cf_submit(executor, "slow_double", "i", (int64_t)id);
    }
    else {
        *task = (s_task_t){ .id = id, .kind = S_ADD, .expected = (int64_t)id + (int64_t)c->salt };
        f = cf_submit(executor, "add", "ii", (int64_t)id, (int64_t)c->salt);
    }
    if (!f)
        fail_msg("submit %" PRIu64 " failed: %s", id, cf_last_error());
    assert_int_equal(cf_future_add_done_callback(f, s_on_done, s_counter(counts, id)), CF_OK);
    tasks[*n_window] = task;
    window[(*n_window)++] = f;
}

//  Checks a done future against its task; returns false (and says so) when
//  it is wrong.
static bool s_check(s_chaos_t *c, s_task_t *task, cf_future_t *f)
{
    const cf_task_error_t *error = cf_future_error(f);
    if (task->kind == S_POISON) {
        if (error && strcmp(error->type, "WorkerLost") == 0) {
            c->poison_failed++;
            return true;
        }
        fprintf(stderr, "chaos: poison task %" PRIu64 " ended with %s\n", task->id,
                error ? error->type : "a result");
        return false;
    }
    int64_t value = 0;
    cf_err_t rc = cf_future_int(f, 0, &value);
    if (rc == CF_OK && value == task->expected) {
        c->ok++;
        return true;
    }
    fprintf(stderr, "chaos: task %" PRIu64 " (%s) wanted %" PRId64 ", got %s %" PRId64 " %s%s%s\n",
            task->id, cf_future_function(f), task->expected, cf_strerror(rc), value,
            error ? error->type : "", error ? ": " : "", error ? error->message : "");
    return false;
}

static const char *s_env(const char *name, const char *fallback)
{
    const char *value = getenv(name);
    return value && *value ? value : fallback;
}

static void test_every_future_resolves_once_under_chaos(void **state)
{
    s_chaos_t c = { .kit = *state };
    int seconds = atoi(s_env("CF_CHAOS_SECONDS", "20"));
    assert_true(seconds > 0);
    char seed_text[32];
    snprintf(seed_text, sizeof seed_text, "%" PRIu64,
             (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 16));
    uint64_t seed = strtoull(s_env("CF_CHAOS_SEED", seed_text), NULL, 10);
    c.rng = seed;
    s_choose_events(getenv("CF_CHAOS_EVENTS"));
    c.salt = 1000000007ull + s_next(&c) % 1000;
    printf("chaos: seed=%" PRIu64 " seconds=%d (CF_CHAOS_SEED=%" PRIu64
           " CF_CHAOS_SECONDS=%d repeat the schedule)\n",
           seed, seconds, seed, seconds);
    fflush(stdout);

    c.broker = s_start_broker(&c, false);
    snprintf(c.clients, sizeof c.clients, "%s", cf_testkit_clients(c.broker));
    snprintf(c.workers, sizeof c.workers, "%s", cf_testkit_workers(c.broker));
    for (int i = 0; i < S_WORKERS; i++)
        s_start_worker(&c);
    cf_options_t options = { .endpoint = c.clients,
                             .heartbeat_ivl_ms = S_HB_MS,
                             .retries = S_RETRIES };
    cf_executor_t *executor = cf_executor_connect(c.clients, &options);
    if (!executor)
        fail_msg("cannot connect to %s: %s", c.clients, cf_last_error());

    s_counts_t *counts = calloc(1, sizeof *counts);
    assert_non_null(counts);
    cf_future_t *window[S_SLOTS], *done[S_SLOTS], *not_done[S_SLOTS];
    s_task_t *tasks[S_SLOTS], *tasks_left[S_SLOTS];
    size_t n_window = 0;
    int64_t start_ms = cf_testkit_now_ms();
    int64_t end_ms = start_ms + (int64_t)seconds * 1000;
    int64_t next_event_ms = start_ms + s_between(&c, 500, 1500);
    int64_t next_progress_ms = start_ms + 60000;
    bool warm = false;
    bool draining = false;
    int64_t drain_deadline_ms = 0;

    while (true) {
        int64_t now = cf_testkit_now_ms();
        if (!draining && now >= end_ms) {
            draining = true;
            if (c.frozen) {
                cf_testkit_signal(c.frozen, SIGCONT);
                c.frozen = NULL;
            }
            s_keep_workers(&c);
            drain_deadline_ms = now + CF_TESTKIT_DEADLINE_MS;
        }
        if (draining && n_window == 0)
            break;
        if (draining && now >= drain_deadline_ms)
            break;    //  what is left is lost
        if (!draining) {
            if (c.frozen && now >= c.thaw_at_ms) {
                assert_true(cf_testkit_signal(c.frozen, SIGCONT));
                c.frozen = NULL;
            }
            if (now >= next_event_ms) {
                s_event(&c, executor, counts, tasks, window, &n_window);
                next_event_ms = cf_testkit_now_ms() + s_between(&c, 500, 2500);
            }
            while (n_window < S_WINDOW)
                s_submit(&c, executor, counts, tasks, window, &n_window);
        }
        //  Also while draining: poison tasks still pending may yet crash
        //  workers, and the rest need somewhere to run.
        s_keep_workers(&c);
        if (now >= next_progress_ms && !draining) {
            //  A soak's memory over time: one line a minute.
            printf("chaos: t=%" PRId64 "s futures=%" PRIu64 " kills=%" PRIu64 " restarts=%" PRIu64
                   " broker_rss_kib=%ld\n",
                   (now - start_ms) / 1000, c.submitted, c.kills, c.restarts,
                   cf_testkit_rss_kib(cf_testkit_pid(c.broker)));
            fflush(stdout);
            next_progress_ms += 60000;
        }
        if (!warm && c.ok >= 1000) {
            warm = true;
            c.rss_first_kib = cf_testkit_rss_kib(cf_testkit_pid(c.broker));
        }
        int64_t wait_ms = draining ? drain_deadline_ms - now : next_event_ms - now;
        if (c.frozen && c.thaw_at_ms - now < wait_ms)
            wait_ms = c.thaw_at_ms - now;
        wait_ms = wait_ms < 1 ? 1 : wait_ms > 200 ? 200 : wait_ms;
        size_t n_done = 0, n_not_done = 0;
        cf_wait(window, n_window, (int)wait_ms, CF_FIRST_COMPLETED, done, &n_done, not_done,
                &n_not_done);
        if (n_done == 0)
            continue;
        //  Keep the order of what is left (tasks follow their futures).
        size_t kept = 0;
        for (size_t i = 0; i < n_window; i++) {
            bool is_done = false;
            for (size_t j = 0; j < n_done; j++)
                is_done = is_done || done[j] == window[i];
            if (!is_done) {
                tasks_left[kept] = tasks[i];
                not_done[kept++] = window[i];
                continue;
            }
            if (!s_check(&c, tasks[i], window[i]))
                c.wrong++;
            free(tasks[i]);
            cf_future_release(&window[i]);
        }
        n_window = kept;
        memcpy(window, not_done, kept * sizeof window[0]);
        memcpy(tasks, tasks_left, kept * sizeof tasks[0]);
    }
    int64_t chaos_ms = end_ms - start_ms;
    int64_t drain_ms = cf_testkit_now_ms() - end_ms;
    uint64_t lost = n_window;
    for (size_t i = 0; i < n_window; i++) {
        fprintf(stderr, "chaos: task %" PRIu64 " (%s) never resolved\n", tasks[i]->id,
                cf_future_function(window[i]));
    }
    long rss_end_kib = cf_testkit_rss_kib(cf_testkit_pid(c.broker));
    if (rss_end_kib > c.rss_max_kib)
        c.rss_max_kib = rss_end_kib;

    //  Everything still pending (only when lost) goes with the executor;
    //  a completion after this point would still be counted below.
    if (lost == 0)
        cf_executor_destroy(&executor);
    uint64_t duplicates = 0, missing = 0;
    for (uint64_t id = 0; id < c.submitted; id++) {
        unsigned calls = atomic_load(s_counter(counts, id));
        if (calls > 1) {
            fprintf(stderr, "chaos: task %" PRIu64 " completed %u times\n", id, calls);
            duplicates++;
        }
        else if (calls == 0)
            missing++;
    }
    printf("chaos: seed=%" PRIu64 " seconds=%d futures=%" PRIu64 " ok=%" PRIu64 " poison=%" PRIu64
           " poison_failed=%" PRIu64 " kills=%" PRIu64 " stops=%" PRIu64 " restarts=%" PRIu64
           " workers_started=%" PRIu64 " lost=%" PRIu64 " duplicates=%" PRIu64 " wrong=%" PRIu64
           " broker_rss_kib_start=%ld"
           " broker_rss_kib_end=%ld broker_rss_kib_max=%ld chaos_ms=%" PRId64 " drain_ms=%" PRId64
           "\n",
           seed, seconds, c.submitted, c.ok, c.poisons, c.poison_failed, c.kills, c.stops,
           c.restarts, c.replaced + S_WORKERS, lost, duplicates, c.wrong, c.rss_first_kib,
           rss_end_kib, c.rss_max_kib, chaos_ms, drain_ms);
    fflush(stdout);
    if (lost || duplicates || c.wrong || missing != lost) {
        cf_testkit_dump_logs(c.kit);
        fail_msg("chaos (seed %" PRIu64 "): %" PRIu64 " lost, %" PRIu64 " completed twice, %" PRIu64
                 " wrong, %" PRIu64 " without a completion",
                 seed, lost, duplicates, c.wrong, missing);
    }
    assert_int_equal(c.ok + c.poison_failed, c.submitted);
    for (uint64_t b = 0; b < S_MAX_BLOCKS; b++)
        free(counts->blocks[b]);
    free(counts);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_every_future_resolves_once_under_chaos,
                                        cf_testkit_setup, cf_testkit_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

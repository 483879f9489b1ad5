//  CF_THREADS back end: a queue and max_workers threads in this process.
//
//  Design note. This is a direct queue, not the broker actor over inproc://:
//  a measured decision (docs/architecture.md, "CF_THREADS uses a direct
//  queue"). The broker hop would add two socket hops and two envelope
//  encodes per task to the path whose target is hundreds of thousands of
//  tasks per second, for reliability features (heartbeats, retries of lost
//  workers) that mean nothing inside one process. Semantics stay those of
//  the other kinds: arguments and results are msgpack-encoded and every task
//  runs through cf_registry_run.
//
//  Speed:
//  - Workers take tasks in batches under one lock acquisition (up to
//    S_BATCH_MAX, and only when the queue is long compared with the number
//    of workers, so a short queue of slow I/O tasks is still spread over
//    every thread). A task in a batch is still PENDING: cancel works on it
//    through the future's state (a worker starts a task only if
//    cf_future_set_running wins against the cancel).
//  - Each worker sleeps on its own condition variable and a submission wakes
//    exactly one sleeper, only when the workers already woken are fewer than
//    the tasks queued; busy workers loop back to the queue without sleeping,
//    so a steady stream of tasks costs no system calls on either side.
//  - No allocation per task beyond what the front made and the result bytes;
//    the queue is a ring per priority level, each grown by doubling.
//
//  Priorities (cf_task_opts_t.priority): a ring per priority level that has
//  tasks queued. The highest level lives in the pool itself, next to the
//  lock, and workers take their batches from it only (a batch never mixes
//  priorities); the lower ones wait in a small array sorted by priority. So
//  while every task has one priority, submitting and taking touch what the
//  single ring of before did, at its place in memory (a first version with
//  every level in an array of its own allocation measured about 15% fewer
//  no-op submissions per second: one more cache line bouncing between
//  submitter and workers). A task of a lower priority costs a binary search
//  over the levels, a new level an insert into that array (levels, never
//  queued tasks, move), a new highest one a push of the old top onto the
//  array's end. A level goes as soon as it empties, the next one becoming the
//  top: the memory follows the levels in use, however many priorities callers
//  used before. The last level stays when it empties and the next submission
//  relabels it, so a single priority never allocates again, and one retired
//  ring is kept for the next new level.
//
//  Timeouts: a timer thread, started on the first task that has a timeout,
//  watches one slot per worker (a worker runs one task at a time) and fails
//  the future with TimeoutError at the deadline. The worker still finishes
//  the task (a thread cannot be killed safely); the late result is dropped
//  by the future's state machine.

#define _GNU_SOURCE    //  pthread_setname_np

#include "cf_pool.h"

#include "cf_clock.h"
#include "cf_error.h"
#include "cf_log.h"
#include "cf_proto.h"
#include "cf_registry.h"
#include "cf_report.h"

#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define S_LOG "pool"

//  Most tasks a worker takes at once.
#define S_BATCH_MAX       16
//  Times an idle worker yields the CPU, watching the queue, before it
//  sleeps (about 1 us each when nothing else runs, more when others do).
#define S_SPIN_ROUNDS     64
//  Initial capacity of the first level's ring (rings grow by doubling).
#define S_RING_INITIAL    256
//  Initial capacity of a later level's ring: small, since a caller may keep
//  many priorities queued with a few tasks each.
#define S_LEVEL_INITIAL   8
//  Initial capacity of the array of lower levels.
#define S_LOWER_INITIAL   4
//  Linux thread names are at most 15 bytes.
#define S_THREAD_NAME_MAX 15

typedef struct cf_pool cf_pool_t;

//  The queued tasks of one priority, in submission order.
typedef struct {
    cf_task_t **ring;
    size_t cap;    //  a power of two
    size_t head;
    size_t count;
    int32_t priority;
} s_level_t;

typedef struct {
    cf_pool_t *pool;
    pthread_t thread;
    bool started;           //  thread was created
    int index;              //  N in the thread name
    pthread_cond_t cond;    //  this worker's wakeup
    bool woken;             //  set under pool->lock by the waker
    //  Timeout slot, under pool->timer_lock.
    cf_future_t *timed;    //  the running task's future, or NULL
    int64_t deadline_ms;
    uint32_t timeout_ms;
} s_worker_t;

struct cf_pool {
    pthread_mutex_t lock;    //  queue, sleepers, stopping
    //  The highest priority: holds tasks whenever any level does. No ring
    //  once shutdown(cancel_futures) took it.
    s_level_t top;
    size_t count;            //  tasks queued, over every level
    atomic_size_t queued;    //  count, readable without the lock
    s_worker_t *workers;
    int n_workers;
    int *sleepers;    //  stack of sleeping worker indexes
    int n_sleepers;
    int searching;                //  woken or spinning workers not yet at the queue
    bool stopping;                //  no more submissions
    atomic_bool stopping_hint;    //  stopping, readable without the lock
    atomic_bool cancelling;       //  cancel tasks workers already took
    void (*initializer)(void *arg);
    void *initarg;
    char prefix[S_THREAD_NAME_MAX + 1];
    int pid;                      //  for error reports
    pthread_mutex_t join_lock;    //  serialises joining
    bool joined;
    pthread_mutex_t timer_lock;    //  timer state and worker slots
    pthread_cond_t timer_cond;
    pthread_t timer;
    bool timer_started;
    bool timer_stop;
    int64_t timer_next_ms;    //  what the timer sleeps until (-1: nothing)
    //  Under lock, used only with several priorities queued (cold: kept
    //  off the cache lines every task touches).
    s_level_t *lower;    //  the levels below top, lowest first, none empty
    size_t n_lower;
    size_t lower_cap;
    cf_task_t **spare;    //  a retired level's ring, or NULL
    size_t spare_cap;
};

// ---------------------------------------------------------------------------
//  Timeouts

static void *s_timer_main(void *arg)
{
    cf_pool_t *pool = arg;
    pthread_setname_np(pthread_self(), "cf-timer");
    pthread_mutex_lock(&pool->timer_lock);
    while (!pool->timer_stop) {
        int64_t now = cf_clock_now_ms();
        int64_t next = -1;
        cf_future_t *expired = NULL;
        uint32_t timeout_ms = 0;
        for (int i = 0; i < pool->n_workers; i++) {
            s_worker_t *w = &pool->workers[i];
            if (!w->timed)
                continue;
            if (w->deadline_ms <= now) {
                //  The worker's task reference keeps the future alive while
                //  it is in the slot; take our own before leaving the lock.
                expired = cf_future_ref(w->timed);
                timeout_ms = w->timeout_ms;
                w->timed = NULL;
                break;
            }
            if (next < 0 || w->deadline_ms < next)
                next = w->deadline_ms;
        }
        if (expired) {
            pthread_mutex_unlock(&pool->timer_lock);
            char message[96];
            snprintf(message, sizeof message, "the task ran longer than its timeout of %u ms",
                     timeout_ms);
            cf_future_set_error(expired, "TimeoutError", message, cf_registry_hostname(),
                                pool->pid);
            cf_future_release(&expired);
            pthread_mutex_lock(&pool->timer_lock);
            continue;
        }
        pool->timer_next_ms = next;
        if (next < 0)
            pthread_cond_wait(&pool->timer_cond, &pool->timer_lock);
        else {
            struct timespec ts = cf_clock_deadline(cf_clock_ms_until(next));
            pthread_cond_timedwait(&pool->timer_cond, &pool->timer_lock, &ts);
        }
    }
    pthread_mutex_unlock(&pool->timer_lock);
    return NULL;
}

static cf_err_t s_timer_arm(cf_pool_t *pool, s_worker_t *w, cf_future_t *f, uint32_t timeout_ms)
{
    int64_t deadline = cf_clock_now_ms() + timeout_ms;
    pthread_mutex_lock(&pool->timer_lock);
    if (!pool->timer_started) {
        int rc = pthread_create(&pool->timer, NULL, s_timer_main, pool);
        if (rc != 0) {
            pthread_mutex_unlock(&pool->timer_lock);
            errno = rc;
            return CF_ESYS;
        }
        pool->timer_started = true;
    }
    w->timed = f;
    w->deadline_ms = deadline;
    w->timeout_ms = timeout_ms;
    if (pool->timer_next_ms < 0 || deadline < pool->timer_next_ms)
        pthread_cond_signal(&pool->timer_cond);
    pthread_mutex_unlock(&pool->timer_lock);
    return CF_OK;
}

static void s_timer_disarm(cf_pool_t *pool, s_worker_t *w)
{
    pthread_mutex_lock(&pool->timer_lock);
    w->timed = NULL;
    pthread_mutex_unlock(&pool->timer_lock);
}

// ---------------------------------------------------------------------------
//  Running tasks

static void s_run(cf_pool_t *pool, s_worker_t *w, cf_task_t *task)
{
    cf_future_t *f = task->future;
    if (atomic_load_explicit(&pool->cancelling, memory_order_relaxed)) {
        //  shutdown(cancel_futures) came after this worker took its batch.
        cf_future_set_cancelled(f);
        cf_task_destroy(&task);
        return;
    }
    if (!cf_future_set_running(f)) {
        //  Cancelled while queued.
        cf_task_destroy(&task);
        return;
    }
    bool timed = false;
    if (task->timeout_ms > 0) {
        if (s_timer_arm(pool, w, f, task->timeout_ms) != CF_OK) {
            cf_future_set_error(f, "SystemError", "cannot start the timeout thread",
                                cf_registry_hostname(), pool->pid);
            cf_task_destroy(&task);
            return;
        }
        timed = true;
    }
    int attempts = 1;
    if ((task->flags & CF_TASK_RETRY_ON_ERROR) && task->retries > 0)
        attempts += task->retries;
    size_t function_len = strlen(cf_task_function(task));
    //  The stop flag lives in the future: cf_future_stop sets it, the task
    //  reads it (cf_stop_requested). Threads have no forced stop. The task's
    //  reports go straight to its future from this thread, rate-limited
    //  (core/cf_report.h); the last one before the result.
    cf_report_direct_t report;
    cf_report_direct_init(&report, f);
    cf_run_ctx_t ctx = { .stop = cf_future_stop_flag(f),
                         .progress = cf_report_direct_sink,
                         .progress_arg = &report };
    for (int attempt = 1;; attempt++) {
        cf_outcome_t outcome = { 0 };
        cf_err_t rc = cf_registry_run(cf_task_function(task), function_len, task->args,
                                      task->args_len, &ctx, &outcome);
        cf_report_direct_flush(&report);
        if (rc != CF_OK) {
            cf_future_set_error(f, "MemoryError", "out of memory running the task",
                                cf_registry_hostname(), pool->pid);
            cf_outcome_fini(&outcome);
            break;
        }
        if (outcome.ok) {
            cf_future_take_result(f, outcome.value, outcome.value_len);
            outcome.value = NULL;
            cf_outcome_fini(&outcome);
            break;
        }
        //  A raising task with retry_on_error runs again, unless its
        //  timeout already failed it.
        if (attempt < attempts && !cf_future_done(f) && !cf_future_stop_asked(f)) {
            cf_log_debug(S_LOG, "%s raised %s, attempt %d of %d", cf_task_function(task),
                         outcome.error_type ? outcome.error_type : "?", attempt, attempts);
            cf_outcome_fini(&outcome);
            continue;
        }
        cf_future_set_error(f, outcome.error_type, outcome.error_message, cf_registry_hostname(),
                            pool->pid);
        cf_outcome_fini(&outcome);
        break;
    }
    cf_report_direct_fini(&report);
    if (timed)
        s_timer_disarm(pool, w);
    cf_task_destroy(&task);
}

// ---------------------------------------------------------------------------
//  Workers and the queue

//  Wakes the most recently idle worker (its cache is warmest); under lock.
//  Returns the condition to signal once the lock is released.
static pthread_cond_t *s_wake_one(cf_pool_t *pool)
{
    s_worker_t *w = &pool->workers[pool->sleepers[--pool->n_sleepers]];
    w->woken = true;
    pool->searching++;
    return &w->cond;
}

//  How many tasks one worker takes: one while the queue is short compared
//  with the workers (spread slow tasks), more as it grows (amortise the lock).
//  One also while lower priorities wait: a batch of high ones held by a
//  thread the scheduler then parks would begin after the low ones the other
//  workers take meanwhile (test_api_kinds saw 5 of them begin last).
static size_t s_batch_size(const cf_pool_t *pool)
{
    if (pool->count > pool->top.count)
        return 1;
    size_t take = pool->count / (2 * (size_t)pool->n_workers);
    if (take < 1)
        take = 1;
    if (take > S_BATCH_MAX)
        take = S_BATCH_MAX;
    return take;
}

static cf_err_t s_ring_grow(s_level_t *level)
{
    size_t cap = level->cap * 2;
    cf_task_t **ring = malloc(cap * sizeof *ring);
    if (!ring)
        return CF_ENOMEM;
    for (size_t i = 0; i < level->count; i++)
        ring[i] = level->ring[(level->head + i) % level->cap];
    free(level->ring);
    level->ring = ring;
    level->cap = cap;
    level->head = 0;
    return CF_OK;
}

//  Retires an empty level's ring. The larger of it and the spare is kept:
//  at most one idle ring, no larger than the queue once needed (as the
//  single ring of before never shrank), and a burst at a new level does not
//  grow a ring again.
static void s_ring_retire(cf_pool_t *pool, cf_task_t **ring, size_t cap)
{
    if (cap > pool->spare_cap) {
        free(pool->spare);
        pool->spare = ring;
        pool->spare_cap = cap;
    }
    else
        free(ring);
}

//  A ring for a new level: the spare, or a small new one.
static cf_err_t s_ring_new(cf_pool_t *pool, s_level_t *level)
{
    if (pool->spare) {
        level->ring = pool->spare;
        level->cap = pool->spare_cap;
        pool->spare = NULL;
        pool->spare_cap = 0;
        return CF_OK;
    }
    level->ring = malloc(S_LEVEL_INITIAL * sizeof *level->ring);
    if (!level->ring)
        return CF_ENOMEM;
    level->cap = S_LEVEL_INITIAL;
    return CF_OK;
}

//  Room for one more lower level.
static cf_err_t s_lower_reserve(cf_pool_t *pool)
{
    if (pool->n_lower < pool->lower_cap)
        return CF_OK;
    size_t cap = pool->lower_cap ? pool->lower_cap * 2 : S_LOWER_INITIAL;
    s_level_t *lower = realloc(pool->lower, cap * sizeof *lower);
    if (!lower)
        return CF_ENOMEM;
    pool->lower = lower;
    pool->lower_cap = cap;
    return CF_OK;
}

//  The top emptied: the highest lower level takes its place.
static void s_top_drop(cf_pool_t *pool)
{
    s_ring_retire(pool, pool->top.ring, pool->top.cap);
    pool->top = pool->lower[--pool->n_lower];
    //  The array too gives back what a crowd of priorities once took:
    //  halved at a quarter full, so a level that comes and goes at the
    //  edge does not resize it each time.
    if (pool->lower_cap > S_LOWER_INITIAL && pool->n_lower <= pool->lower_cap / 4) {
        s_level_t *lower = realloc(pool->lower, pool->lower_cap / 2 * sizeof *lower);
        if (lower) {
            pool->lower = lower;
            pool->lower_cap /= 2;
        }
    }
}

//  The level for a task of priority, other than top's, with tasks queued;
//  made (empty) if there is none. NULL when out of memory.
static s_level_t *s_level_find(cf_pool_t *pool, int32_t priority)
{
    s_level_t level = { .priority = priority };
    if (priority > pool->top.priority) {
        if (s_lower_reserve(pool) != CF_OK || s_ring_new(pool, &level) != CF_OK)
            return NULL;
        pool->lower[pool->n_lower++] = pool->top;
        pool->top = level;
        return &pool->top;
    }
    size_t low = 0, high = pool->n_lower;
    while (low < high) {
        size_t mid = low + (high - low) / 2;
        if (pool->lower[mid].priority < priority)
            low = mid + 1;
        else
            high = mid;
    }
    if (low < pool->n_lower && pool->lower[low].priority == priority)
        return &pool->lower[low];
    if (s_lower_reserve(pool) != CF_OK || s_ring_new(pool, &level) != CF_OK)
        return NULL;
    memmove(&pool->lower[low + 1], &pool->lower[low], (pool->n_lower - low) * sizeof *pool->lower);
    pool->lower[low] = level;
    pool->n_lower++;
    return &pool->lower[low];
}

static void *s_worker_main(void *arg)
{
    s_worker_t *w = arg;
    cf_pool_t *pool = w->pool;
    //  "<prefix>-N" in 15 bytes: the prefix is cut, never the number.
    char name[S_THREAD_NAME_MAX + 1];
    char index[16];
    int index_len = snprintf(index, sizeof index, "-%d", w->index);
    size_t index_size = index_len > 0 ? (size_t)index_len : 0;
    if (index_size > S_THREAD_NAME_MAX)
        index_size = S_THREAD_NAME_MAX;
    size_t prefix_len = strlen(pool->prefix);
    if (prefix_len > S_THREAD_NAME_MAX - index_size)
        prefix_len = S_THREAD_NAME_MAX - index_size;
    memcpy(name, pool->prefix, prefix_len);
    memcpy(name + prefix_len, index, index_size);
    name[prefix_len + index_size] = '\0';
    pthread_setname_np(pthread_self(), name);
    if (pool->initializer)
        pool->initializer(pool->initarg);

    cf_task_t *batch[S_BATCH_MAX];
    pthread_mutex_lock(&pool->lock);
    for (;;) {
        if (pool->count > 0) {
            s_level_t *top = &pool->top;
            size_t take = s_batch_size(pool);
            if (take > top->count)
                take = top->count;
            for (size_t i = 0; i < take; i++) {
                batch[i] = top->ring[top->head];
                top->head = (top->head + 1) % top->cap;
            }
            top->count -= take;
            pool->count -= take;
            //  Tasks left beyond the top's are in lower levels: asking the
            //  count rather than n_lower keeps the cold lines out of the
            //  common case.
            if (top->count == 0 && pool->count > 0)
                s_top_drop(pool);
            atomic_store_explicit(&pool->queued, pool->count, memory_order_relaxed);
            //  More work than this worker took and nobody on the way: pass
            //  the wakeup on, so the submitter does not have to.
            pthread_cond_t *wake = NULL;
            if (pool->count > 0 && pool->n_sleepers > 0 && pool->searching == 0)
                wake = s_wake_one(pool);
            pthread_mutex_unlock(&pool->lock);
            if (wake)
                pthread_cond_signal(wake);
            for (size_t i = 0; i < take; i++)
                s_run(pool, w, batch[i]);
            pthread_mutex_lock(&pool->lock);
            continue;
        }
        if (pool->stopping)
            break;
        //  Queue empty: watch it for a moment before sleeping. Tiny tasks
        //  arrive faster than a sleep/wake round trip (two system calls,
        //  two context switches), so a worker that sleeps at once is woken
        //  again at once, thousands of times a second. A spinning worker
        //  counts as searching, so submitters wake nobody else for it.
        //  (Measured: one spinner at a time instead made it worse, the
        //  others slept and were woken by every burst.)
        pool->searching++;
        pthread_mutex_unlock(&pool->lock);
        for (int round = 0; round < S_SPIN_ROUNDS; round++) {
            if (atomic_load_explicit(&pool->queued, memory_order_relaxed) > 0
                || atomic_load_explicit(&pool->stopping_hint, memory_order_relaxed))
                break;
            sched_yield();
        }
        pthread_mutex_lock(&pool->lock);
        pool->searching--;
        if (pool->count > 0 || pool->stopping)
            continue;
        pool->sleepers[pool->n_sleepers++] = w->index;
        while (!w->woken)
            pthread_cond_wait(&w->cond, &pool->lock);
        w->woken = false;
        pool->searching--;
    }
    pthread_mutex_unlock(&pool->lock);
    return NULL;
}

static cf_err_t s_submit(void *backend, cf_task_t **ptask)
{
    cf_pool_t *pool = backend;
    pthread_mutex_lock(&pool->lock);
    if (pool->stopping) {
        pthread_mutex_unlock(&pool->lock);
        cf_task_destroy(ptask);
        return CF_ESHUTDOWN;
    }
    int32_t priority = (*ptask)->priority;
    s_level_t *level = &pool->top;
    if (level->priority != priority) {
        if (pool->count == 0)
            level->priority = priority;    //  nothing queued: top is the only level
        else
            level = s_level_find(pool, priority);
    }
    if (!level || (level->count == level->cap && s_ring_grow(level) != CF_OK)) {
        pthread_mutex_unlock(&pool->lock);
        cf_task_destroy(ptask);
        return CF_ENOMEM;
    }
    level->ring[(level->head + level->count) % level->cap] = *ptask;
    *ptask = NULL;
    level->count++;
    pool->count++;
    atomic_store_explicit(&pool->queued, pool->count, memory_order_relaxed);
    pthread_cond_t *wake = NULL;
    if (pool->n_sleepers > 0 && (size_t)pool->searching < pool->count)
        wake = s_wake_one(pool);
    pthread_mutex_unlock(&pool->lock);
    if (wake)
        pthread_cond_signal(wake);
    return CF_OK;
}

// ---------------------------------------------------------------------------
//  Shutdown

//  Joins every thread once; CF_EINVAL from one of the pool's own threads
//  (it would wait for itself forever), like Python's "cannot join current
//  thread".
static cf_err_t s_join(cf_pool_t *pool)
{
    pthread_t self = pthread_self();
    bool own = false;
    for (int i = 0; i < pool->n_workers; i++)
        if (pool->workers[i].started && pthread_equal(self, pool->workers[i].thread))
            own = true;
    pthread_mutex_lock(&pool->timer_lock);
    if (pool->timer_started && pthread_equal(self, pool->timer))
        own = true;
    pthread_mutex_unlock(&pool->timer_lock);
    if (own)
        return cf_error_set(CF_EINVAL, "a pool cannot wait for its own shutdown from "
                                       "one of its threads");
    pthread_mutex_lock(&pool->join_lock);
    if (!pool->joined) {
        for (int i = 0; i < pool->n_workers; i++)
            if (pool->workers[i].started)
                pthread_join(pool->workers[i].thread, NULL);
        pthread_mutex_lock(&pool->timer_lock);
        pool->timer_stop = true;
        bool timer_started = pool->timer_started;
        pthread_cond_signal(&pool->timer_cond);
        pthread_mutex_unlock(&pool->timer_lock);
        if (timer_started)
            pthread_join(pool->timer, NULL);
        pool->joined = true;
    }
    pthread_mutex_unlock(&pool->join_lock);
    return CF_OK;
}

static cf_err_t s_shutdown(void *backend, bool wait, bool cancel_futures)
{
    cf_pool_t *pool = backend;
    s_level_t taken_top = { 0 };
    s_level_t *taken = NULL;
    size_t n_taken = 0;

    pthread_mutex_lock(&pool->lock);
    pool->stopping = true;
    atomic_store(&pool->stopping_hint, true);
    if (cancel_futures) {
        atomic_store(&pool->cancelling, true);
        taken_top = pool->top;
        pool->top = (s_level_t){ 0 };
        taken = pool->lower;
        n_taken = pool->n_lower;
        pool->lower = NULL;
        pool->n_lower = pool->lower_cap = 0;
        pool->count = 0;
        atomic_store(&pool->queued, 0);
    }
    //  Sleepers wake, find the queue empty and the pool stopping, and exit;
    //  busy workers drain the queue first.
    while (pool->n_sleepers > 0) {
        pthread_cond_t *wake = s_wake_one(pool);
        pthread_cond_signal(wake);
    }
    pthread_mutex_unlock(&pool->lock);

    //  In the order they would have started.
    for (size_t l = n_taken + 1; l-- > 0;) {
        s_level_t *level = l == n_taken ? &taken_top : &taken[l];
        for (size_t i = 0; i < level->count; i++) {
            cf_task_t *task = level->ring[(level->head + i) % level->cap];
            cf_future_set_cancelled(task->future);
            cf_task_destroy(&task);
        }
        free(level->ring);
    }
    free(taken);
    return wait ? s_join(pool) : CF_OK;
}

static void s_free(cf_pool_t *pool)
{
    for (int i = 0; i < pool->n_workers; i++)
        pthread_cond_destroy(&pool->workers[i].cond);
    //  Nothing can be queued after a join (workers drain the queue before
    //  they exit), but a pool that failed to start may hold tasks: none, as
    //  it was never returned. The levels are empty here.
    free(pool->top.ring);
    for (size_t l = 0; l < pool->n_lower; l++)
        free(pool->lower[l].ring);
    free(pool->lower);
    free(pool->spare);
    free(pool->workers);
    free(pool->sleepers);
    pthread_cond_destroy(&pool->timer_cond);
    pthread_mutex_destroy(&pool->timer_lock);
    pthread_mutex_destroy(&pool->join_lock);
    pthread_mutex_destroy(&pool->lock);
    free(pool);
}

//  Stops, joins and frees a pool, or a half-built one (cf_pool_new's
//  failures come here: only the threads that started are joined).
static void s_destroy(void **backend)
{
    if (!backend || !*backend)
        return;
    cf_pool_t *pool = *backend;
    *backend = NULL;
    if (s_shutdown(pool, true, false) != CF_OK) {
        //  Destroyed from one of its own threads: freeing would pull the
        //  memory from under this very thread. Leak it rather than crash.
        cf_log_error(S_LOG, "executor destroyed from one of its own threads: pool leaked");
        return;
    }
    s_free(pool);
}

static int s_max_workers(void *backend)
{
    return ((cf_pool_t *)backend)->n_workers;
}

const cf_backend_ops_t cf_pool_ops = {
    .name = "threads",
    .submit = s_submit,
    .shutdown = s_shutdown,
    .destroy = s_destroy,
    .max_workers = s_max_workers,
};

void *cf_pool_new(const cf_options_t *opts, int max_workers)
{
    if (max_workers <= 0) {
        cf_error_set(CF_EINVAL, "max_workers must be > 0, got %d", max_workers);
        return NULL;
    }
    cf_pool_t *pool = cf_calloc(1, sizeof *pool);
    if (!pool)
        return NULL;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_mutex_init(&pool->join_lock, NULL);
    pthread_mutex_init(&pool->timer_lock, NULL);
    cf_clock_cond_init(&pool->timer_cond);
    pool->timer_next_ms = -1;
    atomic_init(&pool->cancelling, false);
    atomic_init(&pool->queued, 0);
    atomic_init(&pool->stopping_hint, false);
    pool->initializer = opts ? opts->initializer : NULL;
    pool->initarg = opts ? opts->initarg : NULL;
    const char *prefix = opts && opts->thread_name_prefix ? opts->thread_name_prefix : "cf-worker";
    snprintf(pool->prefix, sizeof pool->prefix, "%s", prefix);
    pool->pid = (int)getpid();
    pool->workers = calloc((size_t)max_workers, sizeof *pool->workers);
    pool->sleepers = calloc((size_t)max_workers, sizeof *pool->sleepers);
    pool->top.ring = malloc(S_RING_INITIAL * sizeof *pool->top.ring);
    pool->top.cap = S_RING_INITIAL;
    if (!pool->workers || !pool->sleepers || !pool->top.ring) {
        cf_error_set(CF_ENOMEM, "out of memory creating a thread pool");
        goto failed;
    }
    //  Only now: s_free destroys the conditions of n_workers workers.
    pool->n_workers = max_workers;
    for (int i = 0; i < max_workers; i++) {
        s_worker_t *w = &pool->workers[i];
        w->pool = pool;
        w->index = i;
        pthread_cond_init(&w->cond, NULL);
    }
    for (int i = 0; i < max_workers; i++) {
        s_worker_t *w = &pool->workers[i];
        int rc = pthread_create(&w->thread, NULL, s_worker_main, w);
        if (rc != 0) {
            cf_error_set(CF_ESYS, "cannot start worker thread %d of %d: %s", i + 1, max_workers,
                         strerror(rc));
            goto failed;
        }
        w->started = true;
    }
    return pool;

failed:;
    cf_err_t err = cf_last_err();
    char message[256];
    snprintf(message, sizeof message, "%s", cf_last_error());
    void *backend = pool;
    s_destroy(&backend);
    cf_error_set(err, "%s", message);
    return NULL;
}

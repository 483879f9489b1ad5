//  Futures and waiters: the only objects shared between threads.
//
//  Design note. A future is resolved once per task on the executor's hot
//  path (hundreds of thousands per second on CF_THREADS), so the resolve
//  path does no allocation beyond the result bytes it is handed, takes one
//  uncontended mutex, and makes a system call only when someone is actually
//  blocked: the condition variable is broadcast only when a thread sleeps on
//  it, and a waiter is signalled only when its owner sleeps.
//
//  The state is an atomic so that done/running/cancelled and the fast path of
//  cf_future_wait read it without the lock. Every final transition happens
//  under the lock and is a compare-and-swap from the state it observed;
//  PENDING -> RUNNING is a lock-free compare-and-swap, so a worker taking a
//  task and a user cancelling it race on one atomic and exactly one wins
//  (Python's set_running_or_notify_cancel). The result and error are
//  assigned before the final state is stored (release), so readers that
//  load it (acquire) read them without the lock; only the lazy decode and a
//  malformed result's error are kept under the lock.
//
//  Waiters are notified under the future's lock (future lock, then the
//  waiter's lock, never the other way round): that way cf_future_waiter_remove,
//  which takes the future's lock, knows that a completion has either not
//  touched the waiter yet or is completely done with it, and a waiter can be
//  freed right after. User callbacks and the completion hook never run under
//  any lock.
//
//  The result is kept as the bytes the executor produced (which may come from
//  the network) and decoded with cf_mp_doc_decode_borrowed on first access
//  (its bins are the result's own bytes, no copy). Malformed bytes become a
//  ProtocolError seen by every reader; they never crash.

#include "cf_future.h"

#include "cf_clock.h"
#include "cf_idmap.h"
#include "cf_log.h"
#include "cf_mp.h"

#include <assert.h>
#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define S_LOG "future"

//  Spinning before sleeping in cf_future_wait (see cf_set_wait_spin).
//  A thread woken on another CPU pays that CPU's wake-up from idle: on the
//  2-vCPU VM of docs/benchmarks.md about 100 us per remote round trip, more
//  than all of cfutures' own work. A waiter that spins keeps its CPU busy
//  and sees the result at once; one that spins and then sleeps anyway pays
//  both (measured: a 100 us spin made a 250 us round trip 330 us). So each
//  thread learns how long its waits take (a moving mean) and spins only
//  when that is within the limit, for about twice the mean; one thread of
//  the process spins at a time, so many waiters cost one CPU at most.
#define S_SPIN_DEFAULT_US 500
#define S_SPIN_MARGIN_US  20
static _Atomic int s_spin_max_us = -1;    //  -1: not set yet
static atomic_flag s_spinner = ATOMIC_FLAG_INIT;
static _Thread_local double s_wait_mean_us = -1;    //  < 0 until a wait was measured

//  Futures of the process not final yet. A waiter spins only while its
//  future is the only one: the one-at-a-time round trip the spin is for. A
//  thread consuming many (a map's window, as_completed over a batch) finds
//  most of them done, and when it does wait the next result is already on
//  its way through the client actor, the broker and the worker, which need
//  the CPU it would spin on: map chunksize 1 did 60% more tasks a second
//  with the spin off (docs/benchmarks.md, "What would close each gap").
//  Counted in shards, one cache line each, a thread adding and removing in
//  its own: a future made in one thread ends in another, so a shard may go
//  negative, and only the sum means something.
#define S_PENDING_SHARDS 16
static struct {
    _Alignas(64) atomic_long n;
} s_pending[S_PENDING_SHARDS];
static atomic_uint s_next_shard;
static _Thread_local int s_shard = -1;

static void s_pending_add(long delta)
{
    if (s_shard < 0)
        s_shard = (int)(atomic_fetch_add_explicit(&s_next_shard, 1, memory_order_relaxed)
                        % S_PENDING_SHARDS);
    atomic_fetch_add_explicit(&s_pending[s_shard].n, delta, memory_order_relaxed);
}

long cf_future_pending_count(void)
{
    long n = 0;
    for (int i = 0; i < S_PENDING_SHARDS; i++)
        n += atomic_load_explicit(&s_pending[i].n, memory_order_relaxed);
    return n;
}

//  A done callback, in a singly linked list (newest first).
typedef struct s_callback {
    cf_done_fn *fn;
    void *arg;
    struct s_callback *next;
} s_callback_t;

//  One registration of a waiter on a future: in the future's list until the
//  future completes, then moved (not copied) to the waiter's ready list.
typedef struct s_node {
    cf_future_waiter_t *waiter;    //  who to tell
    cf_future_t *future;           //  who completed
    struct s_node *next;
    bool pooled;    //  part of the waiter's reserve: not freed alone
} s_node_t;

struct cf_future_waiter {
    pthread_mutex_t lock;
    pthread_cond_t cond;    //  signalled when the ready list grows
    s_node_t *head;         //  completed futures, oldest first
    s_node_t *tail;
    int sleepers;         //  threads blocked in cf_future_waiter_next
    s_node_t *reserve;    //  nodes allocated at once (one malloc)
    size_t reserve_used;
    size_t reserve_size;
};

static void s_node_free(s_node_t *node)
{
    if (!node->pooled)
        free(node);
}

//  A task error with its strings in the same allocation.
typedef struct {
    cf_task_error_t pub;
    char text[];    //  type, message, host: NUL-terminated
} s_error_t;

//  A future's lock and condition variable are one of S_STRIPES pairs shared
//  by address: a client holds a future per outstanding task, and a mutex
//  and a condition variable of its own were 88 of its bytes. No code holds
//  two futures' locks at once (the only nesting is a future's lock, then a
//  waiter's), so sharing cannot deadlock; a broadcast wakes the sleepers of
//  other futures of the stripe too, and they wait again.
#define S_STRIPES 256

static pthread_mutex_t s_locks[S_STRIPES];
static pthread_cond_t s_conds[S_STRIPES];
static pthread_once_t s_stripes_once = PTHREAD_ONCE_INIT;
static bool s_stripes_ok;

static void s_stripes_init(void)
{
    for (size_t i = 0; i < S_STRIPES; i++) {
        if (pthread_mutex_init(&s_locks[i], NULL) != 0 || cf_clock_cond_init(&s_conds[i]) != 0)
            return;
    }
    s_stripes_ok = true;
}

static size_t s_stripe(const cf_future_t *f)
{
    uintptr_t a = (uintptr_t)f;
    return (size_t)((a >> 6) ^ (a >> 14)) % S_STRIPES;
}

struct cf_future {
    atomic_int refs;
    atomic_int state;    //  cf_future_state_t
    //  16 bits, so that the flags below and the stop flag share the word
    //  with it: a pointer more per future is 16 bytes a task in malloc's
    //  classes (bench: client.mem.bookkeeping).
    uint16_t sleepers;    //  threads blocked in cf_future_wait (under lock)
    bool checked;         //  result validated (under lock)
    bool decoded;         //  result decode attempted (under lock)
    bool has_extra;       //  made by cf_future_new_with with extra bytes
    atomic_bool stop;     //  cf_future_stop was called: lent to the task
    bool has_reports;     //  has progress state (s_progress_map, under its lock)
    bool result_held;     //  the result's bytes are in held, not owned (s_result_bytes)
    union {
        uint8_t *result;           //  FINISHED: the msgpack bytes, owned
        cf_future_hold_t *held;    //  result_held: what keeps them
    };
    size_t result_len;
    cf_mp_doc_t *doc;              //  the decoded result, once read
    s_error_t *error;              //  FAILED, or a malformed result
    s_callback_t *callbacks;       //  until completion
    s_node_t *waiters;             //  until completion
    cf_canceller_fn *canceller;    //  the back end's, or NULL
    void *canceller_arg;
    cf_complete_fn *hook;    //  the executor front's progress hook
    void *hook_arg;
    int cancelling;       //  cancellers (and cf_future_with_hook calls) running (under lock)
    bool hook_due;        //  completed while cancelling: the last canceller runs hook
    void *_Atomic tag;    //  the application's
    char function[];      //  NUL-terminated
};

_Static_assert(offsetof(struct cf_future, result) == 16, "the flags share the first 16 bytes");

static bool s_is_final(int state)
{
    return state >= CF_FUTURE_FINISHED;
}

static int s_load_state(cf_future_t *f)
{
    return atomic_load_explicit(&f->state, memory_order_acquire);
}

static s_error_t *s_error_new(const char *type, const char *message, const char *function,
                              const char *host, int pid)
{
    if (!type || !*type)
        type = "Error";
    if (!message)
        message = "";
    if (!host)
        host = "";
    size_t type_len = strlen(type);
    size_t message_len = strlen(message);
    size_t host_len = strlen(host);
    s_error_t *error = malloc(sizeof *error + type_len + message_len + host_len + 3);
    if (!error)
        return NULL;
    char *p = error->text;
    memcpy(p, type, type_len + 1);
    error->pub.type = p;
    p += type_len + 1;
    memcpy(p, message, message_len + 1);
    error->pub.message = p;
    p += message_len + 1;
    memcpy(p, host, host_len + 1);
    error->pub.host = p;
    error->pub.function = function;
    error->pub.pid = pid;
    return error;
}

//  When even the error cannot be allocated, the future still fails: with
//  this static one.
static const s_error_t s_error_nomem = { .pub = {
                                             .type = "MemoryError",
                                             .message = "out of memory recording the task's error",
                                             .function = "",
                                             .host = "",
                                             .pid = 0 } };

// ---------------------------------------------------------------------------
//  Life cycle

//  Where the extra area starts: after the name, 16-byte aligned.
static size_t s_extra_offset(size_t function_len)
{
    return (sizeof(cf_future_t) + function_len + 1 + 15) & ~(size_t)15;
}

cf_future_t *cf_future_new(const char *function, size_t function_len)
{
    return cf_future_new_with(function, function_len, 0, NULL);
}

cf_future_t *cf_future_new_with(const char *function, size_t function_len, size_t extra,
                                void **extra_out)
{
    if (!function)
        function_len = 0;
    size_t size = extra ? s_extra_offset(function_len) + extra
                        : sizeof(cf_future_t) + function_len + 1;
    pthread_once(&s_stripes_once, s_stripes_init);
    if (!s_stripes_ok)
        return NULL;
    cf_future_t *f = malloc(size);
    if (!f)
        return NULL;
    if (extra_out)
        *extra_out = extra ? (char *)f + s_extra_offset(function_len) : NULL;
    atomic_init(&f->refs, 1);
    atomic_init(&f->state, CF_FUTURE_PENDING);
    s_pending_add(1);
    f->sleepers = 0;
    f->checked = false;
    f->decoded = false;
    f->has_extra = extra > 0;
    f->has_reports = false;
    f->result_held = false;
    f->result = NULL;
    f->result_len = 0;
    f->doc = NULL;
    f->error = NULL;
    f->callbacks = NULL;
    f->waiters = NULL;
    f->canceller = NULL;
    f->canceller_arg = NULL;
    f->hook = NULL;
    f->hook_arg = NULL;
    atomic_init(&f->stop, false);
    f->cancelling = 0;
    f->hook_due = false;
    atomic_init(&f->tag, NULL);
    if (function_len)
        memcpy(f->function, function, function_len);
    f->function[function_len] = '\0';
    return f;
}

void *cf_future_extra(cf_future_t *f)
{
    return f && f->has_extra ? (char *)f + s_extra_offset(strlen(f->function)) : NULL;
}

cf_future_t *cf_future_ref(cf_future_t *f)
{
    if (f)
        atomic_fetch_add_explicit(&f->refs, 1, memory_order_relaxed);
    return f;
}

static void s_progress_free(cf_future_t *f);

static void s_free(cf_future_t *f)
{
    if (!s_is_final(atomic_load_explicit(&f->state, memory_order_relaxed)))
        s_pending_add(-1);    //  it never completed
    if (f->has_reports)
        s_progress_free(f);
    //  Callbacks and registrations of a future that never completed: the
    //  executor that should have resolved it is gone (or it was never
    //  submitted), so nobody will ever call them.
    s_callback_t *cb = f->callbacks;
    while (cb) {
        s_callback_t *next = cb->next;
        free(cb);
        cb = next;
    }
    s_node_t *node = f->waiters;
    while (node) {
        s_node_t *next = node->next;
        free(node);
        node = next;
    }
    if (f->error != &s_error_nomem)
        free(f->error);
    if (f->result_held)
        f->held->release(f->held);
    else
        free(f->result);
    cf_mp_doc_destroy(&f->doc);
    free(f);
}

void cf_future_release(cf_future_t **pf)
{
    if (!pf || !*pf)
        return;
    cf_future_t *f = *pf;
    *pf = NULL;
    if (atomic_fetch_sub_explicit(&f->refs, 1, memory_order_acq_rel) == 1)
        s_free(f);
}

void cf_future_set_canceller(cf_future_t *f, cf_canceller_fn *fn, void *executor)
{
    pthread_mutex_lock(&s_locks[s_stripe(f)]);
    f->canceller = fn;
    f->canceller_arg = executor;
    pthread_mutex_unlock(&s_locks[s_stripe(f)]);
}

bool cf_future_set_complete_hook(cf_future_t *f, cf_complete_fn *fn, void *arg)
{
    pthread_mutex_lock(&s_locks[s_stripe(f)]);
    bool pending = !s_is_final(atomic_load_explicit(&f->state, memory_order_relaxed));
    if (pending) {
        f->hook = fn;
        f->hook_arg = arg;
    }
    pthread_mutex_unlock(&s_locks[s_stripe(f)]);
    return pending;
}

cf_future_state_t cf_future_state(cf_future_t *f)
{
    return (cf_future_state_t)s_load_state(f);
}

// ---------------------------------------------------------------------------
//  Transitions

bool cf_future_set_running(cf_future_t *f)
{
    int expected = CF_FUTURE_PENDING;
    return atomic_compare_exchange_strong_explicit(&f->state, &expected, CF_FUTURE_RUNNING,
                                                   memory_order_acq_rel, memory_order_acquire);
}

static void s_run_callback(cf_future_t *f, cf_done_fn *fn, void *arg)
{
    int rc = fn(f, arg);
    if (rc != 0)
        cf_log_warn(S_LOG, "a done callback of %s returned %d", f->function, rc);
}

//  A FINISHED future's result bytes (NULL when none), wherever they are.
static const uint8_t *s_result_bytes(const cf_future_t *f)
{
    return f->result_held ? f->held->value : f->result;
}

//  The one completion path. result (owned, may be NULL) or held, and error
//  are stored only if the transition happens; the caller frees them
//  otherwise. only_from_pending: the user's cancel, which must lose against
//  a worker that already took the task.
static bool s_complete(cf_future_t *f, int final, uint8_t *result, cf_future_hold_t *held,
                       size_t result_len, s_error_t *error, bool only_from_pending)
{
    pthread_mutex_lock(&s_locks[s_stripe(f)]);
    int state = atomic_load_explicit(&f->state, memory_order_relaxed);
    if (s_is_final(state)) {
        pthread_mutex_unlock(&s_locks[s_stripe(f)]);
        return false;
    }
    //  Assigned before the final state is published (release), so a reader
    //  that sees the state (acquire) sees them without the lock. Nobody else
    //  writes them: final transitions are serialised by the lock.
    f->result_held = held != NULL;
    if (held)
        f->held = held;
    else
        f->result = result;
    f->result_len = result_len;
    f->error = error;
    for (;;) {
        if (only_from_pending && state != CF_FUTURE_PENDING) {
            f->result_held = false;
            f->result = NULL;
            f->result_len = 0;
            f->error = NULL;
            pthread_mutex_unlock(&s_locks[s_stripe(f)]);
            return false;
        }
        //  Only set_running can change the state under us (it takes no
        //  lock), and only from PENDING to RUNNING: retry from there.
        if (atomic_compare_exchange_weak_explicit(&f->state, &state, final, memory_order_release,
                                                  memory_order_relaxed))
            break;
    }
    s_pending_add(-1);

    s_node_t *node = f->waiters;
    f->waiters = NULL;
    while (node) {
        s_node_t *next = node->next;
        cf_future_waiter_t *waiter = node->waiter;
        node->next = NULL;
        pthread_mutex_lock(&waiter->lock);
        if (waiter->tail)
            waiter->tail->next = node;
        else
            waiter->head = node;
        waiter->tail = node;
        if (waiter->sleepers > 0)
            pthread_cond_signal(&waiter->cond);
        pthread_mutex_unlock(&waiter->lock);
        node = next;
    }
    if (f->sleepers > 0)
        pthread_cond_broadcast(&s_conds[s_stripe(f)]);
    s_callback_t *callbacks = f->callbacks;
    f->callbacks = NULL;
    cf_complete_fn *hook = f->hook;
    void *hook_arg = f->hook_arg;
    if (f->cancelling > 0 && hook) {
        //  A canceller runs on an object the hook may free (the executor
        //  it belongs to): the last canceller to return runs the hook.
        f->hook_due = true;
        hook = NULL;
    }
    pthread_mutex_unlock(&s_locks[s_stripe(f)]);

    //  Callbacks were pushed newest first; Python runs them in the order
    //  they were added.
    s_callback_t *ordered = NULL;
    while (callbacks) {
        s_callback_t *next = callbacks->next;
        callbacks->next = ordered;
        ordered = callbacks;
        callbacks = next;
    }
    while (ordered) {
        s_callback_t *next = ordered->next;
        s_run_callback(f, ordered->fn, ordered->arg);
        free(ordered);
        ordered = next;
    }
    if (hook)
        hook(hook_arg, f, (cf_future_state_t) final);
    return true;
}

bool cf_future_set_result(cf_future_t *f, const void *value, size_t len)
{
    uint8_t *copy = NULL;
    if (len > 0) {
        copy = malloc(len);
        if (!copy)
            return cf_future_set_error(f, "MemoryError", "out of memory storing the result", "", 0);
        memcpy(copy, value, len);
    }
    if (s_complete(f, CF_FUTURE_FINISHED, copy, NULL, len, NULL, false))
        return true;
    free(copy);
    return false;
}

bool cf_future_take_result(cf_future_t *f, uint8_t *value, size_t len)
{
    if (s_complete(f, CF_FUTURE_FINISHED, value, NULL, len, NULL, false))
        return true;
    free(value);
    return false;
}

bool cf_future_hold_result(cf_future_t *f, cf_future_hold_t *hold, size_t len)
{
    if (s_complete(f, CF_FUTURE_FINISHED, NULL, hold, len, NULL, false))
        return true;
    hold->release(hold);
    return false;
}

bool cf_future_set_error(cf_future_t *f, const char *type, const char *message, const char *host,
                         int pid)
{
    //  Cheap check first: a late result after a timeout or cancel is common
    //  and should not allocate.
    if (s_is_final(s_load_state(f)))
        return false;
    s_error_t *error = s_error_new(type, message, f->function, host, pid);
    if (!error)
        error = (s_error_t *)&s_error_nomem;
    if (s_complete(f, CF_FUTURE_FAILED, NULL, NULL, 0, error, false))
        return true;
    if (error != &s_error_nomem)
        free(error);
    return false;
}

bool cf_future_set_cancelled(cf_future_t *f)
{
    return s_complete(f, CF_FUTURE_CANCELLED, NULL, NULL, 0, NULL, false);
}

// ---------------------------------------------------------------------------
//  Reading

void cf_set_wait_spin(int max_us)
{
    atomic_store(&s_spin_max_us, max_us < 0 ? -1 : max_us);
}

static int s_spin_limit_us(void)
{
    int limit = atomic_load_explicit(&s_spin_max_us, memory_order_relaxed);
    if (limit >= 0)
        return limit;
    limit = sysconf(_SC_NPROCESSORS_ONLN) < 2 ? 0 : S_SPIN_DEFAULT_US;
    const char *env = getenv("CF_WAIT_SPIN_US");
    if (env && *env) {
        char *end;
        long us = strtol(env, &end, 10);
        if (*end == '\0' && us >= 0 && us <= 1000000)
            limit = (int)us;
        else
            cf_log_warn(S_LOG, "CF_WAIT_SPIN_US=%s ignored: microseconds, 0 to 1000000", env);
    }
    int unset = -1;
    atomic_compare_exchange_strong(&s_spin_max_us, &unset, limit);
    return atomic_load_explicit(&s_spin_max_us, memory_order_relaxed);
}

//  Spins while this thread's waits have been short; true when f is done.
static bool s_spin(cf_future_t *f, int timeout_ms, int64_t start_us)
{
    int limit = s_spin_limit_us();
    double mean = s_wait_mean_us;
    if (limit == 0 || mean < 0 || mean > limit || cf_future_pending_count() > 1)
        return false;
    int64_t spin_us = (int64_t)(2 * mean) + S_SPIN_MARGIN_US;
    if (spin_us > limit)
        spin_us = limit;
    if (timeout_ms > 0 && spin_us > (int64_t)timeout_ms * 1000)
        spin_us = (int64_t)timeout_ms * 1000;
    if (atomic_flag_test_and_set_explicit(&s_spinner, memory_order_acquire))
        return false;
    bool done = false;
    do {
        if (s_is_final(s_load_state(f))) {
            done = true;
            break;
        }
        //  Not a pause loop: a thread that should run on this CPU (the
        //  client actor, say) runs now instead of after a time slice.
        sched_yield();
    } while (cf_clock_now_us() - start_us < spin_us);
    atomic_flag_clear_explicit(&s_spinner, memory_order_release);
    return done;
}

static void s_learn_wait(int64_t start_us)
{
    double us = (double)(cf_clock_now_us() - start_us);
    s_wait_mean_us = s_wait_mean_us < 0 ? us : s_wait_mean_us + (us - s_wait_mean_us) / 4;
}

cf_err_t cf_future_wait(cf_future_t *f, int timeout_ms)
{
    if (s_is_final(s_load_state(f)))
        return CF_OK;
    if (timeout_ms == 0)
        return CF_ETIMEDOUT;
    int64_t start_us = cf_clock_now_us();
    if (s_spin(f, timeout_ms, start_us)) {
        s_learn_wait(start_us);
        return CF_OK;
    }
    struct timespec deadline;
    if (timeout_ms > 0)
        deadline = cf_clock_deadline(timeout_ms);
    cf_err_t rc = CF_OK;
    pthread_mutex_lock(&s_locks[s_stripe(f)]);
    while (!s_is_final(atomic_load_explicit(&f->state, memory_order_relaxed))) {
        f->sleepers++;
        int prc = timeout_ms > 0 ? pthread_cond_timedwait(&s_conds[s_stripe(f)],
                                                          &s_locks[s_stripe(f)], &deadline)
                                 : pthread_cond_wait(&s_conds[s_stripe(f)], &s_locks[s_stripe(f)]);
        f->sleepers--;
        if (prc == ETIMEDOUT
            && !s_is_final(atomic_load_explicit(&f->state, memory_order_relaxed))) {
            rc = CF_ETIMEDOUT;
            break;
        }
    }
    pthread_mutex_unlock(&s_locks[s_stripe(f)]);
    if (rc == CF_OK)
        s_learn_wait(start_us);
    return rc;
}

//  Records that a FINISHED future's result is malformed; under its lock.
static cf_err_t s_malformed_locked(cf_future_t *f)
{
    f->checked = true;
    f->decoded = true;
    if (!f->error) {
        cf_log_debug(S_LOG, "result of %s is malformed (%zu bytes)", f->function, f->result_len);
        f->error = s_error_new("ProtocolError",
                               "the task's result is not one well-formed "
                               "msgpack value",
                               f->function, "", 0);
        if (!f->error)
            f->error = (s_error_t *)&s_error_nomem;
    }
    return CF_ETASK;
}

//  Checks a FINISHED future's result once without decoding it (no
//  allocation); under its lock. CF_OK or CF_ETASK (ProtocolError).
static cf_err_t s_validate_locked(cf_future_t *f)
{
    if (f->checked)
        return f->error ? CF_ETASK : CF_OK;
    if (!s_result_bytes(f) || !cf_mp_valid(s_result_bytes(f), f->result_len))
        return s_malformed_locked(f);
    f->checked = true;
    return CF_OK;
}

//  Decodes a FINISHED future's result once; under its lock. CF_OK (f->doc
//  set), CF_ETASK (malformed: f->error says ProtocolError) or CF_ENOMEM
//  (tried again next time).
static cf_err_t s_decode_locked(cf_future_t *f)
{
    if (f->decoded)
        return f->doc ? CF_OK : CF_ETASK;
    if (!s_result_bytes(f))
        return s_malformed_locked(f);
    //  Borrowed: the result's bytes are freed with the future, after the
    //  document, and never change once set.
    cf_err_t rc = cf_mp_doc_decode_borrowed(s_result_bytes(f), f->result_len, &f->doc);
    if (rc == CF_ENOMEM)
        return CF_ENOMEM;
    if (rc != CF_OK)
        return s_malformed_locked(f);
    f->decoded = true;
    f->checked = true;
    return CF_OK;
}

cf_err_t cf_future_result(cf_future_t *f, int timeout_ms, const cf_value_t **value)
{
    if (value)
        *value = NULL;
    cf_err_t rc = cf_future_wait(f, timeout_ms);
    if (rc != CF_OK)
        return rc;
    switch (s_load_state(f)) {
    case CF_FUTURE_CANCELLED:
        return CF_ECANCELLED;
    case CF_FUTURE_FAILED:
        return CF_ETASK;
    default:
        break;
    }
    pthread_mutex_lock(&s_locks[s_stripe(f)]);
    rc = value ? s_decode_locked(f) : s_validate_locked(f);
    if (rc == CF_OK && value)
        *value = cf_mp_doc_root(f->doc);
    pthread_mutex_unlock(&s_locks[s_stripe(f)]);
    return rc;
}

//  Waits, then true when f FINISHED with bytes to read (the fast paths of
//  the scalar getters read them with a bounded cursor, allocating nothing);
//  false with *rc set otherwise (or CF_OK: take the general path).
static bool s_scalar_ready(cf_future_t *f, int timeout_ms, cf_err_t *rc)
{
    *rc = cf_future_wait(f, timeout_ms);
    if (*rc != CF_OK)
        return false;
    return s_load_state(f) == CF_FUTURE_FINISHED && s_result_bytes(f);
}

cf_err_t cf_future_int(cf_future_t *f, int timeout_ms, int64_t *out)
{
    cf_err_t rc;
    if (s_scalar_ready(f, timeout_ms, &rc)) {
        cf_mp_reader_t reader;
        int64_t value;
        cf_mp_reader_init(&reader, s_result_bytes(f), f->result_len);
        if (cf_mp_read_int(&reader, &value) == CF_OK && cf_mp_reader_left(&reader) == 0) {
            *out = value;
            return CF_OK;
        }
    }
    else if (rc != CF_OK)
        return rc;
    //  Anything else (another type, a malformed result, a failure) gets
    //  the general path and its exact error.
    const cf_value_t *value;
    rc = cf_future_result(f, 0, &value);
    return rc == CF_OK ? cf_value_get_int(value, out) : rc;
}

cf_err_t cf_future_double(cf_future_t *f, int timeout_ms, double *out)
{
    const cf_value_t *value;
    cf_err_t rc = cf_future_result(f, timeout_ms, &value);
    return rc == CF_OK ? cf_value_get_double(value, out) : rc;
}

cf_err_t cf_future_bool(cf_future_t *f, int timeout_ms, bool *out)
{
    cf_err_t rc;
    if (s_scalar_ready(f, timeout_ms, &rc)) {
        cf_mp_reader_t reader;
        bool value;
        cf_mp_reader_init(&reader, s_result_bytes(f), f->result_len);
        if (cf_mp_read_bool(&reader, &value) == CF_OK && cf_mp_reader_left(&reader) == 0) {
            *out = value;
            return CF_OK;
        }
    }
    else if (rc != CF_OK)
        return rc;
    const cf_value_t *value;
    rc = cf_future_result(f, 0, &value);
    return rc == CF_OK ? cf_value_get_bool(value, out) : rc;
}

cf_err_t cf_future_str(cf_future_t *f, int timeout_ms, const char **out)
{
    const cf_value_t *value;
    cf_err_t rc = cf_future_result(f, timeout_ms, &value);
    if (rc != CF_OK)
        return rc;
    const char *str = cf_value_str(value, NULL);
    if (!str)
        return CF_ETYPE;
    *out = str;
    return CF_OK;
}

cf_err_t cf_future_raw(cf_future_t *f, int timeout_ms, const void **data, size_t *len)
{
    //  Decoding validates: raw bytes handed out are well-formed too.
    cf_err_t rc = cf_future_result(f, timeout_ms, NULL);
    if (rc != CF_OK)
        return rc;
    *data = s_result_bytes(f);
    *len = f->result_len;
    return CF_OK;
}

const cf_task_error_t *cf_future_error(cf_future_t *f)
{
    int state = s_load_state(f);
    if (state != CF_FUTURE_FAILED && state != CF_FUTURE_FINISHED)
        return NULL;
    const cf_task_error_t *error = NULL;
    pthread_mutex_lock(&s_locks[s_stripe(f)]);
    if (state == CF_FUTURE_FINISHED)
        s_validate_locked(f);
    if (f->error)
        error = &f->error->pub;
    pthread_mutex_unlock(&s_locks[s_stripe(f)]);
    return error;
}

bool cf_future_cancel(cf_future_t *f)
{
    int state = s_load_state(f);
    if (state == CF_FUTURE_CANCELLED)
        return true;
    if (state != CF_FUTURE_PENDING)
        return false;
    pthread_mutex_lock(&s_locks[s_stripe(f)]);
    cf_canceller_fn *canceller = f->canceller;
    void *canceller_arg = f->canceller_arg;
    //  Checked under the lock: a future not final yet has not run its
    //  completion hook, so whatever the hook would release (the executor
    //  the canceller belongs to) stays alive until this canceller returns.
    bool call = canceller && !s_is_final(atomic_load_explicit(&f->state, memory_order_relaxed));
    if (call)
        f->cancelling++;
    pthread_mutex_unlock(&s_locks[s_stripe(f)]);
    if (call) {
        //  The executor decides (a remote one may ask its broker); once it
        //  removed the task, the future is cancelled whatever the state
        //  says meanwhile.
        if (canceller(canceller_arg, f))
            cf_future_set_cancelled(f);
        pthread_mutex_lock(&s_locks[s_stripe(f)]);
        cf_complete_fn *hook = NULL;
        void *hook_arg = NULL;
        if (--f->cancelling == 0 && f->hook_due) {
            hook = f->hook;
            hook_arg = f->hook_arg;
            f->hook_due = false;
        }
        pthread_mutex_unlock(&s_locks[s_stripe(f)]);
        if (hook)
            hook(hook_arg, f, (cf_future_state_t)s_load_state(f));
    }
    else if (!canceller)
        s_complete(f, CF_FUTURE_CANCELLED, NULL, NULL, 0, NULL, true);
    return s_load_state(f) == CF_FUTURE_CANCELLED;
}

// ---------------------------------------------------------------------------
//  Stopping (cf_future_stop, in the executor front): the flag, and a call
//  into the front while its hook keeps it alive.

void cf_future_request_stop(cf_future_t *f)
{
    atomic_store_explicit(&f->stop, true, memory_order_release);
}

const atomic_bool *cf_future_stop_flag(cf_future_t *f)
{
    return &f->stop;
}

bool cf_future_stop_asked(cf_future_t *f)
{
    return atomic_load_explicit(&f->stop, memory_order_acquire);
}

bool cf_future_with_hook(cf_future_t *f, cf_complete_fn *hook, cf_hooked_fn *fn, void *arg)
{
    pthread_mutex_lock(&s_locks[s_stripe(f)]);
    void *hook_arg = f->hook_arg;
    bool call = f->hook == hook && hook
                && !s_is_final(atomic_load_explicit(&f->state, memory_order_relaxed));
    if (call)
        f->cancelling++;
    pthread_mutex_unlock(&s_locks[s_stripe(f)]);
    if (!call)
        return false;
    fn(hook_arg, f, arg);
    pthread_mutex_lock(&s_locks[s_stripe(f)]);
    cf_complete_fn *due = NULL;
    void *due_arg = NULL;
    if (--f->cancelling == 0 && f->hook_due) {
        due = f->hook;
        due_arg = f->hook_arg;
        f->hook_due = false;
    }
    pthread_mutex_unlock(&s_locks[s_stripe(f)]);
    if (due)
        due(due_arg, f, (cf_future_state_t)s_load_state(f));
    return true;
}

bool cf_future_cancelled(cf_future_t *f)
{
    return s_load_state(f) == CF_FUTURE_CANCELLED;
}

bool cf_future_running(cf_future_t *f)
{
    return s_load_state(f) == CF_FUTURE_RUNNING;
}

bool cf_future_done(cf_future_t *f)
{
    return s_is_final(s_load_state(f));
}

const char *cf_future_function(cf_future_t *f)
{
    return f->function;
}

void cf_future_set_tag(cf_future_t *f, void *tag)
{
    atomic_store_explicit(&f->tag, tag, memory_order_release);
}

void *cf_future_tag(cf_future_t *f)
{
    return atomic_load_explicit(&f->tag, memory_order_acquire);
}

cf_err_t cf_future_add_done_callback(cf_future_t *f, cf_done_fn *fn, void *arg)
{
    if (!f || !fn)
        return CF_EINVAL;
    s_callback_t *cb = malloc(sizeof *cb);
    if (!cb)
        return CF_ENOMEM;
    cb->fn = fn;
    cb->arg = arg;
    pthread_mutex_lock(&s_locks[s_stripe(f)]);
    bool done = s_is_final(atomic_load_explicit(&f->state, memory_order_relaxed));
    if (!done) {
        cb->next = f->callbacks;
        f->callbacks = cb;
    }
    pthread_mutex_unlock(&s_locks[s_stripe(f)]);
    if (done) {
        free(cb);
        s_run_callback(f, fn, arg);
    }
    return CF_OK;
}

// ---------------------------------------------------------------------------
//  Waiters

cf_future_waiter_t *cf_future_waiter_new(void)
{
    cf_future_waiter_t *waiter = malloc(sizeof *waiter);
    if (!waiter)
        return NULL;
    if (pthread_mutex_init(&waiter->lock, NULL) != 0) {
        free(waiter);
        return NULL;
    }
    if (cf_clock_cond_init(&waiter->cond) != 0) {
        pthread_mutex_destroy(&waiter->lock);
        free(waiter);
        return NULL;
    }
    waiter->head = waiter->tail = NULL;
    waiter->sleepers = 0;
    waiter->reserve = NULL;
    waiter->reserve_used = waiter->reserve_size = 0;
    return waiter;
}

cf_err_t cf_future_waiter_reserve(cf_future_waiter_t *waiter, size_t count)
{
    if (waiter->reserve || count == 0)
        return CF_OK;
    waiter->reserve = malloc(count * sizeof *waiter->reserve);
    if (!waiter->reserve)
        return CF_ENOMEM;
    waiter->reserve_size = count;
    return CF_OK;
}

void cf_future_waiter_destroy(cf_future_waiter_t **pwaiter)
{
    if (!pwaiter || !*pwaiter)
        return;
    cf_future_waiter_t *waiter = *pwaiter;
    *pwaiter = NULL;
    s_node_t *node = waiter->head;
    while (node) {
        s_node_t *next = node->next;
        s_node_free(node);
        node = next;
    }
    free(waiter->reserve);
    pthread_cond_destroy(&waiter->cond);
    pthread_mutex_destroy(&waiter->lock);
    free(waiter);
}

cf_err_t cf_future_waiter_add(cf_future_waiter_t *waiter, cf_future_t *f, bool *done)
{
    *done = false;
    if (cf_future_done(f)) {
        *done = true;
        return CF_OK;
    }
    //  Only the waiter's owner adds, so the reserve needs no lock.
    s_node_t *node;
    if (waiter->reserve_used < waiter->reserve_size) {
        node = &waiter->reserve[waiter->reserve_used++];
        node->pooled = true;
    }
    else {
        node = malloc(sizeof *node);
        if (!node)
            return CF_ENOMEM;
        node->pooled = false;
    }
    node->waiter = waiter;
    node->future = f;
    pthread_mutex_lock(&s_locks[s_stripe(f)]);
    if (s_is_final(atomic_load_explicit(&f->state, memory_order_relaxed)))
        *done = true;
    else {
        node->next = f->waiters;
        f->waiters = node;
    }
    pthread_mutex_unlock(&s_locks[s_stripe(f)]);
    if (*done)
        s_node_free(node);
    return CF_OK;
}

void cf_future_waiter_remove(cf_future_waiter_t *waiter, cf_future_t *f)
{
    s_node_t *gone = NULL;
    pthread_mutex_lock(&s_locks[s_stripe(f)]);
    s_node_t **link = &f->waiters;
    while (*link) {
        s_node_t *node = *link;
        if (node->waiter == waiter) {
            *link = node->next;
            node->next = gone;
            gone = node;
        }
        else
            link = &node->next;
    }
    pthread_mutex_unlock(&s_locks[s_stripe(f)]);
    while (gone) {
        s_node_t *next = gone->next;
        s_node_free(gone);
        gone = next;
    }
}

cf_future_t *cf_future_waiter_next(cf_future_waiter_t *waiter, int64_t deadline_ms)
{
    cf_future_t *f = NULL;
    pthread_mutex_lock(&waiter->lock);
    while (!waiter->head) {
        int prc;
        waiter->sleepers++;
        if (deadline_ms < 0)
            prc = pthread_cond_wait(&waiter->cond, &waiter->lock);
        else {
            int left_ms = cf_clock_ms_until(deadline_ms);
            if (left_ms == 0) {
                waiter->sleepers--;
                break;
            }
            struct timespec ts = cf_clock_deadline(left_ms);
            prc = pthread_cond_timedwait(&waiter->cond, &waiter->lock, &ts);
        }
        waiter->sleepers--;
        if (prc == ETIMEDOUT && !waiter->head)
            break;
    }
    s_node_t *node = waiter->head;
    if (node) {
        waiter->head = node->next;
        if (!waiter->head)
            waiter->tail = NULL;
        f = node->future;
    }
    pthread_mutex_unlock(&waiter->lock);
    if (node)
        s_node_free(node);
    return f;
}

// ---------------------------------------------------------------------------
//  Progress reports (cfutures.h, cf_task_report_t)
//
//  Design note. Reports are rare next to results (the runners deliver at
//  most one per task per CF_TASK_REPORT_INTERVAL_MS), and most futures
//  never get one, so their state is allocated on first use, found in one
//  map by the future's address (a pointer in every future cost 16 bytes a
//  task in malloc's size classes, over the client's memory bound), and has
//  a lock of its own: the stripe lock of the hot path is never held for
//  them, and the map's lock only to find the state. A
//  report is an immutable snapshot with a reference count, replaced whole
//  by a newer one, so the poll can hand the application a reference
//  (cf_future_report) that never changes under it, and the callback runs
//  without any lock. Its partial value is decoded once and shared by the
//  snapshots that carry it on (reports without a partial keep the last).
//
//  Order: a report older than (or as old as) the latest one is dropped when
//  it arrives, so the latest only grows. Callbacks of one future run one at
//  a time, whoever delivers: the first thread to deliver calls the callback
//  in a loop while newer reports keep coming (delivered_seq says what it
//  passed last); another thread delivering meanwhile only replaces the
//  latest, which the loop then passes on. So no callback ever sees a report
//  older than one it saw, and two threads never run one future's callback
//  at once.

typedef struct {
    atomic_int refs;
    cf_mp_doc_t *doc;
} s_partial_t;

typedef struct {
    cf_task_report_t pub;    //  first: the application sees this part
    atomic_int refs;
    s_partial_t *partial;    //  shared with the snapshots before and after
} s_report_t;

typedef struct s_progress {
    pthread_mutex_t lock;
    pthread_cond_t idle;    //  a delivery loop ended
    s_report_t *latest;     //  NULL until the first report
    cf_task_report_fn *fn;
    void *arg;
    uint32_t delivered_seq;    //  the last report passed to fn
    bool delivering;           //  a thread runs the delivery loop
    pthread_t deliverer;       //  which one
    int waiting;               //  threads waiting for the loop to end
} s_progress_t;

static void s_partial_unref(s_partial_t *partial)
{
    if (partial && atomic_fetch_sub_explicit(&partial->refs, 1, memory_order_acq_rel) == 1) {
        cf_mp_doc_destroy(&partial->doc);
        free(partial);
    }
}

static void s_report_unref(s_report_t *report)
{
    if (report && atomic_fetch_sub_explicit(&report->refs, 1, memory_order_acq_rel) == 1) {
        s_partial_unref(report->partial);
        free(report);
    }
}

//  Every future's progress state, by address: s_progress_map under
//  s_progress_map_lock. A future in it has has_reports set.
static pthread_mutex_t s_progress_map_lock = PTHREAD_MUTEX_INITIALIZER;
static cf_idmap_t *s_progress_map;

static s_progress_t *s_progress_find(cf_future_t *f)
{
    pthread_mutex_lock(&s_progress_map_lock);
    s_progress_t *p = s_progress_map ? cf_idmap_get(s_progress_map, (uintptr_t)f) : NULL;
    pthread_mutex_unlock(&s_progress_map_lock);
    return p;
}

//  The future is freed: no other thread can reach it any more.
static void s_progress_free(cf_future_t *f)
{
    pthread_mutex_lock(&s_progress_map_lock);
    s_progress_t *p = cf_idmap_remove(s_progress_map, (uintptr_t)f);
    pthread_mutex_unlock(&s_progress_map_lock);
    if (!p)
        return;
    s_report_unref(p->latest);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->idle);
    free(p);
}

//  f's progress state, made on first use; NULL when out of memory.
static s_progress_t *s_progress_get(cf_future_t *f)
{
    s_progress_t *p = s_progress_find(f);
    if (p)
        return p;
    p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    if (pthread_mutex_init(&p->lock, NULL) != 0) {
        free(p);
        return NULL;
    }
    if (pthread_cond_init(&p->idle, NULL) != 0) {
        pthread_mutex_destroy(&p->lock);
        free(p);
        return NULL;
    }
    pthread_mutex_lock(&s_progress_map_lock);
    if (!s_progress_map)
        s_progress_map = cf_idmap_new(64);
    s_progress_t *known = s_progress_map ? cf_idmap_get(s_progress_map, (uintptr_t)f) : NULL;
    cf_err_t rc = known || !s_progress_map ? CF_ENOMEM
                                           : cf_idmap_put(s_progress_map, (uintptr_t)f, p);
    if (rc == CF_OK)
        f->has_reports = true;
    pthread_mutex_unlock(&s_progress_map_lock);
    if (rc == CF_OK)
        return p;
    pthread_mutex_destroy(&p->lock);    //  another thread made it first, or no memory
    pthread_cond_destroy(&p->idle);
    free(p);
    return known;
}

//  Passes the latest report to the callback until none newer is left (see
//  the design note); returns at once when another thread does it.
static void s_progress_deliver(cf_future_t *f, s_progress_t *p)
{
    pthread_mutex_lock(&p->lock);
    if (p->delivering) {
        pthread_mutex_unlock(&p->lock);
        return;
    }
    p->delivering = true;
    p->deliverer = pthread_self();
    while (p->fn && p->latest && p->latest->pub.seq > p->delivered_seq
           && !s_is_final(s_load_state(f))) {
        s_report_t *report = p->latest;
        atomic_fetch_add_explicit(&report->refs, 1, memory_order_relaxed);
        cf_task_report_fn *fn = p->fn;
        void *arg = p->arg;
        p->delivered_seq = report->pub.seq;
        pthread_mutex_unlock(&p->lock);
        fn(f, &report->pub, arg);
        s_report_unref(report);
        pthread_mutex_lock(&p->lock);
    }
    p->delivering = false;
    if (p->waiting)
        pthread_cond_broadcast(&p->idle);
    pthread_mutex_unlock(&p->lock);
}

bool cf_future_put_progress(cf_future_t *f, uint32_t seq, uint64_t done, uint64_t total,
                            const void *partial, size_t partial_len)
{
    if (seq == 0 || s_is_final(s_load_state(f)))
        return false;
    s_progress_t *p = s_progress_get(f);
    s_report_t *report = malloc(sizeof *report);
    s_partial_t *part = NULL;
    if (partial) {
        part = malloc(sizeof *part);
        if (part) {
            atomic_init(&part->refs, 1);
            if (cf_mp_doc_decode(partial, partial_len, &part->doc) != CF_OK) {
                //  Malformed (the runner's codec checks only the size) or
                //  out of memory: the report goes on without it.
                cf_log_debug(S_LOG, "a partial value of %s dropped: not one msgpack value",
                             f->function);
                free(part);
                part = NULL;
            }
        }
    }
    if (!p || !report) {
        free(report);
        s_partial_unref(part);
        cf_log_warn_rated(S_LOG, "out of memory: a progress report of %s dropped", f->function);
        return false;
    }
    pthread_mutex_lock(&p->lock);
    s_report_t *old = p->latest;
    if (s_is_final(s_load_state(f)) || (old && seq <= old->pub.seq)) {
        pthread_mutex_unlock(&p->lock);
        free(report);
        s_partial_unref(part);
        return false;
    }
    if (!part && old && old->partial) {
        part = old->partial;
        atomic_fetch_add_explicit(&part->refs, 1, memory_order_relaxed);
        report->pub.partial_new = false;
    }
    else
        report->pub.partial_new = part != NULL;
    report->pub.seq = seq;
    report->pub.done = done;
    report->pub.total = total;
    report->pub.partial = part ? cf_mp_doc_root(part->doc) : NULL;
    report->partial = part;
    atomic_init(&report->refs, 1);
    p->latest = report;
    pthread_mutex_unlock(&p->lock);
    s_report_unref(old);
    s_progress_deliver(f, p);
    return true;
}

cf_err_t cf_future_on_progress(cf_future_t *f, cf_task_report_fn *fn, void *arg)
{
    assert(f);
    s_progress_t *p = s_progress_get(f);
    if (!p)
        return CF_ENOMEM;
    pthread_mutex_lock(&p->lock);
    //  A call of the old callback on another thread ends first (its arg
    //  may be freed once we return); from inside it, it cannot.
    while (p->delivering && !pthread_equal(p->deliverer, pthread_self())) {
        p->waiting++;
        pthread_cond_wait(&p->idle, &p->lock);
        p->waiting--;
    }
    p->fn = fn;
    p->arg = arg;
    p->delivered_seq = 0;    //  the new one gets the latest at once
    pthread_mutex_unlock(&p->lock);
    if (fn)
        s_progress_deliver(f, p);
    return CF_OK;
}

uint32_t cf_future_progress(cf_future_t *f, uint64_t *done, uint64_t *total)
{
    assert(f);
    uint32_t seq = 0;
    uint64_t d = 0, t = 0;
    s_progress_t *p = s_progress_find(f);
    if (p) {
        pthread_mutex_lock(&p->lock);
        if (p->latest) {
            seq = p->latest->pub.seq;
            d = p->latest->pub.done;
            t = p->latest->pub.total;
        }
        pthread_mutex_unlock(&p->lock);
    }
    if (done)
        *done = d;
    if (total)
        *total = t;
    return seq;
}

const cf_task_report_t *cf_future_report(cf_future_t *f)
{
    assert(f);
    s_progress_t *p = s_progress_find(f);
    if (!p)
        return NULL;
    pthread_mutex_lock(&p->lock);
    s_report_t *report = p->latest;
    if (report)
        atomic_fetch_add_explicit(&report->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&p->lock);
    return report ? &report->pub : NULL;
}

void cf_task_report_release(const cf_task_report_t **report)
{
    if (!report || !*report)
        return;
    //  pub is the first member: the snapshot starts where it does.
    s_report_unref((s_report_t *)(uintptr_t)*report);
    *report = NULL;
}

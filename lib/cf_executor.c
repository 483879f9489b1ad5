//  The executor front: the public executor API over the three back ends
//  (cf_pool for CF_THREADS, cf_processes, cf_client for CF_REMOTE).
//
//  The front validates options, resolves task defaults, encodes arguments,
//  builds cf_task_t and hands it to the back end's submit; it owns the
//  shutdown state and the progress counters.
//
//  Design note. A submission costs one allocation for the task (struct,
//  function name and arguments in one block; arguments are encoded first in
//  a per-thread writer that keeps its capacity) and one for the future.
//  Progress is counted through each future's completion hook with atomics,
//  so no lock is taken on the hot path unless a progress callback is set.
//
//  Lifetime: futures outlive the executor. Each future not yet resolved
//  holds a reference to the executor struct through its completion hook, so
//  the hook of a future resolved late (say, cancelled by the application
//  while another thread destroys the executor) never touches freed memory.
//  The back end itself is destroyed by cf_executor_destroy after a waiting
//  shutdown, when every task it took has been resolved.
//
//  Cancel reaches a back end only through the front (s_cancel, the
//  canceller of every future of a back end with a cancel operation): a
//  future keeps its completion hook, and so its reference to the executor,
//  while a canceller runs (cf_future.h), and destroy waits for the cancels
//  already inside the back end and turns later ones away before freeing it.

#define _GNU_SOURCE    //  sched_getaffinity, CPU_COUNT

#include "cf_executor.h"

#include "cf_actor.h"
#include "cf_client.h"
#include "cf_error.h"
#include "cf_keys.h"
#include "cf_log.h"
#include "cf_mp.h"
#include "cf_pool.h"
#include "cf_processes.h"
#include "cf_proto.h"

#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define S_LOG "executor"

struct cf_executor {
    cf_kind_t kind;
    const cf_backend_ops_t *ops;
    void *backend;
    int max_workers;        //  resolved
    int32_t retries;        //  task default, resolved: <0 none
    uint32_t timeout_ms;    //  task default: 0 none
    atomic_bool shut;       //  no more submissions
    //  Cancels reach the back end only through the front (s_cancel), so
    //  destroy can wait for those in progress before freeing it.
    pthread_mutex_t cancel_lock;
    pthread_cond_t cancel_cond;       //  cancels reached 0
    int cancels;                      //  s_cancel calls inside ops->cancel
    bool backend_gone;                //  destroy began: no more ops->cancel
    atomic_int refs;                  //  destroy's, plus one per unresolved future
    pthread_mutex_t shutdown_lock;    //  serialises shutdown calls
    bool waited;                      //  a shutdown with wait completed
    pthread_mutex_t progress_lock;    //  guards progress_fn/arg and progress_calls
    pthread_cond_t progress_idle;     //  progress_calls reached 0
    int progress_calls;               //  hook calls running now
    atomic_bool has_progress_fn;      //  lets the hot path skip the lock
    cf_progress_fn *progress_fn;
    void *progress_arg;
    //  The bound on tasks not done (options.max_outstanding): a submission
    //  takes a slot under slots_lock, its completion gives it back. Unused
    //  (no lock taken) when max_outstanding is 0.
    pthread_mutex_t slots_lock;
    pthread_cond_t slots_cond;    //  a slot came free, or shutdown
    int max_outstanding;
    bool fail_when_full;
    int outstanding;
    //  Counters. submitted is written by submitting threads, the others by
    //  completing ones: keep them off the read-mostly fields' cache line.
    _Alignas(64) _Atomic uint64_t submitted;
    _Alignas(64) _Atomic uint64_t done;
    _Atomic uint64_t failed;
    _Atomic uint64_t cancelled;
};

// ---------------------------------------------------------------------------
//  Small things

const char *cf_kind_name(cf_kind_t kind)
{
    switch (kind) {
    case CF_THREADS:
        return "threads";
    case CF_PROCESSES:
        return "processes";
    case CF_REMOTE:
        return "remote";
    }
    return "unknown";
}

int cf_executor_cores(void)
{
    //  The CPUs this process may run on (taskset, cgroups' cpusets), which
    //  is what a default pool size should follow; the online count if the
    //  affinity mask cannot be read.
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int count = CPU_COUNT(&set);
        if (count > 0)
            return count;
    }
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    return online > 0 ? (int)online : 1;
}

cf_kind_t cf_executor_kind(cf_executor_t *ex)
{
    return ex->kind;
}

int cf_executor_max_workers(cf_executor_t *ex)
{
    if (ex->ops->max_workers)
        return ex->ops->max_workers(ex->backend);
    return ex->max_workers;
}

// ---------------------------------------------------------------------------
//  Life cycle

static void s_unref(cf_executor_t *ex)
{
    if (atomic_fetch_sub_explicit(&ex->refs, 1, memory_order_acq_rel) != 1)
        return;
    pthread_mutex_destroy(&ex->shutdown_lock);
    pthread_cond_destroy(&ex->slots_cond);
    pthread_mutex_destroy(&ex->slots_lock);
    pthread_cond_destroy(&ex->progress_idle);
    pthread_mutex_destroy(&ex->progress_lock);
    pthread_cond_destroy(&ex->cancel_cond);
    pthread_mutex_destroy(&ex->cancel_lock);
    free(ex);
}

static cf_err_t s_validate(cf_kind_t kind, const cf_options_t *opts)
{
    if (kind != CF_THREADS && kind != CF_PROCESSES && kind != CF_REMOTE)
        return cf_error_set(CF_EINVAL,
                            "unknown executor kind %d (CF_THREADS, CF_PROCESSES "
                            "or CF_REMOTE)",
                            (int)kind);
    if (opts->max_workers < 0)
        return cf_error_set(CF_EINVAL,
                            "max_workers must be > 0 (or 0 for the default), "
                            "got %d",
                            opts->max_workers);
    if (opts->max_tasks_per_worker < 0)
        return cf_error_set(CF_EINVAL,
                            "max_tasks_per_worker must be > 0 (or 0 for never), "
                            "got %d",
                            opts->max_tasks_per_worker);
    if (opts->timeout_ms < 0)
        return cf_error_set(CF_EINVAL, "timeout_ms must be > 0 (or 0 for none), got %d",
                            opts->timeout_ms);
    if (opts->max_outstanding < 0)
        return cf_error_set(CF_EINVAL, "max_outstanding must be > 0 (or 0 for no bound), got %d",
                            opts->max_outstanding);
    if (opts->heartbeat_ivl_ms < 0)
        return cf_error_set(CF_EINVAL,
                            "heartbeat_ivl_ms must be > 0 (or 0 for the "
                            "default), got %d",
                            opts->heartbeat_ivl_ms);
    if (kind == CF_REMOTE && (!opts->curve_broker_key != !opts->curve_key))
        return cf_error_set(CF_EINVAL, "CURVE needs both curve_broker_key (the broker's public "
                                       "key file) and curve_key (this client's secret key file)");
    if (kind != CF_REMOTE && (opts->curve_broker_key || opts->curve_key))
        return cf_error_set(CF_EINVAL, "curve_broker_key and curve_key are for CF_REMOTE");
    if (kind == CF_REMOTE && (!opts->endpoint || !*opts->endpoint))
        return cf_error_set(CF_EINVAL, "CF_REMOTE needs options.endpoint, the broker's "
                                       "client endpoint (\"tcp://host:5555\")");
    return CF_OK;
}

//  Reads the broker key files of curve_broker_key (one path, or a
//  comma-separated list of one per endpoint; spaces around the commas
//  allowed) into keys, their Z85 texts comma-separated, as cf_client_new
//  takes them. Errors name the file, never a key.
static cf_err_t s_read_broker_keys(const char *paths, char *keys, size_t size)
{
    size_t len = 0;
    keys[0] = '\0';
    const char *p = paths;
    for (;;) {
        const char *comma = strchr(p, ',');
        const char *end = comma ? comma : p + strlen(p);
        while (p < end && *p == ' ')
            p++;
        while (end > p && end[-1] == ' ')
            end--;
        char path[4096];
        if (end == p || (size_t)(end - p) >= sizeof path)
            return cf_error_set(CF_EINVAL, "curve_broker_key: an empty or over-long path in \"%s\"",
                                paths);
        memcpy(path, p, (size_t)(end - p));
        path[end - p] = '\0';
        char z85[CF_KEY_Z85_SIZE];
        cf_err_t rc = cf_keys_read_public(path, z85);
        if (rc != CF_OK)
            return rc;
        if (len + CF_KEY_Z85_SIZE + 1 > size)
            return cf_error_set(CF_EINVAL, "curve_broker_key: too many key files in \"%s\"", paths);
        len += (size_t)snprintf(keys + len, size - len, "%s%s", len ? "," : "", z85);
        if (!comma)
            return CF_OK;
        p = comma + 1;
    }
}

//  A client for CF_REMOTE. Key files are read here (errors name the file,
//  never a key) and the keys wiped once the client applied them.
static void *s_client_new(const cf_options_t *opts)
{
    cf_client_config_t config = {
        .endpoint = opts->endpoint,
        .heartbeat_ivl_ms = opts->heartbeat_ivl_ms ? opts->heartbeat_ivl_ms : CF_HEARTBEAT_IVL_MS,
        .heartbeat_liveness = CF_HEARTBEAT_LIVENESS,
        //  0 in the options is the default; < 0 asks not to wait.
        .connect_timeout_ms = opts->connect_timeout_ms == 0  ? CF_CONNECT_TIMEOUT_MS
                              : opts->connect_timeout_ms < 0 ? 0
                                                             : opts->connect_timeout_ms,
    };
    if (!opts->curve_broker_key)
        return cf_client_new(&config);
    //  Public keys, one per broker at most (cf_client.c's limit, 16).
    char broker_keys[16 * (CF_KEY_Z85_SIZE + 1)];
    cf_keypair_t pair;
    void *client = NULL;
    if (s_read_broker_keys(opts->curve_broker_key, broker_keys, sizeof broker_keys) == CF_OK
        && cf_keys_read_pair(opts->curve_key, &pair) == CF_OK) {
        config.curve_server_key = broker_keys;
        config.curve_public_key = pair.public_z85;
        config.curve_secret_key = pair.secret_z85;
        client = cf_client_new(&config);
    }
    cf_keys_wipe(&pair);
    return client;
}

cf_executor_t *cf_executor_new(cf_kind_t kind, const cf_options_t *opts)
{
    static const cf_options_t defaults = { 0 };
    if (!opts)
        opts = &defaults;
    if (s_validate(kind, opts) != CF_OK)
        return NULL;

    int cores = cf_executor_cores();
    int max_workers = opts->max_workers;
    if (max_workers == 0) {
        //  Python's defaults: threads min(32, cpus + 4) (I/O-bound work
        //  waits more than it computes), processes one per CPU.
        if (kind == CF_THREADS)
            max_workers = cores + 4 < 32 ? cores + 4 : 32;
        else if (kind == CF_PROCESSES)
            max_workers = cores;
    }
    if (kind == CF_REMOTE)
        max_workers = 0;

    cf_executor_t *ex = calloc(1, sizeof *ex);
    if (!ex) {
        cf_error_set(CF_ENOMEM, "out of memory creating an executor");
        return NULL;
    }
    //  Default attributes: glibc's initialisers cannot fail.
    pthread_mutex_init(&ex->shutdown_lock, NULL);
    pthread_mutex_init(&ex->progress_lock, NULL);
    pthread_mutex_init(&ex->cancel_lock, NULL);
    pthread_cond_init(&ex->cancel_cond, NULL);
    pthread_cond_init(&ex->progress_idle, NULL);
    pthread_mutex_init(&ex->slots_lock, NULL);
    pthread_cond_init(&ex->slots_cond, NULL);
    ex->max_outstanding = opts->max_outstanding;
    ex->fail_when_full = opts->fail_when_full;
    ex->kind = kind;
    ex->max_workers = max_workers;
    ex->retries = opts->retries == 0 ? CF_DEFAULT_RETRIES : opts->retries < 0 ? -1 : opts->retries;
    ex->timeout_ms = (uint32_t)opts->timeout_ms;
    atomic_init(&ex->shut, false);
    atomic_init(&ex->refs, 1);
    atomic_init(&ex->has_progress_fn, false);
    atomic_init(&ex->submitted, 0);
    atomic_init(&ex->done, 0);
    atomic_init(&ex->failed, 0);
    atomic_init(&ex->cancelled, 0);

    switch (kind) {
    case CF_THREADS:
        ex->ops = &cf_pool_ops;
        ex->backend = cf_pool_new(opts, max_workers);
        break;
    case CF_PROCESSES:
        ex->ops = &cf_processes_ops;
        ex->backend = cf_processes_new(opts, max_workers);
        break;
    case CF_REMOTE:
        ex->ops = &cf_client_ops;
        ex->backend = s_client_new(opts);
        break;
    }
    if (!ex->backend)
        goto failed;
    return ex;

failed:
    //  The back end said why (cf_last_error); keep its message.
    if (cf_last_err() == CF_OK)
        cf_error_set(CF_ESYS, "cannot start the %s executor", cf_kind_name(kind));
    s_unref(ex);
    return NULL;
}

bool cf_executor_client_counters(cf_executor_t *ex, cf_client_counters_t *counters)
{
    if (!ex || ex->kind != CF_REMOTE || !ex->backend)
        return false;
    cf_client_counters(ex->backend, counters);
    return true;
}

cf_executor_t *cf_executor_connect(const char *endpoint, const cf_options_t *opts)
{
    cf_options_t copy = { 0 };
    if (opts)
        copy = *opts;
    copy.endpoint = endpoint;
    return cf_executor_new(CF_REMOTE, &copy);
}

cf_err_t cf_executor_shutdown(cf_executor_t *ex, bool wait, bool cancel_futures)
{
    if (!ex)
        return CF_EINVAL;
    atomic_store(&ex->shut, true);
    if (ex->max_outstanding) {
        pthread_mutex_lock(&ex->slots_lock);
        pthread_cond_broadcast(&ex->slots_cond);
        pthread_mutex_unlock(&ex->slots_lock);
    }
    pthread_mutex_lock(&ex->shutdown_lock);
    cf_err_t rc = CF_OK;
    //  After a completed waiting shutdown nothing is left to stop or cancel;
    //  back ends need not be idempotent themselves.
    if (!ex->waited) {
        rc = ex->ops->shutdown(ex->backend, wait, cancel_futures);
        if (wait && rc == CF_OK)
            ex->waited = true;
    }
    pthread_mutex_unlock(&ex->shutdown_lock);
    return rc;
}

void cf_executor_destroy(cf_executor_t **pex)
{
    if (!pex || !*pex)
        return;
    cf_executor_t *ex = *pex;
    *pex = NULL;
    if (ex->ops->destroying)
        ex->ops->destroying(ex->backend);
    cf_err_t rc = cf_executor_shutdown(ex, true, false);
    if (rc != CF_OK)
        cf_log_warn(S_LOG, "shutdown of the %s executor failed: %s", cf_kind_name(ex->kind),
                    cf_strerror(rc));
    //  A cancel that read this executor from its future just before the
    //  future was resolved may still be on its way into the back end: wait
    //  for it (a back end's cancel is bounded), and let later ones answer
    //  from the future alone.
    pthread_mutex_lock(&ex->cancel_lock);
    ex->backend_gone = true;
    while (ex->cancels > 0)
        pthread_cond_wait(&ex->cancel_cond, &ex->cancel_lock);
    pthread_mutex_unlock(&ex->cancel_lock);
    ex->ops->destroy(&ex->backend);
    s_unref(ex);
}

//  The canceller of every future of a back end that has a cancel operation.
//  The future keeps ex alive while this runs (its completion hook, which
//  drops the future's reference to ex, waits for running cancellers);
//  cancel_lock keeps the back end alive.
static bool s_cancel(void *arg, cf_future_t *f)
{
    cf_executor_t *ex = arg;
    pthread_mutex_lock(&ex->cancel_lock);
    if (ex->backend_gone) {
        pthread_mutex_unlock(&ex->cancel_lock);
        return false;
    }
    ex->cancels++;
    pthread_mutex_unlock(&ex->cancel_lock);
    bool cancelled = ex->ops->cancel(ex->backend, f);
    pthread_mutex_lock(&ex->cancel_lock);
    if (--ex->cancels == 0 && ex->backend_gone)
        pthread_cond_broadcast(&ex->cancel_cond);
    pthread_mutex_unlock(&ex->cancel_lock);
    return cancelled;
}

//  cf_future_stop's call into the back end, while the future's completion
//  hook keeps ex alive (cf_future_with_hook) and cancel_lock the back end,
//  as for s_cancel. Without a stop operation the flag, which the back end
//  lends its tasks, does it, and a queued task is cancelled.
static void s_stop(void *arg, cf_future_t *f, void *grace)
{
    cf_executor_t *ex = arg;
    if (!ex->ops->stop) {
        if (cf_future_state(f) == CF_FUTURE_PENDING)
            (void)cf_future_cancel(f);
        return;
    }
    pthread_mutex_lock(&ex->cancel_lock);
    if (ex->backend_gone) {
        pthread_mutex_unlock(&ex->cancel_lock);
        return;
    }
    ex->cancels++;
    pthread_mutex_unlock(&ex->cancel_lock);
    ex->ops->stop(ex->backend, f, *(const uint32_t *)grace);
    pthread_mutex_lock(&ex->cancel_lock);
    if (--ex->cancels == 0 && ex->backend_gone)
        pthread_cond_broadcast(&ex->cancel_cond);
    pthread_mutex_unlock(&ex->cancel_lock);
}

static void s_on_complete(void *arg, cf_future_t *f, cf_future_state_t state);

cf_err_t cf_future_stop(cf_future_t *f, int grace_ms)
{
    if (!f || grace_ms < 0)
        return CF_EINVAL;
    if (cf_future_done(f))
        return CF_ENOTFOUND;
    //  First: a task that begins from now on sees it.
    cf_future_request_stop(f);
    uint32_t grace = (uint32_t)grace_ms;
    //  Not an executor's (or done meanwhile): a queued one is cancelled.
    if (!cf_future_with_hook(f, s_on_complete, s_stop, &grace)
        && cf_future_state(f) == CF_FUTURE_PENDING)
        (void)cf_future_cancel(f);
    return CF_OK;
}

// ---------------------------------------------------------------------------
//  Progress

static cf_progress_t s_snapshot(cf_executor_t *ex)
{
    //  failed and cancelled are counted after done, and read before it, so
    //  a snapshot never shows more failures than completions; done is read
    //  before submitted for the same reason.
    cf_progress_t p;
    p.failed = atomic_load(&ex->failed);
    p.cancelled = atomic_load(&ex->cancelled);
    p.done = atomic_load(&ex->done);
    p.submitted = atomic_load(&ex->submitted);
    return p;
}

cf_progress_t cf_executor_progress(cf_executor_t *ex)
{
    return s_snapshot(ex);
}

//  The hook this thread is running, if any: replacing the hook from inside
//  it must not wait for itself.
static _Thread_local cf_executor_t *s_in_hook = NULL;

void cf_executor_on_progress(cf_executor_t *ex, cf_progress_fn *fn, void *arg)
{
    pthread_mutex_lock(&ex->progress_lock);
    ex->progress_fn = fn;
    ex->progress_arg = arg;
    atomic_store(&ex->has_progress_fn, fn != NULL);
    //  Once this returns the old hook is never called again, so its
    //  argument (a progress bar, say) may be freed at once.
    int own = s_in_hook == ex ? 1 : 0;
    while (ex->progress_calls > own)
        pthread_cond_wait(&ex->progress_idle, &ex->progress_lock);
    pthread_mutex_unlock(&ex->progress_lock);
}

//  Every future's completion hook: runs once, after the future's callbacks.
//  Takes a slot under options.max_outstanding (see there): CF_OK, CF_EBUSY
//  or CF_ESHUTDOWN, with the error set.
static cf_err_t s_slot_take(cf_executor_t *ex, const char *fn)
{
    bool may_wait = !ex->fail_when_full && !cf_actor_current() && !s_in_hook;
    cf_err_t rc = CF_OK;
    pthread_mutex_lock(&ex->slots_lock);
    while (ex->outstanding >= ex->max_outstanding && rc == CF_OK) {
        if (atomic_load(&ex->shut))
            rc = cf_error_set(CF_ESHUTDOWN, "cannot submit %s: the executor is shut down", fn);
        else if (!may_wait)
            rc = cf_error_set(CF_EBUSY, "cannot submit %s: %d tasks outstanding (max_outstanding)",
                              fn, ex->outstanding);
        else
            pthread_cond_wait(&ex->slots_cond, &ex->slots_lock);
    }
    if (rc == CF_OK)
        ex->outstanding++;
    pthread_mutex_unlock(&ex->slots_lock);
    return rc;
}

static void s_slot_give(cf_executor_t *ex)
{
    pthread_mutex_lock(&ex->slots_lock);
    ex->outstanding--;
    pthread_cond_signal(&ex->slots_cond);
    pthread_mutex_unlock(&ex->slots_lock);
}

static void s_on_complete(void *arg, cf_future_t *f, cf_future_state_t state)
{
    cf_executor_t *ex = arg;
    (void)f;
    if (ex->max_outstanding)
        s_slot_give(ex);
    atomic_fetch_add_explicit(&ex->done, 1, memory_order_relaxed);
    if (state == CF_FUTURE_FAILED)
        atomic_fetch_add_explicit(&ex->failed, 1, memory_order_relaxed);
    else if (state == CF_FUTURE_CANCELLED)
        atomic_fetch_add_explicit(&ex->cancelled, 1, memory_order_relaxed);
    if (atomic_load_explicit(&ex->has_progress_fn, memory_order_acquire)) {
        pthread_mutex_lock(&ex->progress_lock);
        cf_progress_fn *fn = ex->progress_fn;
        void *fn_arg = ex->progress_arg;
        if (fn)
            ex->progress_calls++;
        pthread_mutex_unlock(&ex->progress_lock);
        if (fn) {
            cf_progress_t p = s_snapshot(ex);
            cf_executor_t *outer = s_in_hook;
            s_in_hook = ex;
            fn(&p, fn_arg);
            s_in_hook = outer;
            pthread_mutex_lock(&ex->progress_lock);
            if (--ex->progress_calls == 0)
                pthread_cond_broadcast(&ex->progress_idle);
            pthread_mutex_unlock(&ex->progress_lock);
        }
    }
    s_unref(ex);
}

// ---------------------------------------------------------------------------
//  Submitting

//  Beyond this a thread's argument writer is freed after use instead of
//  kept.
#define S_WRITER_KEEP_BYTES (64 * 1024)

static cf_err_t s_check_function(const char *fn, size_t *len)
{
    if (!fn)
        return cf_error_set(CF_EINVAL, "the function name is NULL");
    *len = strlen(fn);
    if (*len == 0 || *len > CF_PROTO_MAX_NAME)
        return cf_error_set(CF_EINVAL, "function names are 1..%d bytes, got %zu", CF_PROTO_MAX_NAME,
                            *len);
    return CF_OK;
}

//  taken: args is a malloc'd block (at *taken) the task adopts; freed here
//  when refused, *taken NULL in any case. NULL: args are copied.
static cf_future_t *s_submit(cf_executor_t *ex, const cf_task_opts_t *opts, const char *fn,
                             size_t fn_len, const void *args, size_t args_len, uint8_t **taken)
{
    cf_err_t refused = CF_OK;
    if (args_len > CF_PROTO_MAX_FRAME)
        refused = cf_error_set(CF_ETOOBIG, "arguments of %s are %zu bytes, over the limit of %u",
                               fn, args_len, CF_PROTO_MAX_FRAME);
    else if (opts && opts->no_worker_timeout_ms < 0)
        refused = cf_error_set(CF_EINVAL,
                               "no_worker_timeout_ms must be >= 0 (0: the broker's default), "
                               "got %d",
                               opts->no_worker_timeout_ms);
    else if (ex->max_outstanding)
        refused = s_slot_take(ex, fn);
    if (refused != CF_OK) {
        if (taken) {
            free(*taken);
            *taken = NULL;
        }
        return NULL;
    }
    cf_task_t *task = taken ? cf_task_new_taking(fn, fn_len, taken, args_len, ex->ops->task_size)
                            : cf_task_new(fn, fn_len, args, args_len, ex->ops->task_size);
    if (!task) {
        if (ex->max_outstanding)
            s_slot_give(ex);
        cf_error_set(CF_ENOMEM, "out of memory submitting %s", fn);
        return NULL;
    }
    task->retries = ex->retries;
    task->timeout_ms = ex->timeout_ms;
    if (opts) {
        if (opts->retries != 0)
            task->retries = opts->retries < 0 ? -1 : opts->retries;
        if (opts->timeout_ms != 0)
            task->timeout_ms = opts->timeout_ms < 0 ? 0 : (uint32_t)opts->timeout_ms;
        if (opts->retry_on_error)
            task->flags |= CF_TASK_RETRY_ON_ERROR;
        task->priority = opts->priority;
        task->wait_ms = (uint32_t)opts->no_worker_timeout_ms;
    }
    cf_future_t *f = cf_future_ref(task->future);
    atomic_fetch_add_explicit(&ex->refs, 1, memory_order_relaxed);
    cf_future_set_complete_hook(f, s_on_complete, ex);
    atomic_fetch_add_explicit(&ex->submitted, 1, memory_order_relaxed);

    cf_err_t rc = ex->ops->submit(ex->backend, &task);
    if (rc != CF_OK) {
        //  The back end's own words say more ("... this key was revoked").
        char why[256];
        snprintf(why, sizeof why, "%s", cf_last_err() == rc ? cf_last_error() : cf_strerror(rc));
        cf_task_destroy(&task);    //  the back end took it; NULL by now
        //  The back end refused it: unless it resolved the future anyway
        //  (then the hook ran and counted it), the submission never happened.
        if (cf_future_set_complete_hook(f, NULL, NULL)) {
            atomic_fetch_sub_explicit(&ex->submitted, 1, memory_order_relaxed);
            if (ex->max_outstanding)
                s_slot_give(ex);
            s_unref(ex);
        }
        cf_future_release(&f);
        if (rc == CF_ESHUTDOWN)
            cf_error_set(rc, "cannot submit %s: the executor is shut down", fn);
        else
            cf_error_set(rc, "cannot submit %s: %s", fn, why);
        return NULL;
    }
    //  Only a future that got in, and before anyone else can see it.
    if (ex->ops->cancel)
        cf_future_set_canceller(f, s_cancel, ex);
    return f;
}

//  What every submission checks before encoding anything: an executor
//  that takes tasks and a valid function name (*len its length).
static cf_err_t s_check_submit(cf_executor_t *ex, const char *fn, size_t *len)
{
    if (!ex)
        return cf_error_set(CF_EINVAL, "the executor is NULL");
    cf_err_t rc = s_check_function(fn, len);
    if (rc != CF_OK)
        return rc;
    if (atomic_load_explicit(&ex->shut, memory_order_relaxed))
        return cf_error_set(CF_ESHUTDOWN, "cannot submit %s: the executor is shut down", fn);
    return CF_OK;
}

cf_future_t *cf_submitv(cf_executor_t *ex, const cf_task_opts_t *opts, const char *fn,
                        const char *fmt, va_list ap)
{
    size_t fn_len = 0;    //  set by s_check_submit; GCC 12 -O3 cannot tell
    if (s_check_submit(ex, fn, &fn_len) != CF_OK)
        return NULL;
    //  The thread's writer keeps its capacity, so a submission allocates
    //  only the task block; a nested use gets a writer of its own.
    cf_mp_writer_t local;
    cf_mp_writer_t *w = cf_mp_thread_writer(S_WRITER_KEEP_BYTES);
    if (!w) {
        cf_mp_writer_init(&local);
        w = &local;
    }
    va_list aq;
    va_copy(aq, ap);
    cf_err_t rc = cf_mp_write_format(w, true, fmt ? fmt : "", &aq);
    va_end(aq);
    cf_future_t *f = NULL;
    if (rc == CF_OK && w->buf.size >= CF_MP_TAKE_MIN) {
        //  The task adopts the writer's buffer rather than a copy of it.
        size_t len = 0;
        uint8_t *args = cf_mp_writer_take_fit(w, &len);
        if (args)
            f = s_submit(ex, opts, fn, fn_len, args, len, &args);
        else
            cf_error_set(CF_ENOMEM, "out of memory encoding the arguments of %s", fn);
    }
    else if (rc == CF_OK)
        f = s_submit(ex, opts, fn, fn_len, w->buf.data, w->buf.size, NULL);
    else if (rc == CF_ENOMEM)
        cf_error_set(CF_ENOMEM, "out of memory encoding the arguments of %s", fn);
    //  else cf_mp_write_format said what is wrong with the format
    if (w == &local)
        cf_mp_writer_fini(&local);
    else
        cf_mp_thread_writer_release(w);
    return f;
}

cf_future_t *cf_submit(cf_executor_t *ex, const char *fn, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cf_future_t *f = cf_submitv(ex, NULL, fn, fmt, ap);
    va_end(ap);
    return f;
}

cf_future_t *cf_submit_with(cf_executor_t *ex, const cf_task_opts_t *opts, const char *fn,
                            const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cf_future_t *f = cf_submitv(ex, opts, fn, fmt, ap);
    va_end(ap);
    return f;
}

cf_future_t *cf_executor_submit_encoded(cf_executor_t *ex, const cf_task_opts_t *opts,
                                        const char *fn, const void *args, size_t len)
{
    size_t fn_len = 0;    //  set by s_check_submit; GCC 12 -O3 cannot tell
    if (s_check_submit(ex, fn, &fn_len) != CF_OK)
        return NULL;
    return s_submit(ex, opts, fn, fn_len, args, len, NULL);
}

cf_future_t *cf_executor_submit_taking(cf_executor_t *ex, const cf_task_opts_t *opts,
                                       const char *fn, uint8_t **args, size_t len)
{
    size_t fn_len = 0;    //  set by s_check_submit; GCC 12 -O3 cannot tell
    if (s_check_submit(ex, fn, &fn_len) != CF_OK) {
        free(*args);
        *args = NULL;
        return NULL;
    }
    return s_submit(ex, opts, fn, fn_len, *args, len, args);
}

cf_future_t *cf_submit_raw(cf_executor_t *ex, const cf_task_opts_t *opts, const char *fn,
                           const void *args, size_t len)
{
    if (len > CF_PROTO_MAX_FRAME) {
        cf_error_set(CF_ETOOBIG, "arguments of %s are %zu bytes, over the limit of %u",
                     fn ? fn : "(null)", len, CF_PROTO_MAX_FRAME);
        return NULL;
    }
    if (!args || !cf_mp_valid_array(args, len)) {
        cf_error_set(CF_EINVAL, "the arguments of %s must be one msgpack array",
                     fn ? fn : "(null)");
        return NULL;
    }
    return cf_executor_submit_encoded(ex, opts, fn, args, len);
}

//  The worker (see cf_worker.h; cf_worker_int.h has the design and the map
//  of the modules): the handle other threads hold: new (execution threads,
//  then the actor), wait, ended, abandon, destroy.

#include "cf_worker.h"
#include "cf_worker_int.h"

#include "cf_clock.h"
#include "cf_error.h"
#include "cf_log.h"
#include "cf_random.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define S_LOG "worker"

//  A first progress report waits (cf_worker_progress.h): the actor sends it.
static void s_wake_actor(void *arg)
{
    cf_worker_t *w = arg;
    cf_actor_wake(w->actor);
}

//  "w-<host>-<pid>-<random>": readable in broker logs, unique across
//  restarts of the same pid.
static void s_make_identity(char *out, size_t size)
{
    snprintf(out, size, "w-%.64s-%d-%08" PRIx32, cf_registry_hostname(), (int)getpid(),
             (uint32_t)cf_random_u64());
}

//  Stops and joins the executors (running tasks finish first).
static void s_join_executors(cf_worker_t *w)
{
    pthread_mutex_lock(&w->lock);
    w->stopping = true;
    cf_worker_exec_clear(&w->queue);
    pthread_cond_broadcast(&w->work);
    pthread_cond_signal(&w->watch_cond);
    pthread_mutex_unlock(&w->lock);
    for (int i = 0; i < w->executors_started; i++)
        pthread_join(w->executors[i], NULL);
    w->executors_started = 0;
    if (w->watch_started)
        pthread_join(w->watch, NULL);
    w->watch_started = false;
}

//  Frees a worker whose actor ended, or a half-built one (cf_worker_new's
//  failures come here): executors still running are stopped and joined.
static void s_free(cf_worker_t *w)
{
    s_join_executors(w);
    if (w->own_ctx && w->ctx) {
        while (zmq_ctx_term(w->ctx) != 0 && errno == EINTR)
            ;
    }
    cf_worker_exec_clear(&w->queue);
    cf_worker_exec_clear(&w->outbox);
    for (unsigned i = 0; i < CF_WORKER_MAX_BROKERS; i++) {
        cf_worker_progress_destroy(&w->progress[i]);
        free(w->endpoints[i]);
    }
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->work);
    pthread_cond_destroy(&w->state);
    pthread_cond_destroy(&w->watch_cond);
    free(w->executors);
    free(w);
}

//  The brokers to serve, each once (a repeated one is dropped with a
//  warning); CF_EINVAL when there are none or too many.
static cf_err_t s_endpoints(cf_worker_t *w, const cf_worker_config_t *config)
{
    const char *one[1] = { config->endpoint };
    const char *const *list = config->endpoint_count > 0 ? config->endpoints : one;
    int count = config->endpoint_count > 0 ? config->endpoint_count : 1;
    for (int i = 0; i < count; i++) {
        if (!list || !list[i] || !*list[i])
            return cf_error_set(CF_EINVAL, "worker: a broker endpoint is required");
        bool again = false;
        for (unsigned k = 0; k < w->endpoint_count && !again; k++)
            again = strcmp(w->endpoints[k], list[i]) == 0;
        if (again) {
            cf_log_warn(S_LOG, "broker %s given twice: served once", list[i]);
            continue;
        }
        if (w->endpoint_count == CF_WORKER_MAX_BROKERS)
            return cf_error_set(CF_EINVAL, "worker: more than %d brokers", CF_WORKER_MAX_BROKERS);
        w->endpoints[w->endpoint_count] = strdup(list[i]);
        if (!w->endpoints[w->endpoint_count])
            return cf_error_set(CF_ENOMEM, "out of memory");
        w->endpoint_count++;
    }
    w->endpoint = w->endpoints[0];
    return CF_OK;
}

cf_worker_t *cf_worker_new(const cf_worker_config_t *config)
{
    if (!config || (config->endpoint_count <= 0 && (!config->endpoint || !*config->endpoint))) {
        cf_error_set(CF_EINVAL, "worker: a broker endpoint is required");
        return NULL;
    }
    if (config->threads < 1) {
        cf_error_set(CF_EINVAL, "worker: threads must be >= 1, got %d", config->threads);
        return NULL;
    }
    if (config->heartbeat_ivl_ms < 0 || config->heartbeat_liveness < 0 || config->max_tasks < 0) {
        cf_error_set(CF_EINVAL, "worker: heartbeat interval, liveness and max_tasks must be >= 0");
        return NULL;
    }
    if (config->identity && (!config->identity[0] || strlen(config->identity) > 255)) {
        cf_error_set(CF_EINVAL, "worker: an identity is 1 to 255 bytes");
        return NULL;
    }
    cf_worker_t *w = calloc(1, sizeof *w);
    if (!w) {
        cf_error_set(CF_ENOMEM, "out of memory");
        return NULL;
    }
    cf_queue_init(&w->queue);
    cf_queue_init(&w->outbox);
    cf_queue_init(&w->begun);
    cf_queue_init(&w->runs);
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->work, NULL);
    cf_clock_cond_init(&w->state);
    cf_clock_cond_init(&w->watch_cond);

    if (s_endpoints(w, config) != CF_OK)
        goto failed;
    w->executors = calloc((size_t)config->threads, sizeof *w->executors);
    for (unsigned i = 0; i < w->endpoint_count; i++) {
        w->progress[i] = cf_worker_progress_new(s_wake_actor, w);
        if (!w->progress[i]) {
            cf_error_set(CF_ENOMEM, "out of memory");
            goto failed;
        }
    }
    if (!w->executors) {
        cf_error_set(CF_ENOMEM, "out of memory");
        goto failed;
    }
    if (config->identity)
        snprintf(w->identity, sizeof w->identity, "%s", config->identity);
    else
        s_make_identity(w->identity, sizeof w->identity);
    w->threads = config->threads;
    if (w->endpoint_count > 1) {
        w->shared_prefetch = config->shared_prefetch == 0  ? (uint64_t)config->threads
                             : config->shared_prefetch < 0 ? 0
                                                           : (uint64_t)config->shared_prefetch;
        w->limit = (uint64_t)w->threads + w->shared_prefetch;
    }
    w->ivl_ms = config->heartbeat_ivl_ms ? config->heartbeat_ivl_ms : CF_HEARTBEAT_IVL_MS;
    w->liveness = config->heartbeat_liveness ? config->heartbeat_liveness : CF_HEARTBEAT_LIVENESS;
    w->max_tasks = config->max_tasks;
    w->exit_on_broker_loss = config->exit_on_broker_loss;
    w->initializer = config->initializer;
    w->initarg = config->initarg;
    w->socket_setup = config->socket_setup;
    w->socket_setup_arg = config->socket_setup_arg;
    w->running_ids = config->running_ids;
    w->announce_functions = config->announce_functions;
    w->stop_kills_process = config->stop_kills_process;
    w->pid = (int)getpid();
    //  Not where a task's thread matters: an initializer prepared the
    //  executors' threads only.
    w->inline_allowed = !config->no_inline && w->endpoint_count == 1 && !w->initializer;
    w->inline_max_us = config->inline_max_us > 0 ? config->inline_max_us : CF_WORKER_INLINE_MAX_US;
    w->inline_budget_us = CF_WORKER_INLINE_BUDGET * w->inline_max_us;

    w->ctx = config->zmq_context;
    if (!w->ctx) {
        w->ctx = zmq_ctx_new();
        w->own_ctx = true;
        if (!w->ctx) {
            cf_error_set(CF_ESYS, "worker: zmq_ctx_new: %s", zmq_strerror(errno));
            goto failed;
        }
    }

    //  Executors first, so the first TASK finds someone waiting.
    for (int i = 0; i < w->threads; i++) {
        int rc = pthread_create(&w->executors[i], NULL, cf_worker_exec_main, w);
        if (rc != 0) {
            cf_error_set(CF_ESYS, "worker: cannot start execution thread %d: %s", i + 1,
                         strerror(rc));
            goto failed;
        }
        w->executors_started++;
    }
    if (w->inline_allowed) {
        int rc = pthread_create(&w->watch, NULL, cf_worker_exec_watch, w);
        if (rc != 0) {
            cf_error_set(CF_ESYS, "worker: cannot start its watch thread: %s", strerror(rc));
            goto failed;
        }
        w->watch_started = true;
    }
    //  The actor sets w->actor itself (see the struct).
    if (!cf_actor_new("cf-worker", cf_worker_actor_main, w))
        goto failed;
    return w;

failed:
    s_free(w);    //  keeps the error: joining threads and freeing set none
    return NULL;
}

cf_err_t cf_worker_wait(cf_worker_t *w, int timeout_ms)
{
    assert(w);
    struct timespec deadline = cf_clock_deadline(timeout_ms > 0 ? timeout_ms : 0);
    pthread_mutex_lock(&w->lock);
    while (!w->ended && timeout_ms != 0) {
        if (timeout_ms < 0)
            pthread_cond_wait(&w->state, &w->lock);
        else if (pthread_cond_timedwait(&w->state, &w->lock, &deadline) == ETIMEDOUT)
            break;
    }
    bool ended = w->ended;
    pthread_mutex_unlock(&w->lock);
    return ended ? CF_OK : CF_ETIMEDOUT;
}

cf_err_t cf_worker_ended(cf_worker_t *w)
{
    assert(w);
    pthread_mutex_lock(&w->lock);
    cf_err_t reason = w->ended ? w->end_reason : CF_OK;
    pthread_mutex_unlock(&w->lock);
    return reason;
}

//  A helper thread's zmq_ctx_term, waited for with a bound (cf_worker_abandon).
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    void *ctx;
    bool done;
} s_term_t;

static void *s_term_main(void *arg)
{
    s_term_t *t = arg;
    while (zmq_ctx_term(t->ctx) != 0 && errno == EINTR)
        ;
    pthread_mutex_lock(&t->lock);
    t->done = true;
    pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->lock);
    return NULL;
}

void cf_worker_abandon(cf_worker_t *w, int flush_ms)
{
    assert(w);
    pthread_mutex_lock(&w->lock);
    bool ended = w->ended;
    pthread_mutex_unlock(&w->lock);
    if (!w->own_ctx || !ended)
        return;
    //  Leaked on purpose: the process ends next, and a term still waiting
    //  (a socket someone else holds) keeps using it.
    s_term_t *t = calloc(1, sizeof *t);
    if (!t)
        return;
    pthread_mutex_init(&t->lock, NULL);
    cf_clock_cond_init(&t->cond);
    t->ctx = w->ctx;
    pthread_t thread;
    if (pthread_create(&thread, NULL, s_term_main, t) != 0)
        return;
    pthread_detach(thread);
    struct timespec deadline = cf_clock_deadline(flush_ms > 0 ? flush_ms : 0);
    pthread_mutex_lock(&t->lock);
    while (!t->done) {
        if (pthread_cond_timedwait(&t->cond, &t->lock, &deadline) == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&t->lock);
}

const char *cf_worker_identity(cf_worker_t *w)
{
    assert(w);
    return w->identity;
}

void cf_worker_counters(cf_worker_t *w, cf_worker_counters_t *out)
{
    assert(w && out);
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&w->lock);
    out->held = w->held;
    out->max_held = w->max_held;
    out->limit = w->limit;
    out->brokers = (int)w->endpoint_count;
    for (unsigned i = 0; i < w->endpoint_count; i++) {
        out->broker[i].endpoint = w->endpoints[i];
        out->broker[i].taken = w->taken[i];
        out->broker[i].granted = w->granted[i];
    }
    pthread_mutex_unlock(&w->lock);
}

void cf_worker_counters_line(cf_worker_t *w, char *line, size_t size)
{
    assert(w && line && size > 0);
    cf_worker_counters_t c;
    cf_worker_counters(w, &c);
    int n = c.limit
                ? snprintf(line, size,
                           "held at most %" PRIu64 " tasks (limit %" PRIu64 "); taken:", c.max_held,
                           c.limit)
                : snprintf(line, size, "held at most %" PRIu64 " tasks; taken:", c.max_held);
    for (int i = 0; i < c.brokers && n > 0 && (size_t)n < size; i++)
        n += snprintf(line + n, size - (size_t)n, "%s %s %" PRIu64, i ? "," : "",
                      c.broker[i].endpoint, c.broker[i].taken);
}

void cf_worker_destroy(cf_worker_t **wp)
{
    if (!wp || !*wp)
        return;
    cf_worker_t *w = *wp;
    *wp = NULL;
    //  The actor ends first (it hands back what is queued and sends the
    //  results of what runs); the executors may still wake it meanwhile, so
    //  it is freed only after they are joined.
    cf_actor_send(w->actor, "$TERM", NULL, 0);
    cf_worker_wait(w, -1);
    s_join_executors(w);
    cf_actor_destroy(&w->actor);
    size_t undelivered = cf_queue_size(&w->outbox);
    if (undelivered)
        cf_log_warn(S_LOG, "%zu results finished after the worker ended, not delivered",
                    undelivered);
    //  Final now that every task ended: what cf-worker says as it exits.
    char line[1024];
    cf_worker_counters_line(w, line, sizeof line);
    cf_log_info(S_LOG, "%s", line);
    s_free(w);
}

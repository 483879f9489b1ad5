//  The client back end (see cf_client.h; cf_client_int.h has the design and
//  the map of the modules): what application threads call through
//  cf_client_ops (submit, cancel, stop, shutdown) on the shared side, under
//  its mutex, and the client's construction and destruction.

#include "cf_client.h"
#include "cf_client_int.h"

#include "cf_clock.h"
#include "cf_error.h"
#include "cf_log.h"
#include "cf_random.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define S_LOG            "client"
//  How long a canceller waits for the broker's answer to CANCEL.
#define S_CANCEL_WAIT_MS 5000

_Static_assert(sizeof(cf_client_item_t) <= CF_CLIENT_TASK_SIZE,
               "CF_CLIENT_TASK_SIZE holds an item");

// ---------------------------------------------------------------------------
//  Shared side

//  Under mutex: makes sure the actor looks at the inbox. Returns true when
//  the caller must write the eventfd (after unlocking).
static bool s_signal_locked(cf_client_t *self)
{
    if (self->shared.signalled)
        return false;
    self->shared.signalled = true;
    return true;
}

static cf_err_t s_submit(void *backend, cf_task_t **task_p)
{
    cf_client_t *self = backend;
    assert(self && task_p && *task_p);
    cf_task_t *task = *task_p;
    *task_p = NULL;

    size_t function_len = strlen(cf_task_function(task));
    if (function_len == 0 || function_len > CF_PROTO_MAX_NAME) {
        cf_task_destroy(&task);
        return cf_error_set(CF_EINVAL, "function name must be 1..%d bytes", CF_PROTO_MAX_NAME);
    }
    if (task->args_len + function_len + CF_CLIENT_TASK_OVERHEAD > CF_PROTO_MAX_FRAME) {
        cf_task_destroy(&task);
        return cf_error_set(CF_ETOOBIG, "arguments of %" PRIu32 " bytes exceed the message limit",
                            task->args_len);
    }
    cf_client_item_t *item = cf_task_backend(task);
    if (!item) {
        cf_task_destroy(&task);
        return cf_error_set(CF_EINVAL, "a task without room for the client's record");
    }
    item->function_len = (uint16_t)function_len;
    item->where = CF_CLIENT_AT_INBOX;

    pthread_mutex_lock(&self->shared.mutex);
    if (self->shared.auth_state == CF_CLIENT_AUTH_REFUSED) {
        char why[sizeof self->shared.auth_message];
        memcpy(why, self->shared.auth_message, sizeof why);
        pthread_mutex_unlock(&self->shared.mutex);
        item->where = CF_CLIENT_GONE;
        cf_client_item_drop(item);
        return cf_error_set(CF_EAUTH, "%s", why);
    }
    if (self->shared.closed) {
        pthread_mutex_unlock(&self->shared.mutex);
        item->where = CF_CLIENT_GONE;
        cf_client_item_drop(item);
        return cf_error_set(CF_ESHUTDOWN, "executor is shut down");
    }
    cf_queue_push_back(&self->shared.inbox, &item->node);
    self->shared.outstanding++;
    bool wake = s_signal_locked(self);
    pthread_mutex_unlock(&self->shared.mutex);
    if (wake)
        cf_client_send_kick(self);
    return CF_OK;
}

//  The canceller of every future this client runs. A task the actor still
//  holds (outbox, parked) is cancelled locally; one at the broker gets a
//  CANCEL and we wait, bounded, for the answer: RESULT cancelled (true), or
//  STARTED or another result (false).
static bool s_cancel(void *executor, cf_future_t *f)
{
    cf_client_t *self = executor;
    cf_future_state_t state = cf_future_state(f);
    if (state != CF_FUTURE_PENDING)
        return state == CF_FUTURE_CANCELLED;

    pthread_mutex_lock(&self->shared.mutex);
    if (self->shared.stopping) {
        pthread_mutex_unlock(&self->shared.mutex);
        return cf_future_cancelled(f);
    }
    if (self->shared.cancels_len == self->shared.cancels_cap) {
        size_t cap = self->shared.cancels_cap ? self->shared.cancels_cap * 2 : 16;
        cf_future_t **grown = realloc(self->shared.cancels, cap * sizeof *grown);
        if (!grown) {
            pthread_mutex_unlock(&self->shared.mutex);
            return false;
        }
        self->shared.cancels = grown;
        self->shared.cancels_cap = cap;
    }
    //  A reference, so the address cannot be reused by another future
    //  before the actor looked it up.
    self->shared.cancels[self->shared.cancels_len++] = cf_future_ref(f);
    uint64_t seq = ++self->shared.cancel_seq;
    bool wake = s_signal_locked(self);
    if (wake) {
        pthread_mutex_unlock(&self->shared.mutex);
        cf_client_wake(self);
        pthread_mutex_lock(&self->shared.mutex);
    }
    //  An actor thread (ours, from a callback, or another client's) never
    //  blocks: the request is queued and the answer is what we know now.
    //  Nor does anyone wait for a broker that cannot answer (once the actor
    //  has taken the request, so a task it still holds is cancelled):
    //  cf_map_destroy cancels a whole window one by one.
    if (!cf_actor_current()) {
        self->shared.cancel_waiters++;
        struct timespec deadline = cf_clock_deadline(S_CANCEL_WAIT_MS);
        while (cf_future_state(f) == CF_FUTURE_PENDING && !self->shared.stopping
               && !(self->shared.cancel_handled >= seq && self->shared.broker_unreachable)) {
            int rc = pthread_cond_timedwait(&self->shared.cancel_cond, &self->shared.mutex,
                                            &deadline);
            if (rc == ETIMEDOUT)
                break;
        }
        self->shared.cancel_waiters--;
        if (self->shared.stopping)
            pthread_cond_broadcast(&self->shared.cancel_cond);
    }
    pthread_mutex_unlock(&self->shared.mutex);
    return cf_future_state(f) == CF_FUTURE_CANCELLED;
}

static cf_err_t s_shutdown(void *backend, bool wait, bool cancel_futures)
{
    cf_client_t *self = backend;
    assert(self);
    pthread_mutex_lock(&self->shared.mutex);
    self->shared.closed = true;
    bool wake = false;
    if (cancel_futures) {
        self->shared.cancel_all = true;
        wake = s_signal_locked(self);
    }
    pthread_mutex_unlock(&self->shared.mutex);
    if (wake)
        cf_client_wake(self);
    if (!wait)
        return CF_OK;
    if (cf_actor_current() == self->actor)
        return cf_error_set(CF_EINVAL, "shutdown(wait) from a callback of the same executor");

    pthread_mutex_lock(&self->shared.mutex);
    while (self->shared.outstanding > 0)
        pthread_cond_wait(&self->shared.idle_cond, &self->shared.mutex);
    pthread_mutex_unlock(&self->shared.mutex);
    return CF_OK;
}

static int s_max_workers(void *backend)
{
    (void)backend;
    return 0;    //  the broker decides
}

// ---------------------------------------------------------------------------
//  Stopping (cf_future_stop; docs/protocol.md, STOP). An application
//  thread queues the request and wakes the actor, never waiting: a task
//  the client still holds is cancelled by the actor (cf_client_task.c),
//  one at the broker gets STOP [id, grace] (cf_client_send.c) and the
//  broker (or its worker) answers in the task's RESULT: cancelled if it had
//  not begun, Interrupted if it stopped or was killed, its own outcome if
//  it finished first or ignored the request on threads.

static void s_stop(void *backend, cf_future_t *f, uint32_t grace_ms)
{
    cf_client_t *self = backend;
    pthread_mutex_lock(&self->shared.mutex);
    if (self->shared.stopping || cf_future_done(f)) {
        pthread_mutex_unlock(&self->shared.mutex);
        return;
    }
    if (self->shared.stops_len == self->shared.stops_cap) {
        size_t cap = self->shared.stops_cap ? self->shared.stops_cap * 2 : 8;
        cf_client_stop_req_t *grown = realloc(self->shared.stops, cap * sizeof *grown);
        if (!grown) {
            pthread_mutex_unlock(&self->shared.mutex);
            cf_log_warn_rated(S_LOG, "out of memory: a stop request was dropped");
            return;
        }
        self->shared.stops = grown;
        self->shared.stops_cap = cap;
    }
    self->shared.stops[self->shared.stops_len++] = (cf_client_stop_req_t){ cf_future_ref(f),
                                                                           grace_ms };
    bool wake = s_signal_locked(self);
    pthread_mutex_unlock(&self->shared.mutex);
    if (wake)
        cf_client_wake(self);
}

// ---------------------------------------------------------------------------
//  Construction and destruction

//  Frees a client the actor has left, or a half-built one (cf_client_new's
//  failures come here).
static void s_free(cf_client_t *self)
{
    for (size_t i = 0; i < self->links_len; i++) {
        cf_client_link_t *link = &self->links[i];
        cf_client_link_close(&link->socket, &link->monitor);
        free(link->cancel_ids);
        free(link->stop_items);
        free(link->endpoint);
    }
    free(self->links);
    explicit_bzero(self->curve_secret, sizeof self->curve_secret);
    if (self->own_ctx && self->ctx)
        zmq_ctx_term(self->ctx);
    cf_proto_enc_destroy(&self->own.enc);
    cf_idmap_destroy(&self->own.pending);
    free(self->shared.cancels);
    free(self->own.cancels_spare);
    free(self->shared.stops);
    free(self->endpoints);
    pthread_cond_destroy(&self->shared.idle_cond);
    pthread_cond_destroy(&self->shared.cancel_cond);
    pthread_cond_destroy(&self->shared.auth_cond);
    pthread_mutex_destroy(&self->shared.mutex);
    free(self);
}

//  Splits a comma-separated list (spaces around the commas allowed) into
//  at most max items, each a malloc'd string, none empty. Returns how many,
//  or -1 with the error set (what names the list in the message).
static int s_split_list(const char *list, const char *what, char **items, int max)
{
    int count = 0;
    const char *p = list;
    for (;;) {
        const char *comma = strchr(p, ',');
        const char *end = comma ? comma : p + strlen(p);
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        if (end == p) {
            cf_error_set(CF_EINVAL, "client: an empty item in the %s \"%s\" (item %d)", what, list,
                         count + 1);
            goto failed;
        }
        if (count == max) {
            cf_error_set(CF_EINVAL, "client: the %s \"%.200s...\" has more than %d items", what,
                         list, max);
            goto failed;
        }
        items[count] = strndup(p, (size_t)(end - p));
        if (!items[count]) {
            cf_error_set(CF_ENOMEM, "out of memory");
            goto failed;
        }
        count++;
        if (!comma)
            return count;
        p = comma + 1;
    }

failed:
    while (count > 0)
        free(items[--count]);
    return -1;
}

//  The links, one per endpoint of config's list, in its order; a
//  duplicate endpoint is dropped with a warning (two sockets to one broker
//  would be two clients there, each holding half our tasks for nothing).
//  CURVE: the broker key list gives one key for all or one per endpoint,
//  in the same order (duplicates included). CF_OK or the error set.
static cf_err_t s_take_links(cf_client_t *self, const cf_client_config_t *config)
{
    char *endpoints[CF_CLIENT_MAX_LINKS] = { 0 };
    char *keys[CF_CLIENT_MAX_LINKS] = { 0 };
    int keys_len = 0;
    cf_err_t rc = CF_OK;
    int endpoints_len = s_split_list(config->endpoint, "broker endpoint list", endpoints,
                                     CF_CLIENT_MAX_LINKS);
    if (endpoints_len < 0)
        return cf_last_err();
    if (config->curve_server_key) {
        keys_len = s_split_list(config->curve_server_key, "broker key list", keys,
                                CF_CLIENT_MAX_LINKS);
        if (keys_len < 0) {
            rc = cf_last_err();
            goto done;
        }
        if (keys_len != 1 && keys_len != endpoints_len) {
            rc = cf_error_set(CF_EINVAL,
                              "client: %d broker keys for %d broker endpoints (give one key for "
                              "all, or one per endpoint in the same order)",
                              keys_len, endpoints_len);
            goto done;
        }
    }
    size_t names_len = 1;
    for (int i = 0; i < endpoints_len; i++)
        names_len += strlen(endpoints[i]) + 2;
    if (!(self->links = cf_calloc((size_t)endpoints_len, sizeof *self->links))
        || !(self->endpoints = cf_calloc(1, names_len))) {
        rc = CF_ENOMEM;
        goto done;
    }
    for (int i = 0; i < endpoints_len; i++) {
        bool twice = false;
        for (size_t j = 0; j < self->links_len && !twice; j++)
            twice = strcmp(self->links[j].endpoint, endpoints[i]) == 0;
        if (twice) {
            cf_log_warn(S_LOG, "broker endpoint %s is listed twice: the second is ignored",
                        endpoints[i]);
            continue;
        }
        cf_client_link_t *link = &self->links[self->links_len];
        link->index = (uint8_t)self->links_len;
        link->endpoint = endpoints[i];
        endpoints[i] = NULL;
        if (keys_len)
            snprintf(link->curve_server, sizeof link->curve_server, "%s",
                     keys[keys_len == 1 ? 0 : i]);
        if (self->links_len)
            strcat(self->endpoints, ", ");
        strcat(self->endpoints, link->endpoint);
        self->links_len++;
    }

done:
    for (int i = 0; i < endpoints_len; i++)
        free(endpoints[i]);
    for (int i = 0; i < keys_len; i++) {
        explicit_bzero(keys[i], strlen(keys[i]));
        free(keys[i]);
    }
    return rc;
}

//  Takes this client's CURVE key pair from the config when it has the
//  keys: all three or none (CF_EINVAL). They are kept for every socket
//  this client opens.
static cf_err_t s_take_curve(cf_client_t *self, const cf_client_config_t *config)
{
    int given = !!config->curve_server_key + !!config->curve_public_key
                + !!config->curve_secret_key;
    if (given == 0)
        return CF_OK;
    if (given != 3)
        return cf_error_set(CF_EINVAL, "client: CURVE needs the broker's public key and this "
                                       "client's key pair");
    if (!zmq_has("curve"))
        return cf_error_set(CF_ESYS, "client: this libzmq was built without CURVE support");
    snprintf(self->curve_public, sizeof self->curve_public, "%s", config->curve_public_key);
    snprintf(self->curve_secret, sizeof self->curve_secret, "%s", config->curve_secret_key);
    self->curve = true;
    cf_keys_fingerprint(config->curve_public_key, self->key_fp);
    return CF_OK;
}

//  Waits for the first handshake's outcome, at most wait_ms: the auth
//  state it left (CF_CLIENT_AUTH_UNKNOWN when none came in time).
static int s_await_handshake(cf_client_t *self, int wait_ms)
{
    struct timespec deadline = cf_clock_deadline(wait_ms);
    pthread_mutex_lock(&self->shared.mutex);
    while (self->shared.auth_state == CF_CLIENT_AUTH_UNKNOWN) {
        if (pthread_cond_timedwait(&self->shared.auth_cond, &self->shared.mutex, &deadline)
            == ETIMEDOUT)
            break;
    }
    int state = self->shared.auth_state;
    pthread_mutex_unlock(&self->shared.mutex);
    return state;
}

//  A link's state before its socket opens.
static void s_link_init(cf_client_t *self, cf_client_link_t *link)
{
    link->send_ivl_ms = self->ivl_ms;
    link->redial_deadline_ms = -1;
    link->monitor_fd = -1;
    link->judge = (cf_keys_judge_t){
        .curve = self->curve,
        .who = "client",
        .endpoint = link->endpoint,
        .key_fp = self->key_fp,
        .key_options = "curve_broker_key and curve_key",
    };
    //  A lost broker gets a fresh socket at once, then at most once per
    //  expiry (liveness intervals), the wait doubling to 4 expiries.
    cf_link_backoff_init(&link->reopen, self->liveness * self->ivl_ms,
                         4 * self->liveness * self->ivl_ms);
    //  inproc peers never reconnect: no monitor needed there.
    link->transport_up = true;
    if (strncmp(link->endpoint, "inproc://", 9) != 0) {
        link->watch = true;
        link->transport_up = false;    //  until the monitor says connected
        link->unreachable = true;
    }
}

static void s_destroy(void **backend_p);

void *cf_client_new(const cf_client_config_t *config)
{
    if (!config || !config->endpoint || !*config->endpoint) {
        cf_error_set(CF_EINVAL, "client: no broker endpoint given");
        return NULL;
    }
    cf_client_t *self = calloc(1, sizeof *self);
    if (!self) {
        cf_error_set(CF_ENOMEM, "out of memory");
        return NULL;
    }
    cf_queue_init(&self->shared.inbox);
    cf_queue_init(&self->own.outbox);
    cf_queue_init(&self->own.parked);
    pthread_mutex_init(&self->shared.mutex, NULL);
    cf_clock_cond_init(&self->shared.idle_cond);
    cf_clock_cond_init(&self->shared.cancel_cond);
    cf_clock_cond_init(&self->shared.auth_cond);

    self->ivl_ms = config->heartbeat_ivl_ms > 0 ? config->heartbeat_ivl_ms : CF_HEARTBEAT_IVL_MS;
    self->connect_timeout_ms = config->connect_timeout_ms;
    self->liveness = config->heartbeat_liveness > 0 ? config->heartbeat_liveness
                                                    : CF_HEARTBEAT_LIVENESS;
    self->own.backoff_ms = CF_CLIENT_BACKOFF_MIN_MS;
    self->own.resend_at_ms = -1;
    self->own.connect_warn_ms = -1;
    self->own.next_id = cf_random_u64();
    self->own.enc = cf_proto_enc_new();
    self->own.pending = cf_idmap_new(1024);
    if (!self->own.enc || !self->own.pending) {
        cf_error_set(CF_ENOMEM, "out of memory");
        goto failed;
    }
    if (s_take_curve(self, config) != CF_OK || s_take_links(self, config) != CF_OK)
        goto failed;
    self->ctx = config->zmq_context;
    if (!self->ctx) {
        self->ctx = zmq_ctx_new();
        self->own_ctx = true;
        if (!self->ctx) {
            cf_error_set(CF_ESYS, "client: zmq_ctx_new: %s", zmq_strerror(errno));
            goto failed;
        }
    }
    bool watched = false;
    bool all_unreachable = true;
    for (size_t i = 0; i < self->links_len; i++) {
        cf_client_link_t *link = &self->links[i];
        s_link_init(self, link);
        watched = watched || link->watch;
        all_unreachable = all_unreachable && link->unreachable;
        if (cf_client_link_open(self, link, &link->socket, &link->monitor) != CF_OK)
            goto failed;
    }
    self->own.unreachable = all_unreachable;
    self->shared.broker_unreachable = all_unreachable;
    if (self->links_len > 1 && self->connect_timeout_ms > 0)
        self->own.connect_warn_ms = cf_clock_now_ms() + self->connect_timeout_ms;
    //  From here the sockets belong to the actor thread (starting it is
    //  the memory barrier zmq asks for when a socket changes threads). The
    //  actor sets self->actor itself (see the struct).
    if (!cf_actor_new("cf-client", cf_client_actor_main, self))
        goto failed;
    //  Wait for the first handshake with any broker: up to the connect
    //  timeout, or with CURVE and no timeout up to the broker's expiry, to
    //  tell a refused key at once (CF_EAUTH) rather than through every
    //  future.
    int wait_ms = self->connect_timeout_ms;
    if (wait_ms <= 0 && self->curve)
        wait_ms = self->ivl_ms * self->liveness;
    int state = watched && wait_ms > 0 ? s_await_handshake(self, wait_ms) : CF_CLIENT_AUTH_OK;
    if (state == CF_CLIENT_AUTH_OK
        || (state == CF_CLIENT_AUTH_UNKNOWN && self->connect_timeout_ms <= 0))
        return self;
    char why[sizeof self->shared.auth_message + 1024];
    if (state == CF_CLIENT_AUTH_REFUSED) {
        pthread_mutex_lock(&self->shared.mutex);
        snprintf(why, sizeof why, "%s", self->shared.auth_message);
        pthread_mutex_unlock(&self->shared.mutex);
    }
    else
        snprintf(why, sizeof why,
                 "no cf-broker answered at %s within %d ms (connect_timeout_ms; is the broker "
                 "running and the endpoint right?)",
                 self->endpoints, self->connect_timeout_ms);
    void *backend = self;
    s_destroy(&backend);
    cf_error_set(state == CF_CLIENT_AUTH_REFUSED ? CF_EAUTH : CF_ETIMEDOUT, "%s", why);
    return NULL;

failed:
    s_free(self);
    return NULL;
}

void cf_client_counters(void *backend, cf_client_counters_t *counters)
{
    cf_client_t *self = backend;
    assert(self && counters);
    *counters = (cf_client_counters_t){
        .brokers = self->links_len,
        .moved = atomic_load_explicit(&self->tally.moved, memory_order_relaxed),
        .late = atomic_load_explicit(&self->tally.late, memory_order_relaxed),
        .failovers = atomic_load_explicit(&self->tally.failovers, memory_order_relaxed),
        .last_failover_ms = atomic_load_explicit(&self->tally.last_failover_ms,
                                                 memory_order_relaxed),
    };
}

//  cf_executor_destroy is about to wait for every task: from now on a
//  broker lost (or never heard) for s_dead_after_ms ends that wait, the
//  tasks it had failing with BrokerLost (s_check_lost).
static void s_destroying(void *backend)
{
    cf_client_t *self = backend;
    pthread_mutex_lock(&self->shared.mutex);
    self->shared.destroying = true;
    bool wake = s_signal_locked(self);
    pthread_mutex_unlock(&self->shared.mutex);
    if (wake)
        cf_client_wake(self);
}

static void s_destroy(void **backend_p)
{
    if (!backend_p || !*backend_p)
        return;
    cf_client_t *self = *backend_p;
    *backend_p = NULL;

    pthread_mutex_lock(&self->shared.mutex);
    self->shared.closed = true;
    self->shared.stopping = true;
    pthread_cond_broadcast(&self->shared.cancel_cond);
    pthread_mutex_unlock(&self->shared.mutex);
    //  $TERM: the actor takes what the inbox still holds, resolves every
    //  future and leaves.
    cf_actor_destroy(&self->actor);

    //  Cancellers still inside s_cancel hold self: let them leave first.
    pthread_mutex_lock(&self->shared.mutex);
    while (self->shared.cancel_waiters > 0)
        pthread_cond_wait(&self->shared.cancel_cond, &self->shared.mutex);
    pthread_mutex_unlock(&self->shared.mutex);
    //  Cancel requests that arrived after the actor's last drain.
    for (size_t i = 0; i < self->shared.cancels_len; i++)
        cf_future_release(&self->shared.cancels[i]);
    self->shared.cancels_len = 0;
    for (size_t i = 0; i < self->shared.stops_len; i++)
        cf_future_release(&self->shared.stops[i].future);
    self->shared.stops_len = 0;
    if (self->own.malformed || self->own.stale)
        cf_log_debug(S_LOG, "closed: %" PRIu64 " malformed replies, %" PRIu64 " stale results",
                     self->own.malformed, self->own.stale);
    s_free(self);
}

const cf_backend_ops_t cf_client_ops = {
    .name = "remote",
    .submit = s_submit,
    .shutdown = s_shutdown,
    .destroy = s_destroy,
    .destroying = s_destroying,
    .max_workers = s_max_workers,
    .cancel = s_cancel,    //  the front installs it on futures that got in
    .stop = s_stop,
    .task_size = CF_CLIENT_TASK_SIZE,
};

//  The client actor (see cf_client.h): the CF_REMOTE back end and the client
//  half of CF_PROCESSES.
//
//  Design note. Two kinds of thread meet here.
//    - Application threads call s_submit, s_shutdown and s_cancel (the
//      futures' canceller). They touch only self->shared, under its mutex:
//      the inbox of new tasks, cancel requests, a few flags and the count
//      of outstanding tasks. A submission is one mutex
//      round trip; the eventfd the actor polls is written only when the
//      inbox goes from empty to non-empty while the actor sleeps (it clears
//      "signalled" only just before it blocks), so a burst, or a steady
//      stream the actor keeps up with, costs no syscall per task.
//    - The actor thread owns self->own (the encoder, the id maps and the
//      lists of tasks) and the socket, and resolves the futures.
//
//  Submissions skip the actor when it sleeps: a submission that would wake
//  it first tries to act for it (cf_actor_enter, see cf_actor.h) and, if
//  the actor sleeps and nothing else is in flight, drains the inbox and
//  sends the SUBMIT itself, and wakes it only when something is left for it
//  (results to read, a blocked socket, cancels). The actor polls the
//  socket's ZMQ_FD as a plain descriptor, not with zmq_poll (which would
//  use the socket while sleeping), and checks ZMQ_EVENTS first; a
//  submitter's send may consume the descriptor's signal, so it checks
//  ZMQ_EVENTS too and wakes the actor if a message waits. Lock order: the
//  actor's io, then mutex.
//
//  A task moves: inbox -> outbox (encoded into SUBMIT, many per message) ->
//  at the broker (waiting for RESULT) -> resolved. A BUSY result parks it
//  for a backoff, then it goes back to the outbox; while anything is parked,
//  new tasks queue behind it, so backpressure neither loses nor reorders
//  much and resends track what the broker frees.
//
//  The broker may forget us: it restarted (its boot id in HEARTBEAT
//  changes), our connection was re-established (it sees a new routing id),
//  or it declared us lost. It answers a heartbeat with ERROR [0, "unknown
//  client"] then, but a SUBMIT silently makes us a new client, so the signs
//  we act on are all of: that error, a new boot id, a reconnection, a broker
//  we had found silent speaking again, and our own silence (an actor stall)
//  longer than the broker's expiry. Each puts every task at the broker back
//  in the outbox: delivery is at-least-once. The broker leaves a resubmitted
//  id it still holds alone, and a second result for a task is dropped here
//  because the first one removed it.
//
//  Callbacks of futures run on the actor thread (the thread that completes
//  a future). They may submit and cancel; they must not wait for this
//  executor to shut down.

#include "cf_client.h"

#include "cf_actor.h"
#include "cf_clock.h"
#include "cf_error.h"
#include "cf_idmap.h"
#include "cf_keys.h"
#include "cf_link.h"
#include "cf_log.h"
#include "cf_proto.h"
#include "cf_queue.h"
#include "cf_random.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define S_LOG "client"

enum { S_AUTH_UNKNOWN, S_AUTH_OK, S_AUTH_REFUSED };

//  A SUBMIT carries at most this many tasks or bytes (docs/protocol.md
//  promises about 1 MiB): large enough that the per-message cost vanishes,
//  small enough that the broker starts dispatching a burst before all of it
//  has arrived.
#define S_BATCH_TASKS    4096
#define S_BATCH_BYTES    (1u * 1024 * 1024)
//  Envelope bytes per task beyond its name and arguments (array header, id,
//  retries, timeout, flags, str/bin headers), rounded up.
#define S_TASK_OVERHEAD  48
//  Replies read per poll wakeup before the actor looks at its inbox again.
#define S_RECV_BURST     512
//  BUSY backoff: doubles while the broker frees nothing, back to the minimum
//  as soon as it completes tasks again.
#define S_BACKOFF_MIN_MS 5
#define S_BACKOFF_MAX_MS 1000
//  A resend round sends twice what the broker completed in the last round
//  (slow start), at least this many.
#define S_RESEND_MIN     64
//  How long a canceller waits for the broker's answer to CANCEL.
#define S_CANCEL_WAIT_MS 5000
//  While tasks wait and no broker (or no worker) is there, a warning this
//  often: steady enough to be seen, slow enough not to flood a log.
#define S_WARN_EVERY_MS  10000

typedef enum {
    S_GONE,         //  resolved and forgotten (or never handed over)
    S_AT_INBOX,     //  handed over by an application thread
    S_AT_OUTBOX,    //  waiting to be encoded and sent
    S_AT_PARKED,    //  answered BUSY, waiting for the backoff
    S_AT_BROKER     //  sent: waiting for STARTED / RESULT
} s_where_t;

//  What the client keeps of a task, in the task's own allocation (its
//  back-end bytes, cf_task_backend): no allocation of its own, and a cancel
//  finds it from the future (cf_task_of) without a map. It lives as long
//  as the future, so it is used only while the client holds the task:
//  where is S_GONE from s_forget on.
typedef struct s_item {
    cf_queue_node_t node;     //  in the inbox, outbox or parked list
    uint64_t id;              //  client task id on the wire
    uint16_t function_len;    //  strlen(cf_task_function(task)), taken once
    uint8_t where;            //  s_where_t
    bool started;             //  STARTED seen: cancel can no longer win
    bool cancel_asked;        //  CANCEL sent, a canceller may be waiting
    bool stop_asked;          //  STOP sent: not resubmitted to a broker that forgot it
} s_item_t;
_Static_assert(sizeof(s_item_t) <= CF_CLIENT_TASK_SIZE, "CF_CLIENT_TASK_SIZE holds an item");

//  The task the item is kept in: owned by the client while it holds the
//  item; it holds a reference to the future.
static cf_task_t *s_task(s_item_t *item)
{
    return cf_task_of_backend(item);
}

static void s_task_drop(s_item_t *item)
{
    cf_task_t *task = s_task(item);
    cf_task_destroy(&task);
}

//  A cf_future_stop on its way to the actor.
typedef struct {
    cf_future_t *future;    //  a reference
    uint32_t grace_ms;
} s_stop_req_t;

//  What application threads and the actor share: every field under mutex.
typedef struct {
    pthread_mutex_t mutex;
    pthread_cond_t idle_cond;      //  outstanding reached 0
    pthread_cond_t cancel_cond;    //  a cancel was answered; a canceller left
    cf_queue_t inbox;              //  new tasks, in submission order
    cf_future_t **cancels;         //  futures to cancel (each a reference)
    size_t cancels_len, cancels_cap;
    s_stop_req_t *stops;    //  cf_future_stop requests (s_stop)
    size_t stops_len, stops_cap;
    bool cancel_all;             //  shutdown(cancel_futures) asked
    bool signalled;              //  the actor is awake or was woken
    bool closed;                 //  no more submissions
    bool stopping;               //  destroy runs: cancellers stop waiting
    size_t outstanding;          //  submitted and not yet resolved
    int cancel_waiters;          //  cancellers blocked in s_cancel
    uint64_t cancel_seq;         //  cancel requests queued so far
    uint64_t cancel_handled;     //  of those, handled by the actor
    bool broker_unreachable;     //  no answer to wait for (actor's view)
    bool destroying;             //  destroy waits: give up on a lost broker
    pthread_cond_t auth_cond;    //  auth_state left S_AUTH_UNKNOWN
    int auth_state;              //  S_AUTH_*: the first handshake's outcome
    char auth_message[256];      //  why the broker refused us (S_AUTH_REFUSED)
} s_shared_t;

//  The actor's alone: touched only by the actor's thread, or by a
//  submitter acting for it (cf_actor_enter), under the actor's io mutex.
typedef struct {
    cf_proto_enc_t *enc;    //  one reusable encoder
    cf_idmap_t *pending;    //  task id -> item, every unresolved task
    cf_queue_t outbox;
    cf_queue_t parked;
    uint64_t next_id;
    uint64_t boot;                //  broker instance id, 0 unknown
    uint32_t broker_ivl_ms;       //  the broker's heartbeat interval
    int send_ivl_ms;              //  ours, or the broker's when shorter
    int64_t last_heard_ms;        //  last message from the broker
    int64_t next_heartbeat_ms;    //  pushed back by every message we send
    int64_t resend_at_ms;         //  parked tasks go out then; -1 none
    int backoff_ms;
    size_t freed;              //  results since the last resend round
    bool blocked;              //  a send hit the HWM: wait for POLLOUT
    bool connected;            //  heard from the broker, not lost since
    bool ever_connected;       //  the transport came up once
    bool transport_up;         //  connected in zmq's sense (monitor)
    bool heard_once;           //  the broker has spoken to us
    cf_keys_judge_t judge;     //  what the handshakes said of our key
    bool resend_on_contact;    //  we found it silent: it may have dropped us
    int64_t last_sent_ms;      //  our last message (0: none yet)
    bool unreachable;          //  published as broker_unreachable
    bool reach_changed;        //  unreachable changed since s_report
    uint64_t cancel_taken;     //  cancel_seq when the inbox was drained
    bool term_asked;           //  $TERM came down the pipe
    bool terminated;           //  the actor loop ends
    size_t resolved;           //  resolved since the last report
    bool answered;             //  a cancel answer to broadcast
    uint64_t *cancel_ids;      //  ids to send in CANCEL
    size_t cancel_ids_len, cancel_ids_cap;
    cf_future_t **cancels_spare;    //  swapped with cancels when draining
    size_t cancels_spare_cap;
    cf_proto_stop_t *stop_items;    //  [id, grace] to send in STOP
    size_t stop_items_len, stop_items_cap;
    //  The socket's life cycle (s_open_socket, s_reopen) and its
    //  reporting: every field here is the actor's.
    zmq_fd_t socket_fd;            //  ZMQ_FD of socket
    zmq_fd_t monitor_fd;           //  ZMQ_FD of monitor, -1 none
    int64_t redial_deadline_ms;    //  DISCONNECTED, no redial seen yet; -1 none
    cf_link_backoff_t reopen;      //  fresh sockets for a lost broker
    int64_t resent_ms;             //  the last s_resend_all (0: none)
    int64_t lost_since_ms;         //  not connected since (when !connected)
    int64_t next_warn_ms;          //  next "tasks waiting" warning
    int64_t progress_ms;           //  a task started or resolved
    bool stats_asked;              //  STATS sent to look for workers
    bool cancel_all_asked;         //  shutdown(cancel_futures) came
    bool ever_up;                  //  some socket of ours ever connected
    uint64_t resends;              //  s_resend_all rounds that moved tasks
    uint64_t malformed;            //  replies dropped as malformed
    uint64_t stale;                //  results for tasks no longer pending
    char err_type[CF_PROTO_MAX_TEXT + 1];
    char err_message[CF_PROTO_MAX_TEXT + 1];
    char err_host[CF_PROTO_MAX_TEXT + 1];
} s_own_t;

typedef struct {
    //  Set by cf_client_new before the actor starts, read-only afterwards
    //  (the sockets and the encoder are the actor's to use; s_reopen
    //  replaces the sockets, under the actor's io like the rest of own).
    void *ctx;
    bool own_ctx;              //  we made ctx, we terminate it
    void *socket;              //  DEALER to the broker (actor's)
    void *monitor;             //  PAIR receiving socket events, or NULL
    bool watch;                //  a monitor on every socket (not inproc)
    unsigned generation;       //  sockets opened so far (monitor names)
    int connect_timeout_ms;    //  cf_client_new waits this for a broker
    bool curve;                //  CURVE client (cf_client_config_t keys)
    //  The keys, kept for a fresh socket after a protocol error (wiped in
    //  s_free): reconnecting needs them as much as connecting did.
    char curve_server[CF_KEY_Z85_SIZE];
    char curve_public[CF_KEY_Z85_SIZE];
    char curve_secret[CF_KEY_Z85_SIZE];
    char key_fp[CF_KEY_FP_SIZE];    //  our public key's fingerprint, for messages
    char *endpoint;
    int ivl_ms;      //  our heartbeat interval
    int liveness;    //  silent intervals before the broker is lost
    //  Set by the actor's thread before it reports ready (no submission
    //  comes earlier); its io mutex guards own.
    cf_actor_t *actor;

    s_shared_t shared;    //  under shared.mutex
    s_own_t own;          //  under the actor's io
} cf_client_t;

// ---------------------------------------------------------------------------
//  Lists

static s_item_t *s_item_of(cf_queue_node_t *node)
{
    return node ? cf_queue_entry(node, s_item_t, node) : NULL;
}

static s_item_t *s_pop_front(cf_queue_t *list)
{
    return s_item_of(cf_queue_pop_front(list));
}

static s_item_t *s_front(const cf_queue_t *list)
{
    return s_item_of(cf_queue_front(list));
}

// ---------------------------------------------------------------------------
//  Shared side

static void s_wake(cf_client_t *self)
{
    cf_actor_wake(self->actor);
}

//  Under mutex: makes sure the actor looks at the inbox. Returns true when
//  the caller must write the eventfd (after unlocking).
static bool s_signal_locked(cf_client_t *self)
{
    if (self->shared.signalled)
        return false;
    self->shared.signalled = true;
    return true;
}

static bool s_cancel(void *executor, cf_future_t *f);
static void s_handle_stops(cf_client_t *self, s_stop_req_t *stops, size_t count);
static void s_send_stops(cf_client_t *self);
static void s_kick(cf_client_t *self);
static bool s_reopen(cf_client_t *self, const char *why, int64_t now);
static void s_close_socket(void **socket_p, void **monitor_p);

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
    if (task->args_len + function_len + S_TASK_OVERHEAD > CF_PROTO_MAX_FRAME) {
        cf_task_destroy(&task);
        return cf_error_set(CF_ETOOBIG, "arguments of %" PRIu32 " bytes exceed the message limit",
                            task->args_len);
    }
    s_item_t *item = cf_task_backend(task);
    if (!item) {
        cf_task_destroy(&task);
        return cf_error_set(CF_EINVAL, "a task without room for the client's record");
    }
    item->function_len = (uint16_t)function_len;
    item->where = S_AT_INBOX;

    pthread_mutex_lock(&self->shared.mutex);
    if (self->shared.auth_state == S_AUTH_REFUSED) {
        char why[sizeof self->shared.auth_message];
        memcpy(why, self->shared.auth_message, sizeof why);
        pthread_mutex_unlock(&self->shared.mutex);
        item->where = S_GONE;
        s_task_drop(item);
        return cf_error_set(CF_EAUTH, "%s", why);
    }
    if (self->shared.closed) {
        pthread_mutex_unlock(&self->shared.mutex);
        item->where = S_GONE;
        s_task_drop(item);
        return cf_error_set(CF_ESHUTDOWN, "executor is shut down");
    }
    cf_queue_push_back(&self->shared.inbox, &item->node);
    self->shared.outstanding++;
    bool wake = s_signal_locked(self);
    pthread_mutex_unlock(&self->shared.mutex);
    if (wake)
        s_kick(self);
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
        s_wake(self);
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
        s_wake(self);
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
//  Actor: resolving tasks

//  Removes item from every structure and frees it; the caller resolved (or
//  resolves next) its future through the reference it took.
static void s_forget(cf_client_t *self, s_item_t *item)
{
    if (item->where == S_AT_OUTBOX)
        cf_queue_remove(&self->own.outbox, &item->node);
    else if (item->where == S_AT_PARKED)
        cf_queue_remove(&self->own.parked, &item->node);
    cf_idmap_remove(self->own.pending, item->id);
    if (item->cancel_asked)
        self->own.answered = true;
    item->where = S_GONE;
    self->own.resolved++;
    //  Last: the item lives in the task's memory, which may go with it.
    s_task_drop(item);
}

//  Runs fn's transition on the future of item, then forgets item. The
//  future outlives the item through the extra reference.
static void s_resolve_cancelled(cf_client_t *self, s_item_t *item)
{
    cf_future_t *f = cf_future_ref(s_task(item)->future);
    s_forget(self, item);
    cf_future_set_cancelled(f);
    cf_future_release(&f);
}

static void s_resolve_error(cf_client_t *self, s_item_t *item, const char *type,
                            const char *message, const char *host, int pid)
{
    cf_future_t *f = cf_future_ref(s_task(item)->future);
    s_forget(self, item);
    cf_future_set_error(f, type, message, host, pid);
    cf_future_release(&f);
}

//  Reports resolutions and cancel answers to waiting application threads:
//  one lock per loop iteration, not per task.
static void s_report(cf_client_t *self)
{
    if (!self->own.resolved && !self->own.answered && !self->own.reach_changed)
        return;
    pthread_mutex_lock(&self->shared.mutex);
    assert(self->shared.outstanding >= self->own.resolved);
    self->shared.outstanding -= self->own.resolved;
    if (self->shared.outstanding == 0)
        pthread_cond_broadcast(&self->shared.idle_cond);
    self->shared.cancel_handled = self->own.cancel_taken;
    self->shared.broker_unreachable = self->own.unreachable;
    if (self->own.answered || self->own.reach_changed)
        pthread_cond_broadcast(&self->shared.cancel_cond);
    pthread_mutex_unlock(&self->shared.mutex);
    self->own.resolved = 0;
    self->own.answered = false;
    self->own.reach_changed = false;
}

//  Unreachable: no transport (per the monitor), or a broker that spoke once
//  and then went silent or said goodbye. Before the first word it is only
//  "not yet heard", which is no reason to give up on answers.
static void s_update_reach(cf_client_t *self)
{
    bool unreachable = !self->own.transport_up || (self->own.heard_once && !self->own.connected);
    if (unreachable != self->own.unreachable) {
        self->own.unreachable = unreachable;
        self->own.reach_changed = true;
    }
}

static void s_queue_cancel_id(cf_client_t *self, s_item_t *item)
{
    if (self->own.cancel_ids_len == self->own.cancel_ids_cap) {
        size_t cap = self->own.cancel_ids_cap ? self->own.cancel_ids_cap * 2 : 64;
        uint64_t *grown = realloc(self->own.cancel_ids, cap * sizeof *grown);
        if (!grown) {
            //  The canceller times out and reports false: honest, since
            //  the task was not cancelled.
            cf_log_warn_rated(S_LOG, "out of memory queueing a cancel");
            return;
        }
        self->own.cancel_ids = grown;
        self->own.cancel_ids_cap = cap;
    }
    self->own.cancel_ids[self->own.cancel_ids_len++] = item->id;
    item->cancel_asked = true;
}

//  Every task at the broker goes back to the outbox (a lost or restarted
//  broker may have forgotten it). One that a canceller is waiting on is
//  back in our hands, so it is cancelled here instead.
static void s_resend_all(cf_client_t *self, const char *why)
{
    cf_queue_t resend, cancel, interrupted;
    cf_queue_init(&resend);
    cf_queue_init(&cancel);
    cf_queue_init(&interrupted);
    size_t cursor = 0;
    uint64_t id;
    void *value;
    while (cf_idmap_next(self->own.pending, &cursor, &id, &value)) {
        s_item_t *item = value;
        if (item->where != S_AT_BROKER)
            continue;
        if (item->cancel_asked && !item->started) {
            cf_queue_push_back(&cancel, &item->node);
            continue;
        }
        if (item->stop_asked) {
            cf_queue_push_back(&interrupted, &item->node);
            continue;
        }
        item->where = S_AT_OUTBOX;
        cf_queue_push_back(&resend, &item->node);
    }
    if (!cf_queue_empty(&resend) || !cf_queue_empty(&cancel)) {
        cf_log_info(S_LOG, "%s: resending %zu tasks", why, cf_queue_size(&resend));
        self->own.resends++;
    }
    //  One resubmission per restart (docs/protocol.md section 7): this one
    //  answers every sign seen so far.
    self->own.resend_on_contact = false;
    self->own.resent_ms = cf_clock_now_ms();
    //  Resent tasks go first: they are the oldest.
    cf_queue_prepend(&self->own.outbox, &resend);
    s_item_t *item;
    while ((item = s_pop_front(&cancel))) {
        item->where = S_AT_BROKER;    //  in no list now
        s_resolve_cancelled(self, item);
    }
    //  Asked to stop, then forgotten by the broker: run again it would not
    //  be stopped, so it ends here.
    while ((item = s_pop_front(&interrupted))) {
        item->where = S_AT_BROKER;
        s_resolve_error(self, item, CF_INTERRUPTED,
                        "the task was asked to stop and the broker forgot it (restarted or "
                        "lost this client): not resubmitted",
                        "", 0);
    }
    self->own.blocked = false;
}

//  The broker stopped answering or said goodbye. Nothing to do but wait:
//  zmq reconnects, and what the broker forgot is resent when it says so
//  (unknown client, new boot id, new connection).
static void s_lost(cf_client_t *self, const char *why)
{
    if (self->own.connected) {
        cf_log_warn(S_LOG, "broker at %s lost (%s)", self->endpoint, why);
        self->own.lost_since_ms = cf_clock_now_ms();
    }
    self->own.connected = false;
    //  Silent to us, we were probably silent to it as well: it may have
    //  dropped our tasks, and our next SUBMIT would rejoin without a word.
    self->own.resend_on_contact = true;
    s_update_reach(self);
}

static void s_park(cf_client_t *self, s_item_t *item, int64_t now)
{
    item->where = S_AT_PARKED;
    cf_queue_push_back(&self->own.parked, &item->node);
    if (self->own.resend_at_ms < 0)
        self->own.resend_at_ms = now + self->own.backoff_ms;
}

// ---------------------------------------------------------------------------
//  Actor: inbox

static void s_copy_text(char *dst, cf_proto_str_t src)
{
    size_t len = src.len > CF_PROTO_MAX_TEXT ? CF_PROTO_MAX_TEXT : src.len;
    if (len)
        memcpy(dst, src.ptr, len);
    dst[len] = '\0';
}

static void s_accept_tasks(cf_client_t *self, cf_queue_t *tasks)
{
    s_item_t *item;
    while ((item = s_pop_front(tasks))) {
        if (++self->own.next_id == 0)
            self->own.next_id = 1;    //  0 means "no task" in ERROR refs
        item->id = self->own.next_id;
        if (cf_idmap_put(self->own.pending, item->id, item) != CF_OK) {
            item->where = S_AT_BROKER;    //  in no list: s_forget unlinks nothing
            s_resolve_error(self, item, "MemoryError", "out of memory in the client", "", 0);
            continue;
        }
        //  Behind parked tasks while the broker pushes back.
        if (!cf_queue_empty(&self->own.parked)) {
            item->where = S_AT_PARKED;
            cf_queue_push_back(&self->own.parked, &item->node);
        }
        else {
            item->where = S_AT_OUTBOX;
            cf_queue_push_back(&self->own.outbox, &item->node);
        }
    }
}

static void s_handle_cancel(cf_client_t *self, cf_future_t *f)
{
    cf_task_t *task = cf_task_of(f);
    s_item_t *item = task ? cf_task_backend(task) : NULL;
    if (!item || item->where == S_GONE) {
        self->own.answered = true;    //  already resolved: the state says so
        return;
    }
    switch ((s_where_t)item->where) {
    case S_AT_OUTBOX:
    case S_AT_PARKED:
        s_resolve_cancelled(self, item);
        self->own.answered = true;
        break;
    case S_AT_BROKER:
        if (item->started)
            self->own.answered = true;
        else if (!item->cancel_asked)
            s_queue_cancel_id(self, item);
        break;
    case S_AT_INBOX:
    case S_GONE:
        assert(false);    //  the inbox was drained first; S_GONE returned above
        break;
    }
}

//  Resolves every task the client holds with resolve(self, item, why):
//  first what the caller took from the inbox (under the mutex, with the
//  state change that keeps new ones out), then the outbox and the parked
//  list in order, then what only the pending map holds (at the broker).
static void s_resolve_all(cf_client_t *self, cf_queue_t *inbox,
                          void (*resolve)(cf_client_t *, s_item_t *, const char *), const char *why)
{
    s_accept_tasks(self, inbox);
    s_item_t *item;
    while ((item = s_front(&self->own.outbox)))
        resolve(self, item, why);
    while ((item = s_front(&self->own.parked)))
        resolve(self, item, why);
    cf_queue_t rest;
    cf_queue_init(&rest);
    size_t cursor = 0;
    uint64_t id;
    void *value;
    while (cf_idmap_next(self->own.pending, &cursor, &id, &value))
        cf_queue_push_back(&rest, &((s_item_t *)value)->node);
    while ((item = s_pop_front(&rest)))
        resolve(self, item, why);
    s_report(self);
}

static void s_resolve_refused(cf_client_t *self, s_item_t *item, const char *why)
{
    s_resolve_error(self, item, "AuthError", why, "", 0);
}

//  The broker refused our key (or our lack of one): nothing sent can ever
//  succeed. Every pending future fails with AuthError, later submissions
//  with CF_EAUTH, and the socket stops reconnecting.
static void s_auth_refused(cf_client_t *self, const char *why)
{
    pthread_mutex_lock(&self->shared.mutex);
    if (self->shared.auth_state == S_AUTH_REFUSED) {
        pthread_mutex_unlock(&self->shared.mutex);
        return;
    }
    self->shared.auth_state = S_AUTH_REFUSED;
    snprintf(self->shared.auth_message, sizeof self->shared.auth_message, "%s", why);
    pthread_cond_broadcast(&self->shared.auth_cond);
    cf_queue_t tasks;
    cf_queue_init(&tasks);
    cf_queue_append(&tasks, &self->shared.inbox);
    pthread_mutex_unlock(&self->shared.mutex);
    cf_log_error(S_LOG, "%s", why);
    s_resolve_all(self, &tasks, s_resolve_refused, why);
    if (zmq_disconnect(self->socket, self->endpoint) != 0)
        cf_log_debug(S_LOG, "disconnect from %s: %s", self->endpoint, zmq_strerror(errno));
    self->own.transport_up = false;
    s_update_reach(self);
    s_report(self);
}

static void s_auth_accepted(cf_client_t *self)
{
    pthread_mutex_lock(&self->shared.mutex);
    if (self->shared.auth_state == S_AUTH_UNKNOWN) {
        self->shared.auth_state = S_AUTH_OK;
        pthread_cond_broadcast(&self->shared.auth_cond);
    }
    pthread_mutex_unlock(&self->shared.mutex);
}

//  A handshake outcome from the monitor (value: the event's value).
static void s_on_handshake(cf_client_t *self, uint16_t event, uint32_t value)
{
    char why[256];
    int verdict = cf_keys_judge(&self->own.judge, cf_keys_event_code(event), (int)value, why,
                                sizeof why);
    if (verdict > 0)
        s_auth_accepted(self);
    else if (verdict < 0)
        s_auth_refused(self, why);
}

//  shutdown(cancel_futures) with no broker to answer: every task at the
//  broker not known to have started is cancelled here (its CANCEL, if it
//  ever arrives, makes the broker drop it; a late STARTED or result is
//  then stale).
static void s_cancel_asked_locally(cf_client_t *self)
{
    cf_queue_t cancel;
    cf_queue_init(&cancel);
    size_t cursor = 0;
    uint64_t id;
    void *value;
    while (cf_idmap_next(self->own.pending, &cursor, &id, &value)) {
        s_item_t *item = value;
        if (item->where == S_AT_BROKER && !item->started)
            cf_queue_push_back(&cancel, &item->node);
    }
    s_item_t *item;
    while ((item = s_pop_front(&cancel)))
        s_resolve_cancelled(self, item);
}

static void s_cancel_everything_queued(cf_client_t *self)
{
    self->own.cancel_all_asked = true;
    s_item_t *item;
    while ((item = s_front(&self->own.outbox)))
        s_resolve_cancelled(self, item);
    while ((item = s_front(&self->own.parked)))
        s_resolve_cancelled(self, item);
    self->own.resend_at_ms = -1;
    size_t cursor = 0;
    uint64_t id;
    void *value;
    while (cf_idmap_next(self->own.pending, &cursor, &id, &value)) {
        item = value;
        if (item->where == S_AT_BROKER && !item->started && !item->cancel_asked)
            s_queue_cancel_id(self, item);
    }
    if (self->own.unreachable)
        s_cancel_asked_locally(self);
}

//  Called before the actor blocks in poll (and by a submitter acting for
//  it): true when application threads left work (then it must not block).
//  Otherwise "signalled" is cleared under the same lock that showed the
//  inbox empty, so the next submission kicks the actor and none is missed.
static bool s_inbox_has_work(cf_client_t *self)
{
    pthread_mutex_lock(&self->shared.mutex);
    bool work = !cf_queue_empty(&self->shared.inbox) || self->shared.cancels_len
                || self->shared.cancel_all || self->shared.stops_len;
    if (!work)
        self->shared.signalled = false;
    pthread_mutex_unlock(&self->shared.mutex);
    return work;
}

static void s_drain_inbox(cf_client_t *self)
{
    pthread_mutex_lock(&self->shared.mutex);
    cf_queue_t tasks;
    cf_queue_init(&tasks);
    cf_queue_append(&tasks, &self->shared.inbox);
    //  The two cancel arrays swap roles, so neither side allocates in the
    //  steady state.
    cf_future_t **cancels = self->shared.cancels;
    size_t cancels_len = self->shared.cancels_len;
    size_t cancels_cap = self->shared.cancels_cap;
    self->shared.cancels = self->own.cancels_spare;
    self->shared.cancels_cap = self->own.cancels_spare_cap;
    self->shared.cancels_len = 0;
    bool cancel_all = self->shared.cancel_all;
    self->shared.cancel_all = false;
    self->own.cancel_taken = self->shared.cancel_seq;
    s_stop_req_t *stops = self->shared.stops;
    size_t stops_len = self->shared.stops_len;
    self->shared.stops = NULL;
    self->shared.stops_len = self->shared.stops_cap = 0;
    pthread_mutex_unlock(&self->shared.mutex);

    //  Tasks first: a cancel always follows its task's submission.
    s_accept_tasks(self, &tasks);
    for (size_t i = 0; i < cancels_len; i++) {
        s_handle_cancel(self, cancels[i]);
        cf_future_release(&cancels[i]);
    }
    if (cancels_len)
        self->own.answered = true;    //  cancel_handled moves on in s_report
    self->own.cancels_spare = cancels;
    self->own.cancels_spare_cap = cancels_cap;
    s_handle_stops(self, stops, stops_len);
    if (cancel_all)
        s_cancel_everything_queued(self);
}

// ---------------------------------------------------------------------------
//  Actor: sending

//  Any message is a sign of life: a heartbeat is due only after an
//  interval in which we sent nothing else.
static void s_sent(cf_client_t *self)
{
    self->own.last_sent_ms = cf_clock_now_ms();
    self->own.next_heartbeat_ms = self->own.last_sent_ms + self->own.send_ivl_ms;
}

static cf_err_t s_send_heartbeat(cf_client_t *self)
{
    cf_proto_enc_begin(self->own.enc, CF_MSG_HEARTBEAT);
    cf_proto_enc_heartbeat(self->own.enc, 0, 0);
    return cf_proto_enc_send(self->own.enc, self->socket, NULL, 0);
}

static void s_send_cancels(cf_client_t *self)
{
    size_t sent = 0;
    while (sent < self->own.cancel_ids_len && !self->own.blocked) {
        size_t n = self->own.cancel_ids_len - sent;
        if (n > CF_PROTO_MAX_BATCH)
            n = CF_PROTO_MAX_BATCH;
        cf_proto_enc_begin(self->own.enc, CF_MSG_CANCEL);
        cf_err_t rc = CF_OK;
        for (size_t i = 0; i < n && rc == CF_OK; i++)
            rc = cf_proto_enc_id(self->own.enc, self->own.cancel_ids[sent + i]);
        if (rc == CF_OK)
            rc = cf_proto_enc_send(self->own.enc, self->socket, NULL, 0);
        if (rc == CF_OK) {
            sent += n;
            s_sent(self);
        }
        else if (rc == CF_EBUSY)
            self->own.blocked = true;
        else {
            //  Dropped: the cancellers time out and report false.
            cf_log_warn_rated(S_LOG, "cannot send CANCEL: %s", cf_strerror(rc));
            sent += n;
        }
    }
    memmove(self->own.cancel_ids, self->own.cancel_ids + sent,
            (self->own.cancel_ids_len - sent) * sizeof *self->own.cancel_ids);
    self->own.cancel_ids_len -= sent;
}

//  Encodes the outbox into SUBMIT messages until it is empty or the socket
//  is at its high-water mark (then the tasks stay for the next iteration).
static void s_send_tasks(cf_client_t *self)
{
    while (!cf_queue_empty(&self->own.outbox) && !self->own.blocked) {
        cf_proto_enc_begin(self->own.enc, CF_MSG_SUBMIT);
        size_t count = 0;
        s_item_t *item = s_front(&self->own.outbox);
        bool redo = false;
        while (item && count < S_BATCH_TASKS) {
            cf_task_t *task = s_task(item);
            size_t need = item->function_len + task->args_len + S_TASK_OVERHEAD;
            if (count > 0 && cf_proto_enc_size(self->own.enc) + need > S_BATCH_BYTES)
                break;
            //  This client reads PROGRESS: every task asks for it.
            uint32_t flags = task->flags | CF_TASK_PROGRESS;
            cf_err_t rc = cf_proto_enc_submit(self->own.enc, item->id, cf_task_function(task),
                                              item->function_len, task->args, task->args_len,
                                              task->retries, task->timeout_ms, flags,
                                              task->priority, task->wait_ms);
            if (rc != CF_OK) {
                //  This task cannot travel; fail it alone and rebuild the
                //  message without it.
                char message[96];
                snprintf(message, sizeof message, "cannot encode the task: %s", cf_strerror(rc));
                s_resolve_error(self, item, "ProtocolError", message, "", 0);
                redo = true;
                break;
            }
            count++;
            item = s_item_of(cf_queue_next(&self->own.outbox, &item->node));
        }
        if (redo)
            continue;
        cf_err_t rc = cf_proto_enc_send(self->own.enc, self->socket, NULL, 0);
        if (rc == CF_EBUSY) {
            self->own.blocked = true;
            break;
        }
        if (rc != CF_OK) {
            //  ETERM and the like: the loop ends at the next poll; keep the
            //  tasks so they are resolved at the end.
            cf_log_warn_rated(S_LOG, "cannot send SUBMIT: %s", cf_strerror(rc));
            self->own.blocked = true;
            break;
        }
        for (size_t i = 0; i < count; i++) {
            item = s_pop_front(&self->own.outbox);
            item->where = S_AT_BROKER;
        }
        s_sent(self);
    }
}

//  A submission found the actor asleep (or going to sleep): sends the inbox
//  from this thread when it can act for the actor (see the design note),
//  else wakes it. Only with nothing else in flight: a stream of submissions
//  sent one by one would cost a message and a send each, where the woken
//  actor batches what arrived meanwhile (measured: 2.5x fewer tasks/s).
//  An actor thread (a callback submitting) only wakes.
static void s_kick(cf_client_t *self)
{
    if (!cf_actor_enter(self->actor)) {
        s_wake(self);
        return;
    }
    bool wake = true;
    if (cf_idmap_size(self->own.pending) == 0) {
        s_drain_inbox(self);
        if (!self->own.terminated) {
            s_send_tasks(self);
            //  s_inbox_has_work also re-arms "signalled" for the next
            //  submission when nothing new came meanwhile.
            wake = !cf_queue_empty(&self->own.outbox) || self->own.blocked
                   || self->own.cancel_ids_len || self->own.stop_items_len || self->own.resolved
                   || self->own.answered || self->own.reach_changed || s_inbox_has_work(self)
                   || (cf_proto_events(self->socket) & ZMQ_POLLIN);
        }
    }
    cf_actor_leave(self->actor, wake);
}

// ---------------------------------------------------------------------------
//  Actor: receiving

static void s_contact(cf_client_t *self, int64_t now)
{
    self->own.last_heard_ms = now;
    if (!self->own.connected) {
        cf_log_debug(S_LOG, "broker at %s answers", self->endpoint);
        self->own.connected = true;
        cf_link_backoff_reset(&self->own.reopen);
        self->own.heard_once = true;
        s_update_reach(self);
    }
    if (self->own.resend_on_contact) {
        self->own.resend_on_contact = false;
        s_resend_all(self, "broker back after silence");
    }
}

static void s_on_result(cf_client_t *self, cf_proto_msg_t *msg, int64_t now)
{
    for (size_t i = 0; i < msg->count; i++) {
        cf_proto_result_t *r = &msg->results[i];
        s_item_t *item = cf_idmap_get(self->own.pending, r->id);
        if (!item) {
            self->own.stale++;    //  resolved already (a resend's twin)
            continue;
        }
        //  A result for a task we are resending (its first copy came
        //  through after all) resolves it just the same; only BUSY is
        //  ignored then.
        switch (r->status) {
        case CF_STATUS_OK: {
            cf_future_t *f = cf_future_ref(s_task(item)->future);
            s_forget(self, item);
            cf_future_set_result(f, r->value, r->value_len);
            cf_future_release(&f);
            self->own.freed++;
            break;
        }
        case CF_STATUS_ERROR:
            s_copy_text(self->own.err_type, r->error.type);
            s_copy_text(self->own.err_message, r->error.message);
            s_copy_text(self->own.err_host, r->error.host);
            s_resolve_error(self, item, self->own.err_type, self->own.err_message,
                            self->own.err_host, r->error.pid);
            self->own.freed++;
            break;
        case CF_STATUS_CANCELLED:
            s_resolve_cancelled(self, item);
            self->own.freed++;
            break;
        case CF_STATUS_BUSY:
            if (item->where == S_AT_BROKER)
                s_park(self, item, now);
            break;
        default:
            self->own.malformed++;
            break;
        }
    }
}

static void s_on_started(cf_client_t *self, cf_proto_msg_t *msg)
{
    for (size_t i = 0; i < msg->count; i++) {
        s_item_t *item = cf_idmap_get(self->own.pending, msg->ids[i]);
        if (!item || item->started)
            continue;
        item->started = true;
        cf_future_set_running(s_task(item)->future);
        if (item->cancel_asked)
            self->own.answered = true;
    }
}

//  PROGRESS: reports of running tasks (docs/protocol.md). A report says
//  the function began, as STARTED does; the future drops one older than
//  what it has, and one for a task no longer pending is stale.
static void s_on_progress(cf_client_t *self, cf_proto_msg_t *msg)
{
    for (size_t i = 0; i < msg->count; i++) {
        const cf_proto_progress_t *p = &msg->progress[i];
        s_item_t *item = cf_idmap_get(self->own.pending, p->id);
        if (!item) {
            self->own.stale++;
            continue;
        }
        if (!item->started) {
            item->started = true;
            cf_future_set_running(s_task(item)->future);
            if (item->cancel_asked)
                self->own.answered = true;
        }
        //  Runs the future's progress callback here, on the actor (or a
        //  thread acting for it), like the done callbacks.
        cf_future_put_progress(s_task(item)->future, p->seq, p->done, p->total, p->partial,
                               p->partial_len);
    }
}

static void s_on_heartbeat(cf_client_t *self, cf_proto_msg_t *msg)
{
    if (msg->ivl_ms && msg->ivl_ms <= INT32_MAX) {
        self->own.broker_ivl_ms = msg->ivl_ms;
        //  The broker expires peers silent for liveness of ITS intervals:
        //  speak at least that often.
        int ivl = (int)msg->ivl_ms < self->ivl_ms ? (int)msg->ivl_ms : self->ivl_ms;
        if (ivl != self->own.send_ivl_ms) {
            self->own.send_ivl_ms = ivl;
            int64_t now = cf_clock_now_ms();
            if (self->own.next_heartbeat_ms > now + ivl)
                self->own.next_heartbeat_ms = now + ivl;
        }
    }
    if (msg->boot == 0)
        return;
    if (self->own.boot != 0 && msg->boot != self->own.boot) {
        cf_log_warn(S_LOG, "broker at %s restarted", self->endpoint);
        s_resend_all(self, "broker restarted");
    }
    self->own.boot = msg->boot;
}

//  The answer to the STATS s_warn_waiting sent: a broker without workers
//  is worth a warning of its own.
static void s_on_stats(cf_client_t *self, cf_proto_msg_t *msg)
{
    if (!self->own.stats_asked)
        return;
    self->own.stats_asked = false;
    for (size_t i = 0; i < msg->count; i++) {
        if (cf_proto_str_eq(msg->stats[i].name, "workers") && msg->stats[i].value == 0)
            cf_log_warn(S_LOG, "%zu tasks waiting: the broker at %s has no workers",
                        cf_idmap_size(self->own.pending), self->endpoint);
    }
}

static void s_on_error(cf_client_t *self, cf_proto_msg_t *msg)
{
    s_copy_text(self->own.err_message, msg->text);
    if (msg->ref == 0 && strcmp(self->own.err_message, CF_PROTO_UNKNOWN_CLIENT) == 0) {
        //  It lost our tasks (or never had them): give them again. Unless
        //  we just did: within an interval of a resubmission the error
        //  answers a message sent before it, and the resubmission already
        //  introduced us (one per restart, docs/protocol.md section 7).
        if (self->own.resent_ms && cf_clock_now_ms() - self->own.resent_ms < self->own.send_ivl_ms)
            return;
        s_resend_all(self, "broker does not know us");
        return;
    }
    if (msg->ref == 0
        && (strcmp(self->own.err_message, CF_PROTO_KEY_REVOKED) == 0
            || strcmp(self->own.err_message, CF_PROTO_NOT_ALLOWED) == 0)) {
        //  No retry can help: every task fails, as at a refused handshake.
        char why[sizeof self->own.err_message + 64];
        snprintf(why, sizeof why, "the broker at %s refused this client: %s", self->endpoint,
                 self->own.err_message);
        s_auth_refused(self, why);
        return;
    }
    s_item_t *item = msg->ref ? cf_idmap_get(self->own.pending, msg->ref) : NULL;
    if (item) {
        s_resolve_error(self, item, "ProtocolError", self->own.err_message, "", 0);
        return;
    }
    cf_log_warn_rated(S_LOG, "broker refused a message: %s", self->own.err_message);
}

static void s_recv(cf_client_t *self)
{
    int64_t now = cf_clock_now_ms();
    for (int n = 0; n < S_RECV_BURST; n++) {
        cf_proto_msg_t *msg = NULL;
        cf_err_t rc = cf_proto_recv(self->socket, false, NULL, &msg);
        if (rc == CF_ETIMEDOUT)
            break;
        if (rc == CF_EPROTO) {
            self->own.malformed++;
            cf_log_debug(S_LOG, "malformed message from the broker dropped");
            continue;
        }
        if (rc != CF_OK) {
            if (rc != CF_ESYS || errno != ETERM)
                cf_log_warn_rated(S_LOG, "receive failed: %s", cf_strerror(rc));
            break;
        }
        s_contact(self, now);
        switch (msg->type) {
        case CF_MSG_RESULT:
            s_on_result(self, msg, now);
            self->own.progress_ms = now;    //  for s_warn_waiting
            break;
        case CF_MSG_STARTED:
            s_on_started(self, msg);
            self->own.progress_ms = now;
            break;
        case CF_MSG_PROGRESS:
            s_on_progress(self, msg);
            self->own.progress_ms = now;
            break;
        case CF_MSG_HEARTBEAT:
            s_on_heartbeat(self, msg);
            break;
        case CF_MSG_ERROR:
            s_on_error(self, msg);
            break;
        case CF_MSG_DISCONNECT:
            s_lost(self, "it said goodbye");
            break;
        case CF_MSG_STATS:
            s_on_stats(self, msg);
            break;
        default:
            self->own.malformed++;
            cf_log_debug(S_LOG, "unexpected %s from the broker dropped",
                         cf_proto_command_name(msg->type));
            break;
        }
        cf_proto_msg_destroy(&msg);
    }
}

//  Socket events: a reconnection means the broker may be another instance,
//  or the same one that now sees us under a new routing id and will drop
//  our old tasks; either way, resend.
static void s_on_monitor(cf_client_t *self)
{
    for (;;) {
        zmq_msg_t frame;
        zmq_msg_init(&frame);
        if (zmq_msg_recv(&frame, self->monitor, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&frame);
            return;
        }
        uint16_t event = 0;
        uint32_t value = 0;
        if (zmq_msg_size(&frame) >= sizeof event)
            memcpy(&event, zmq_msg_data(&frame), sizeof event);
        if (zmq_msg_size(&frame) >= sizeof event + sizeof value)
            memcpy(&value, (const uint8_t *)zmq_msg_data(&frame) + sizeof event, sizeof value);
        bool more = zmq_msg_more(&frame);
        zmq_msg_close(&frame);
        while (more) {    //  the endpoint frame
            zmq_msg_init(&frame);
            if (zmq_msg_recv(&frame, self->monitor, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&frame);
                return;
            }
            more = zmq_msg_more(&frame);
            zmq_msg_close(&frame);
        }
        if (event == ZMQ_EVENT_CONNECT_RETRIED) {
            self->own.redial_deadline_ms = -1;    //  libzmq redials by itself
            continue;
        }
        if (event == ZMQ_EVENT_CONNECTED) {
            self->own.redial_deadline_ms = -1;
            self->own.transport_up = true;
            self->own.ever_up = true;
            //  What waited in the socket (a resubmission) goes out now: no
            //  reason for s_run_timers to call us silent and resend again.
            self->own.last_sent_ms = cf_clock_now_ms();
            s_update_reach(self);
            if (self->own.ever_connected) {
                cf_log_info(S_LOG, "reconnected to %s", self->endpoint);
                self->own.boot = 0;
                //  The SUBMIT of the resent tasks introduces us again.
                s_resend_all(self, "reconnected");
            }
            self->own.ever_connected = true;
        }
        else if (event == ZMQ_EVENT_DISCONNECTED) {
            self->own.transport_up = false;
            s_lost(self, "disconnected");
            //  After a protocol error libzmq closes the connection for
            //  good: no CONNECT_RETRIED follows (see cf_link.h).
            if (self->shared.auth_state != S_AUTH_REFUSED)
                self->own.redial_deadline_ms = cf_clock_now_ms() + CF_LINK_REDIAL_GRACE_MS;
        }
        else if (self->shared.auth_state != S_AUTH_REFUSED)
            s_on_handshake(self, event, value);
    }
}

// ---------------------------------------------------------------------------
//  Actor: timers and loop

static int64_t s_dead_after_ms(cf_client_t *self)
{
    int64_t ivl = self->ivl_ms;
    if ((int64_t)self->own.broker_ivl_ms > ivl)
        ivl = self->own.broker_ivl_ms;
    return ivl * self->liveness;
}

//  How long the broker lets a client be silent: its interval when known
//  (liveness is not announced; ours is assumed).
static int64_t s_broker_expiry_ms(cf_client_t *self)
{
    int64_t ivl = self->own.broker_ivl_ms ? (int64_t)self->own.broker_ivl_ms : self->ivl_ms;
    return ivl * self->liveness;
}

//  Tasks the broker had when destroy gave up on it: it may have run them or
//  not, and nobody will say. Tasks it never had (never sent, or sent while
//  no connection ever came up) are simply cancelled.
static void s_resolve_lost(cf_client_t *self, s_item_t *item, const char *why)
{
    if (item->where == S_AT_BROKER && self->own.ever_up)
        s_resolve_error(self, item, "BrokerLost", why, "", 0);
    else
        s_resolve_cancelled(self, item);
}

//  A lost broker (or one never heard) bounds two waits: a destroy gives up
//  on it after the time in which a live broker would have spoken
//  (s_dead_after_ms), and shutdown(cancel_futures) does not wait for
//  answers to its CANCELs (the tasks it asked about are cancelled here).
static void s_check_lost(cf_client_t *self, int64_t now)
{
    if (cf_idmap_size(self->own.pending) == 0)
        return;
    if (self->own.cancel_all_asked && self->own.unreachable)
        s_cancel_asked_locally(self);
    pthread_mutex_lock(&self->shared.mutex);
    bool destroying = self->shared.destroying;
    pthread_mutex_unlock(&self->shared.mutex);
    if (!destroying || now - self->own.lost_since_ms < s_dead_after_ms(self))
        return;
    size_t at_broker = 0, total = cf_idmap_size(self->own.pending);
    size_t cursor = 0;
    uint64_t id;
    void *value;
    while (cf_idmap_next(self->own.pending, &cursor, &id, &value))
        at_broker += ((s_item_t *)value)->where == S_AT_BROKER && self->own.ever_up;
    cf_log_warn(S_LOG,
                "executor destroyed while the broker at %s was unreachable (%" PRId64
                " ms): %zu tasks failed with BrokerLost, %zu never delivered cancelled",
                self->endpoint, now - self->own.lost_since_ms, at_broker, total - at_broker);
    char why[512];
    snprintf(why, sizeof why,
             "the executor was destroyed while the broker at %s was unreachable: the task "
             "may or may not have run",
             self->endpoint);
    pthread_mutex_lock(&self->shared.mutex);
    cf_queue_t tasks;
    cf_queue_init(&tasks);
    cf_queue_append(&tasks, &self->shared.inbox);
    pthread_mutex_unlock(&self->shared.mutex);
    s_resolve_all(self, &tasks, s_resolve_lost, why);
}

//  No silent waits: while tasks are pending and no broker answers, a
//  warning every S_WARN_EVERY_MS; while the broker answers but nothing
//  started or finished for as long, a STATS request, whose answer says
//  whether the broker has any worker (s_on_stats).
static void s_warn_waiting(cf_client_t *self, int64_t now)
{
    size_t pending = cf_idmap_size(self->own.pending);
    if (pending == 0) {
        self->own.next_warn_ms = 0;
        return;
    }
    if (self->own.next_warn_ms == 0) {
        self->own.next_warn_ms = now + S_WARN_EVERY_MS;
        return;
    }
    if (now < self->own.next_warn_ms)
        return;
    self->own.next_warn_ms = now + S_WARN_EVERY_MS;
    if (!self->own.connected) {
        cf_log_warn(S_LOG, "%zu tasks waiting: no broker answers at %s (for %" PRId64 " s)",
                    pending, self->endpoint, (now - self->own.lost_since_ms) / 1000);
        return;
    }
    if (now - self->own.progress_ms < S_WARN_EVERY_MS || !self->own.transport_up)
        return;
    if (self->curve) {
        //  Under CURVE STATS is an admin key's (docs/security.md): asking
        //  with ours would only be refused and logged as a refusal.
        cf_log_warn(S_LOG,
                    "%zu tasks waiting: nothing started or finished for %" PRId64
                    " s (workers busy, missing, or serving none of these functions)",
                    pending, (now - self->own.progress_ms) / 1000);
        return;
    }
    cf_proto_enc_begin(self->own.enc, CF_MSG_STATS);
    if (cf_proto_enc_send(self->own.enc, self->socket, NULL, 0) == CF_OK) {
        self->own.stats_asked = true;
        s_sent(self);
    }
}

static void s_run_timers(cf_client_t *self)
{
    int64_t now = cf_clock_now_ms();
    //  Heartbeats keep our gaps near one interval; a gap past the broker's
    //  expiry means this thread stalled (a long callback, a stopped
    //  process, a starved machine) and the broker may have dropped us.
    if (self->own.last_sent_ms && self->own.transport_up
        && now - self->own.last_sent_ms > s_broker_expiry_ms(self)) {
        s_resend_all(self, "we were silent");
        self->own.last_sent_ms = now;
    }
    if (now >= self->own.next_heartbeat_ms) {
        //  Not while disconnected: zmq would queue them, and delivered ahead
        //  of the resent tasks after a reconnect each would draw an "unknown
        //  client" answer and a second, useless resend.
        if (self->own.transport_up) {
            cf_err_t rc = s_send_heartbeat(self);
            if (rc == CF_OK)
                s_sent(self);
            else if (rc != CF_EBUSY)
                cf_log_debug(S_LOG, "heartbeat not sent: %s", cf_strerror(rc));
        }
        self->own.next_heartbeat_ms = now + self->own.send_ivl_ms;
    }
    if (self->own.connected && now - self->own.last_heard_ms > s_dead_after_ms(self)) {
        s_lost(self, "silent");
        //  A partition leaves the connection half-open for minutes, and a
        //  broker that went silent may be behind one: dial afresh.
        s_reopen(self, "the broker went silent", now);
    }
    if (self->own.redial_deadline_ms >= 0 && now >= self->own.redial_deadline_ms
        && s_reopen(self, "the connection broke and ZeroMQ does not redial", now))
        self->own.redial_deadline_ms = -1;
    if (!self->own.connected)
        s_check_lost(self, now);
    s_warn_waiting(self, now);
    if (self->own.resend_at_ms >= 0 && now >= self->own.resend_at_ms) {
        if (self->own.freed == 0)
            self->own.backoff_ms = self->own.backoff_ms * 2 > S_BACKOFF_MAX_MS
                                       ? S_BACKOFF_MAX_MS
                                       : self->own.backoff_ms * 2;
        else
            self->own.backoff_ms = S_BACKOFF_MIN_MS;
        size_t n = self->own.freed * 2 > S_RESEND_MIN ? self->own.freed * 2 : S_RESEND_MIN;
        self->own.freed = 0;
        cf_queue_t round;
        cf_queue_init(&round);
        s_item_t *item;
        while (n-- > 0 && (item = s_pop_front(&self->own.parked))) {
            item->where = S_AT_OUTBOX;
            cf_queue_push_back(&round, &item->node);
        }
        cf_queue_prepend(&self->own.outbox, &round);
        self->own.resend_at_ms = !cf_queue_empty(&self->own.parked) ? now + self->own.backoff_ms
                                                                    : -1;
    }
}

static int s_poll_timeout(cf_client_t *self)
{
    int64_t next = self->own.next_heartbeat_ms;
    if (self->own.redial_deadline_ms >= 0) {
        int64_t at = self->own.redial_deadline_ms > self->own.reopen.next_ms
                         ? self->own.redial_deadline_ms
                         : self->own.reopen.next_ms;
        if (at < next)
            next = at;
    }
    if (self->own.connected && self->own.last_heard_ms + s_dead_after_ms(self) + 1 < next)
        next = self->own.last_heard_ms + s_dead_after_ms(self) + 1;
    if (self->own.resend_at_ms >= 0 && self->own.resend_at_ms < next)
        next = self->own.resend_at_ms;
    return cf_clock_ms_until(next);
}

//  A task the destroyed client still held: cancelled if it never started
//  (so it never runs: the broker drops it on DISCONNECT), failed if it did.
static void s_resolve_destroyed(cf_client_t *self, s_item_t *item, const char *why)
{
    if (item->started)
        s_resolve_error(self, item, "ExecutorDestroyed", why, "", 0);
    else
        s_resolve_cancelled(self, item);
}

//  Resolves everything still pending when the actor ends, so no future
//  hangs.
static void s_finish_all(cf_client_t *self)
{
    pthread_mutex_lock(&self->shared.mutex);
    self->shared.closed = true;
    cf_queue_t tasks;
    cf_queue_init(&tasks);
    cf_queue_append(&tasks, &self->shared.inbox);
    pthread_mutex_unlock(&self->shared.mutex);
    s_resolve_all(self, &tasks, s_resolve_destroyed,
                  "the executor was destroyed before the task finished");
}

static void s_actor(cf_actor_t *actor, void *arg)
{
    cf_client_t *self = arg;
    self->actor = actor;
    int64_t now = cf_clock_now_ms();
    self->own.last_heard_ms = now;
    //  No hello: the broker knows a client from its first SUBMIT and
    //  answers anything before that with "unknown client", which would
    //  make us resubmit a burst that raced the answer.
    self->own.next_heartbeat_ms = now + self->own.send_ivl_ms;
    //  Both sockets are polled through their ZMQ_FD as plain descriptors
    //  (see the design note); for the monitor that also spares the two
    //  ZMQ_EVENTS checks (a getpid and a poll each) zmq_poll made on every
    //  call for events that come a few times per connection. A descriptor
    //  only says "look": s_on_monitor reads until EAGAIN, which re-arms it,
    //  so nothing waits unseen. s_open_socket found both descriptors.
    self->own.lost_since_ms = now;
    if (self->monitor)
        s_on_monitor(self);    //  what came before we looked

    cf_actor_serve(actor, self);
    cf_actor_ready(actor, CF_OK, NULL);
    while (!self->own.terminated) {
        bool work = s_inbox_has_work(self);
        int events = cf_proto_events(self->socket);
        bool ready = work || (events & ZMQ_POLLIN) || (self->own.blocked && (events & ZMQ_POLLOUT));
        int timeout = ready ? 0 : s_poll_timeout(self);
        //  Read every round: s_reopen may have replaced both sockets.
        zmq_fd_t monitor_fd = self->own.monitor_fd;
        struct pollfd fds[2] = {
            { self->own.socket_fd, POLLIN, 0 },
            { monitor_fd, POLLIN, 0 },
        };
        bool woken = false;
        if (cf_actor_sleep(actor, fds, monitor_fd >= 0 ? 2 : 1, timeout, &woken) < 0) {
            cf_log_warn(S_LOG, "poll failed: %s", strerror(errno));
            break;
        }
        if (woken) {
            //  $TERM (cf_client's destroy) is the only verb on the pipe.
            if (cf_actor_term_received(actor))
                self->own.term_asked = true;
            work = true;
        }
        if (work) {
            //  Whatever was submitted before destroy closed the inbox is
            //  taken first, so s_finish_all resolves it.
            s_drain_inbox(self);
            if (self->own.term_asked) {
                self->own.terminated = true;
                break;
            }
        }
        events = cf_proto_events(self->socket);
        if (events & ZMQ_POLLIN)
            s_recv(self);
        if (events & ZMQ_POLLOUT)
            self->own.blocked = false;
        if (monitor_fd >= 0 && (fds[1].revents & POLLIN) && monitor_fd == self->own.monitor_fd)
            s_on_monitor(self);
        s_run_timers(self);
        if (self->own.cancel_ids_len)
            s_send_cancels(self);
        s_send_tasks(self);
        if (self->own.stop_items_len)
            s_send_stops(self);
        s_report(self);
    }
    cf_actor_serve(actor, NULL);
    s_finish_all(self);
    //  Tell the broker to drop what it still queues for us. Best effort:
    //  at the high-water mark it is lost and the broker's heartbeats find
    //  out instead.
    cf_proto_enc_begin(self->own.enc, CF_MSG_DISCONNECT);
    cf_proto_enc_text(self->own.enc, "client closed", 0);
    cf_proto_enc_send(self->own.enc, self->socket, NULL, 0);
    if (self->monitor) {
        zmq_socket_monitor(self->socket, NULL, 0);
        zmq_close(self->monitor);
        self->monitor = NULL;
    }
    zmq_close(self->socket);
    self->socket = NULL;
}

// ---------------------------------------------------------------------------
//  Stopping (cf_future_stop; docs/protocol.md, STOP). An application
//  thread queues the request and wakes the actor, never waiting: a task
//  the client still holds is cancelled here, one at the broker gets STOP
//  [id, grace] and the broker (or its worker) answers in the task's RESULT:
//  cancelled if it had not begun, Interrupted if it stopped or was killed,
//  its own outcome if it finished first or ignored the request on threads.

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
        s_stop_req_t *grown = realloc(self->shared.stops, cap * sizeof *grown);
        if (!grown) {
            pthread_mutex_unlock(&self->shared.mutex);
            cf_log_warn_rated(S_LOG, "out of memory: a stop request was dropped");
            return;
        }
        self->shared.stops = grown;
        self->shared.stops_cap = cap;
    }
    self->shared.stops[self->shared.stops_len++] = (s_stop_req_t){ cf_future_ref(f), grace_ms };
    bool wake = s_signal_locked(self);
    pthread_mutex_unlock(&self->shared.mutex);
    if (wake)
        s_wake(self);
}

static void s_queue_stop_item(cf_client_t *self, s_item_t *item, uint32_t grace_ms)
{
    if (self->own.stop_items_len == self->own.stop_items_cap) {
        size_t cap = self->own.stop_items_cap ? self->own.stop_items_cap * 2 : 16;
        cf_proto_stop_t *grown = realloc(self->own.stop_items, cap * sizeof *grown);
        if (!grown) {
            cf_log_warn_rated(S_LOG, "out of memory: a stop request was dropped");
            return;
        }
        self->own.stop_items = grown;
        self->own.stop_items_cap = cap;
    }
    self->own.stop_items[self->own.stop_items_len++] = (cf_proto_stop_t){ item->id, grace_ms };
    item->stop_asked = true;
}

//  On the actor, after the inbox was taken (so every task is found where
//  it is); frees stops.
static void s_handle_stops(cf_client_t *self, s_stop_req_t *stops, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        cf_task_t *task = cf_task_of(stops[i].future);
        s_item_t *item = task ? cf_task_backend(task) : NULL;
        if (item && (item->where == S_AT_OUTBOX || item->where == S_AT_PARKED))
            s_resolve_cancelled(self, item);    //  never sent: it never runs
        else if (item && item->where == S_AT_BROKER)
            s_queue_stop_item(self, item, stops[i].grace_ms);
        cf_future_release(&stops[i].future);
    }
    free(stops);
}

static void s_send_stops(cf_client_t *self)
{
    size_t sent = 0;
    while (sent < self->own.stop_items_len && !self->own.blocked) {
        size_t n = self->own.stop_items_len - sent;
        if (n > CF_PROTO_MAX_BATCH)
            n = CF_PROTO_MAX_BATCH;
        cf_proto_enc_begin(self->own.enc, CF_MSG_STOP);
        cf_err_t rc = CF_OK;
        for (size_t i = 0; i < n && rc == CF_OK; i++)
            rc = cf_proto_enc_stop(self->own.enc, self->own.stop_items[sent + i].id,
                                   self->own.stop_items[sent + i].grace_ms);
        if (rc == CF_OK)
            rc = cf_proto_enc_send(self->own.enc, self->socket, NULL, 0);
        if (rc == CF_OK) {
            sent += n;
            s_sent(self);
        }
        else if (rc == CF_EBUSY)
            self->own.blocked = true;
        else {
            cf_log_warn_rated(S_LOG, "cannot send STOP: %s", cf_strerror(rc));
            sent += n;
        }
    }
    memmove(self->own.stop_items, self->own.stop_items + sent,
            (self->own.stop_items_len - sent) * sizeof *self->own.stop_items);
    self->own.stop_items_len -= sent;
}

// ---------------------------------------------------------------------------
//  Construction and destruction

//  Frees a client the actor has left, or a half-built one (cf_client_new's
//  failures come here).
static void s_free(cf_client_t *self)
{
    s_close_socket(&self->socket, &self->monitor);
    explicit_bzero(self->curve_secret, sizeof self->curve_secret);
    if (self->own_ctx && self->ctx)
        zmq_ctx_term(self->ctx);
    cf_proto_enc_destroy(&self->own.enc);
    cf_idmap_destroy(&self->own.pending);
    free(self->shared.cancels);
    free(self->own.cancels_spare);
    free(self->own.cancel_ids);
    free(self->shared.stops);
    free(self->own.stop_items);
    free(self->endpoint);
    pthread_cond_destroy(&self->shared.idle_cond);
    pthread_cond_destroy(&self->shared.cancel_cond);
    pthread_cond_destroy(&self->shared.auth_cond);
    pthread_mutex_destroy(&self->shared.mutex);
    free(self);
}

//  Takes the CURVE keys from the config when it has them: all three or
//  none (CF_EINVAL). They are kept for every socket this client opens.
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
    snprintf(self->curve_server, sizeof self->curve_server, "%s", config->curve_server_key);
    snprintf(self->curve_public, sizeof self->curve_public, "%s", config->curve_public_key);
    snprintf(self->curve_secret, sizeof self->curve_secret, "%s", config->curve_secret_key);
    self->curve = true;
    cf_keys_fingerprint(config->curve_public_key, self->key_fp);
    return CF_OK;
}

//  Opens a DEALER to the broker (and its monitor) into *socket_p and
//  *monitor_p, with our options, keys and ZMTP heartbeats, connected.
//  On error nothing is left open and the error is set.
static cf_err_t s_open_socket(cf_client_t *self, void **socket_p, void **monitor_p)
{
    void *socket = zmq_socket(self->ctx, ZMQ_DEALER);
    void *monitor = NULL;
    cf_err_t rc = CF_OK;
    if (!socket)
        return cf_error_set(CF_ESYS, "client: zmq_socket: %s", zmq_strerror(errno));
    if (cf_proto_socket_setup(socket, false) != CF_OK
        || cf_link_setup(socket, self->own.send_ivl_ms, self->liveness) != CF_OK) {
        rc = cf_error_set(CF_ESYS, "client: socket setup: %s", zmq_strerror(errno));
        goto failed;
    }
    if (self->curve) {
        rc = cf_keys_apply_client(socket, self->curve_server, self->curve_public,
                                  self->curve_secret);
        if (rc != CF_OK) {
            if (cf_last_err() != rc)
                cf_error_set(rc, "client: cannot set the CURVE keys: %s", cf_strerror(rc));
            goto failed;
        }
    }
    if (self->watch) {
        char name[96];
        snprintf(name, sizeof name, "inproc://cf-client-monitor-%p-%u", (void *)self,
                 self->generation++);
        //  Handshake outcomes tell a refused key (or a missing one) from a
        //  broker that is not up yet, which ZeroMQ itself never reports;
        //  CONNECT_RETRIED tells a connection libzmq redials from one it
        //  dropped for good (cf_link.h).
        int events = ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_CONNECT_RETRIED
                     | ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH
                     | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL;
        if (zmq_socket_monitor(socket, name, events) != 0) {
            rc = cf_error_set(CF_ESYS, "client: socket monitor: %s", zmq_strerror(errno));
            goto failed;
        }
        monitor = zmq_socket(self->ctx, ZMQ_PAIR);
        if (!monitor || zmq_connect(monitor, name) != 0) {
            rc = cf_error_set(CF_ESYS, "client: socket monitor: %s", zmq_strerror(errno));
            goto failed;
        }
    }
    if (zmq_connect(socket, self->endpoint) != 0) {
        rc = cf_error_set(CF_EINVAL, "cannot connect to %s: %s", self->endpoint,
                          zmq_strerror(errno));
        goto failed;
    }
    zmq_fd_t socket_fd = -1, monitor_fd = -1;
    size_t len = sizeof socket_fd;
    if (zmq_getsockopt(socket, ZMQ_FD, &socket_fd, &len) != 0
        || (monitor && zmq_getsockopt(monitor, ZMQ_FD, &monitor_fd, &len) != 0)) {
        rc = cf_error_set(CF_ESYS, "client: socket descriptor: %s", zmq_strerror(errno));
        goto failed;
    }
    self->own.socket_fd = socket_fd;
    self->own.monitor_fd = monitor_fd;
    *socket_p = socket;
    *monitor_p = monitor;
    return CF_OK;

failed:
    zmq_socket_monitor(socket, NULL, 0);
    if (monitor)
        zmq_close(monitor);
    zmq_close(socket);
    return rc;
}

static void s_close_socket(void **socket_p, void **monitor_p)
{
    if (*socket_p)
        zmq_socket_monitor(*socket_p, NULL, 0);    //  fine when none runs
    if (*monitor_p)
        zmq_close(*monitor_p);
    if (*socket_p)
        zmq_close(*socket_p);
    *socket_p = *monitor_p = NULL;
}

//  The broker is lost and libzmq may never redial by itself (cf_link.h): a
//  fresh socket, at most once per backoff step (false when not now). What
//  the old socket held unsent is gone with it, so every task at the broker
//  is resent on the new one, which introduces us to whichever broker
//  answers (a new routing id: the old one's tasks are dropped there).
static bool s_reopen(cf_client_t *self, const char *why, int64_t now)
{
    if (self->shared.auth_state == S_AUTH_REFUSED || !self->watch)
        return true;    //  nothing to reopen for: no redial wanted, or inproc
    if (!cf_link_backoff_take(&self->own.reopen, now))
        return false;
    void *socket = NULL, *monitor = NULL;
    zmq_fd_t old_socket_fd = self->own.socket_fd, old_monitor_fd = self->own.monitor_fd;
    if (s_open_socket(self, &socket, &monitor) != CF_OK) {
        cf_log_warn(S_LOG, "%s; no fresh connection: %s (trying again later)", why,
                    cf_last_error());
        self->own.socket_fd = old_socket_fd;
        self->own.monitor_fd = old_monitor_fd;
        return false;
    }
    s_close_socket(&self->socket, &self->monitor);
    self->socket = socket;
    self->monitor = monitor;
    cf_log_warn(S_LOG, "%s: opened a fresh connection to %s", why, self->endpoint);
    self->own.blocked = false;
    self->own.transport_up = false;
    self->own.ever_connected = false;    //  its first connection is not a re-connection
    self->own.boot = 0;                  //  the next HEARTBEAT is not a second sign
    self->own.redial_deadline_ms = -1;
    s_resend_all(self, "fresh connection");
    s_update_reach(self);
    s_on_monitor(self);
    return true;
}

//  Waits for the first handshake's outcome, at most wait_ms: the auth
//  state it left (S_AUTH_UNKNOWN when none came in time).
static int s_await_handshake(cf_client_t *self, int wait_ms)
{
    struct timespec deadline = cf_clock_deadline(wait_ms);
    pthread_mutex_lock(&self->shared.mutex);
    while (self->shared.auth_state == S_AUTH_UNKNOWN) {
        if (pthread_cond_timedwait(&self->shared.auth_cond, &self->shared.mutex, &deadline)
            == ETIMEDOUT)
            break;
    }
    int state = self->shared.auth_state;
    pthread_mutex_unlock(&self->shared.mutex);
    return state;
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
    self->own.send_ivl_ms = self->ivl_ms;
    self->own.backoff_ms = S_BACKOFF_MIN_MS;
    self->own.resend_at_ms = -1;
    self->own.next_id = cf_random_u64();
    self->endpoint = strdup(config->endpoint);
    self->own.enc = cf_proto_enc_new();
    self->own.pending = cf_idmap_new(1024);
    if (!self->endpoint || !self->own.enc || !self->own.pending) {
        cf_error_set(CF_ENOMEM, "out of memory");
        goto failed;
    }
    self->ctx = config->zmq_context;
    if (!self->ctx) {
        self->ctx = zmq_ctx_new();
        self->own_ctx = true;
        if (!self->ctx) {
            cf_error_set(CF_ESYS, "client: zmq_ctx_new: %s", zmq_strerror(errno));
            goto failed;
        }
    }
    if (s_take_curve(self, config) != CF_OK)
        goto failed;
    self->own.judge = (cf_keys_judge_t){
        .curve = self->curve,
        .who = "client",
        .endpoint = self->endpoint,
        .key_fp = self->key_fp,
        .key_options = "curve_broker_key and curve_key",
    };
    //  inproc peers never reconnect: no monitor needed there.
    self->own.transport_up = true;
    self->own.redial_deadline_ms = -1;
    self->own.monitor_fd = -1;
    //  A lost broker gets a fresh socket at once, then at most once per
    //  expiry (liveness intervals), the wait doubling to 4 expiries.
    cf_link_backoff_init(&self->own.reopen, self->liveness * self->ivl_ms,
                         4 * self->liveness * self->ivl_ms);
    if (strncmp(config->endpoint, "inproc://", 9) != 0) {
        self->watch = true;
        self->own.transport_up = false;    //  until the monitor says connected
        self->own.unreachable = true;
        self->shared.broker_unreachable = true;
    }
    if (s_open_socket(self, &self->socket, &self->monitor) != CF_OK)
        goto failed;
    //  From here the sockets belong to the actor thread (starting it is
    //  the memory barrier zmq asks for when a socket changes threads). The
    //  actor sets self->actor itself (see the struct).
    if (!cf_actor_new("cf-client", s_actor, self))
        goto failed;
    //  Wait for the first handshake: up to the connect timeout, or with
    //  CURVE and no timeout up to the broker's expiry, to tell a refused
    //  key at once (CF_EAUTH) rather than through every future.
    int wait_ms = self->connect_timeout_ms;
    if (wait_ms <= 0 && self->curve)
        wait_ms = self->ivl_ms * self->liveness;
    int state = self->monitor && wait_ms > 0 ? s_await_handshake(self, wait_ms) : S_AUTH_OK;
    if (state == S_AUTH_OK || (state == S_AUTH_UNKNOWN && self->connect_timeout_ms <= 0))
        return self;
    char why[sizeof self->shared.auth_message + 128];
    if (state == S_AUTH_REFUSED) {
        pthread_mutex_lock(&self->shared.mutex);
        snprintf(why, sizeof why, "%s", self->shared.auth_message);
        pthread_mutex_unlock(&self->shared.mutex);
    }
    else
        snprintf(why, sizeof why,
                 "no cf-broker answered at %s within %d ms (connect_timeout_ms; is the broker "
                 "running and the endpoint right?)",
                 self->endpoint, self->connect_timeout_ms);
    void *backend = self;
    s_destroy(&backend);
    cf_error_set(state == S_AUTH_REFUSED ? CF_EAUTH : CF_ETIMEDOUT, "%s", why);
    return NULL;

failed:
    s_free(self);
    return NULL;
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
        s_wake(self);
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

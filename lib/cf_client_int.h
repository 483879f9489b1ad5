//  The client's private header: the state the client's modules share and
//  the functions they call in each other. Nothing outside lib/cf_client*.c
//  includes it; the public face is cf_client.h.
//
//  The modules (docs/architecture.md has the map), one prefix each:
//    cf_client.c          the back end (cf_client_ops, cf_client_new): what
//                         application threads call (submit, cancel, stop,
//                         shutdown) on the shared side, construction and
//                         destruction
//    cf_client_task.c     cf_client_task_*: a task's life on the actor:
//                         taken from the inbox with the cancels and stops
//                         that came with it, parked, resent, resolved and
//                         forgotten; the reports to application threads
//    cf_client_send.c     cf_client_send_*: SUBMIT from the outbox, CANCEL,
//                         STOP, heartbeats; a submitter acting for the
//                         sleeping actor (kick)
//    cf_client_recv.c     cf_client_recv_*: reading the socket: RESULT,
//                         STARTED, PROGRESS, HEARTBEAT, ERROR, STATS
//    cf_client_link.c     cf_client_link_*: each broker's socket's life
//                         (open, close, a fresh one for a lost broker), the
//                         monitor's events (connections, handshakes: our
//                         key accepted or refused), whether the broker is
//                         reachable, failover of a lost broker's tasks
//    cf_client_actor.c    cf_client_actor_*: the actor's thread and its
//                         loop, the timers (heartbeats, silence, resend
//                         rounds, warnings), the end (every future resolved)
//
//  This header does not include cf_client.h: cf_client.c includes both,
//  and a private header that included the public one would make the module
//  cf_client depend on itself through cf_client_int, a cycle
//  tools/check_layers.py refuses (the broker has no cf_broker.c for that
//  reason; the client needs nothing of cf_client.h here).
//
//  The client actor (see cf_client.h): the CF_REMOTE back end and the client
//  half of CF_PROCESSES.
//
//  Design note. Two kinds of thread meet here.
//    - Application threads call s_submit, s_shutdown and s_cancel (the
//      futures' canceller; cf_client.c). They touch only self->shared,
//      under its mutex: the inbox of new tasks, cancel requests, a few
//      flags and the count of outstanding tasks. A submission is one mutex
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
//  Several brokers (a comma-separated endpoint list). Each broker has a
//  link (cf_client_link_t): its DEALER, monitor, heartbeats, boot id and
//  fresh-socket backoff, everything the signs above are read from, per
//  link; the outbox, the parked list and the pending map stay one for the
//  client. A sent task records its link (cf_client_item_t.link), and
//  cf_client_task_resend_all takes a link: the signs of one broker resend
//  that broker's tasks only. The spread (cf_client_send.c, s_pick_link)
//  sends each batch to the usable link holding the fewest of our tasks.
//  With one link everything is as it was before lists: tasks go to that
//  link whatever its state, a lost broker keeps its tasks until it speaks.
//  With several, a lost broker's tasks go back to the outbox at once
//  (cf_client_link_lost) and on to the others; a reply about a task from a
//  link it is no longer on is late and dropped (cf_client_recv.c,
//  s_item_for), which is what keeps "one resolution per future" true when
//  two brokers may both run it.
//
//  Callbacks of futures run on the actor thread (the thread that completes
//  a future). They may submit and cancel; they must not wait for this
//  executor to shut down.

#ifndef CF_CLIENT_INT_H
#define CF_CLIENT_INT_H

#include "cf_actor.h"
#include "cf_idmap.h"
#include "cf_keys.h"
#include "cf_link.h"
#include "cf_proto.h"
#include "cf_queue.h"
#include "cf_task.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

enum { CF_CLIENT_AUTH_UNKNOWN, CF_CLIENT_AUTH_OK, CF_CLIENT_AUTH_REFUSED };

//  Envelope bytes per task beyond its name and arguments (array header, id,
//  retries, timeout, flags, str/bin headers), rounded up.
#define CF_CLIENT_TASK_OVERHEAD  48
//  BUSY backoff: doubles while the broker frees nothing, back to the minimum
//  as soon as it completes tasks again.
#define CF_CLIENT_BACKOFF_MIN_MS 5
#define CF_CLIENT_BACKOFF_MAX_MS 1000
//  Brokers one client may list (cf_client_item_t.link is a byte).
#define CF_CLIENT_MAX_LINKS      16
#define CF_CLIENT_NO_LINK        0xff

typedef enum {
    CF_CLIENT_GONE,         //  resolved and forgotten (or never handed over)
    CF_CLIENT_AT_INBOX,     //  handed over by an application thread
    CF_CLIENT_AT_OUTBOX,    //  waiting to be encoded and sent
    CF_CLIENT_AT_PARKED,    //  answered BUSY, waiting for the backoff
    CF_CLIENT_AT_BROKER     //  sent: waiting for STARTED / RESULT
} cf_client_where_t;

//  What the client keeps of a task, in the task's own allocation (its
//  back-end bytes, cf_task_backend): no allocation of its own, and a cancel
//  finds it from the future (cf_task_of) without a map. It lives as long
//  as the future, so it is used only while the client holds the task:
//  where is CF_CLIENT_GONE from cf_client_task_forget on.
typedef struct cf_client_item {
    cf_queue_node_t node;     //  in the inbox, outbox or parked list
    uint64_t id;              //  client task id on the wire
    uint16_t function_len;    //  strlen(cf_task_function(task)), taken once
    uint8_t where;            //  cf_client_where_t
    bool started;             //  STARTED seen: cancel can no longer win
    bool cancel_asked;        //  CANCEL sent, a canceller may be waiting
    bool stop_asked;          //  STOP sent: not resubmitted to a broker that forgot it
    //  The link it was last sent on (CF_CLIENT_NO_LINK: never sent). Kept
    //  while the task waits to be resent, so that the broker it left may
    //  still answer for it until it is sent elsewhere; from then on that
    //  broker's replies for it are late and ignored.
    uint8_t link;
} cf_client_item_t;

//  The task the item is kept in: owned by the client while it holds the
//  item; it holds a reference to the future.
static inline cf_task_t *cf_client_item_task(cf_client_item_t *item)
{
    return cf_task_of_backend(item);
}

static inline void cf_client_item_drop(cf_client_item_t *item)
{
    cf_task_t *task = cf_client_item_task(item);
    cf_task_destroy(&task);
}

//  A cf_future_stop on its way to the actor.
typedef struct {
    cf_future_t *future;    //  a reference
    uint32_t grace_ms;
} cf_client_stop_req_t;

//  What application threads and the actor share: every field under mutex.
typedef struct {
    pthread_mutex_t mutex;
    pthread_cond_t idle_cond;      //  outstanding reached 0
    pthread_cond_t cancel_cond;    //  a cancel was answered; a canceller left
    cf_queue_t inbox;              //  new tasks, in submission order
    cf_future_t **cancels;         //  futures to cancel (each a reference)
    size_t cancels_len, cancels_cap;
    cf_client_stop_req_t *stops;    //  cf_future_stop requests (s_stop)
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
    pthread_cond_t auth_cond;    //  auth_state left CF_CLIENT_AUTH_UNKNOWN
    int auth_state;              //  CF_CLIENT_AUTH_*: the first handshake's outcome
    char auth_message[256];      //  why the broker refused us (CF_CLIENT_AUTH_REFUSED)
} cf_client_shared_t;

//  One broker of the list: its socket and everything known of it. The
//  actor's alone (under its io, like own), except the endpoint and keys,
//  which are set before the actor starts and never change.
typedef struct {
    char *endpoint;                        //  this broker's client endpoint
    char curve_server[CF_KEY_Z85_SIZE];    //  its public key (CURVE)
    uint8_t index;                         //  in cf_client_t.links, as items name it
    bool watch;                            //  a monitor on the socket (not inproc)
    void *socket;                          //  DEALER to the broker
    void *monitor;                         //  PAIR receiving socket events, or NULL
    zmq_fd_t socket_fd;                    //  ZMQ_FD of socket
    zmq_fd_t monitor_fd;                   //  ZMQ_FD of monitor, -1 none
    uint64_t boot;                         //  broker instance id, 0 unknown
    uint32_t broker_ivl_ms;                //  the broker's heartbeat interval
    int send_ivl_ms;                       //  ours, or the broker's when shorter
    int64_t last_heard_ms;                 //  last message from the broker
    int64_t next_heartbeat_ms;             //  pushed back by every message we send
    int64_t last_sent_ms;                  //  our last message (0: none yet)
    int64_t redial_deadline_ms;            //  DISCONNECTED, no redial seen yet; -1 none
    int64_t resent_ms;                     //  the last cf_client_task_resend_all (0: none)
    int64_t lost_since_ms;                 //  not connected since (when !connected)
    cf_link_backoff_t reopen;              //  fresh sockets for a lost broker
    cf_keys_judge_t judge;                 //  what the handshakes said of our key
    size_t at_broker;                      //  tasks sent here and not answered
    bool blocked;                          //  a send hit the HWM: wait for POLLOUT
    bool connected;                        //  heard from the broker, not lost since
    bool ever_connected;                   //  the transport came up once
    bool transport_up;                     //  connected in zmq's sense (monitor)
    bool heard_once;                       //  the broker has spoken to us
    bool ever_up;                          //  some socket of ours to it ever connected
    bool handshaken;                       //  a handshake succeeded once
    bool refused;                          //  it refused our key: never used again
    bool resend_on_contact;                //  we found it silent: it may have dropped us
    bool unreachable;                      //  not to be waited for nor given tasks
    bool stats_asked;                      //  STATS sent to look for workers
    uint64_t *cancel_ids;                  //  ids to send in CANCEL
    size_t cancel_ids_len, cancel_ids_cap;
    cf_proto_stop_t *stop_items;    //  [id, grace] to send in STOP
    size_t stop_items_len, stop_items_cap;
} cf_client_link_t;

//  The actor's alone: touched only by the actor's thread, or by a
//  submitter acting for it (cf_actor_enter), under the actor's io mutex.
typedef struct {
    cf_proto_enc_t *enc;    //  one reusable encoder
    cf_idmap_t *pending;    //  task id -> item, every unresolved task
    cf_queue_t outbox;
    cf_queue_t parked;
    uint64_t next_id;
    int64_t resend_at_ms;    //  parked tasks go out then; -1 none
    int backoff_ms;
    size_t freed;                   //  results since the last resend round
    unsigned next_link;             //  where the spread starts looking (ties)
    bool unreachable;               //  every link is: published as broker_unreachable
    bool reach_changed;             //  unreachable changed since cf_client_task_report
    uint64_t cancel_taken;          //  cancel_seq when the inbox was drained
    bool term_asked;                //  $TERM came down the pipe
    bool terminated;                //  the actor loop ends
    size_t resolved;                //  resolved since the last report
    bool answered;                  //  a cancel answer to broadcast
    cf_future_t **cancels_spare;    //  swapped with cancels when draining
    size_t cancels_spare_cap;
    int64_t connect_warn_ms;    //  then, name the brokers never heard; -1 none
    int64_t next_warn_ms;       //  next "tasks waiting" warning
    int64_t progress_ms;        //  a task started or resolved
    bool cancel_all_asked;      //  shutdown(cancel_futures) came
    uint64_t resends;           //  cf_client_task_resend_all rounds that moved tasks
    uint64_t malformed;         //  replies dropped as malformed
    uint64_t stale;             //  results for tasks no longer pending
    char err_type[CF_PROTO_MAX_TEXT + 1];
    char err_message[CF_PROTO_MAX_TEXT + 1];
    char err_host[CF_PROTO_MAX_TEXT + 1];
} cf_client_own_t;

//  What cf_client_counters reports; the actor adds, anyone reads.
typedef struct {
    _Atomic uint64_t moved;
    _Atomic uint64_t late;
    _Atomic uint64_t failovers;
    _Atomic int64_t last_failover_ms;
} cf_client_tally_t;

typedef struct {
    //  Set by cf_client_new before the actor starts, read-only afterwards
    //  (the sockets and the encoder are the actor's to use; cf_client_link_reopen
    //  replaces a link's sockets, under the actor's io like the rest of own).
    //  First, away from shared: the actor reads these on every message,
    //  while submitters write shared's mutex and inbox next to the end of
    //  this part.
    cf_client_link_t *links;    //  one per broker, in the order given
    size_t links_len;
    void *ctx;
    bool own_ctx;              //  we made ctx, we terminate it
    unsigned generation;       //  sockets opened so far (monitor names)
    int connect_timeout_ms;    //  cf_client_new waits this for a broker
    bool curve;                //  CURVE client (cf_client_config_t keys)
    //  Our keys, kept for a fresh socket after a protocol error (wiped in
    //  s_free): reconnecting needs them as much as connecting did.
    char curve_public[CF_KEY_Z85_SIZE];
    char curve_secret[CF_KEY_Z85_SIZE];
    char key_fp[CF_KEY_FP_SIZE];    //  our public key's fingerprint, for messages
    char *endpoints;                //  "a, b": every broker, for messages
    int ivl_ms;                     //  our heartbeat interval
    int liveness;                   //  silent intervals before the broker is lost
    //  Set by the actor's thread before it reports ready (no submission
    //  comes earlier); its io mutex guards own.
    cf_actor_t *actor;

    cf_client_shared_t shared;    //  under shared.mutex
    cf_client_own_t own;          //  under the actor's io
    cf_client_tally_t tally;      //  atomics
} cf_client_t;

static inline cf_client_item_t *cf_client_item_of(cf_queue_node_t *node)
{
    return node ? cf_queue_entry(node, cf_client_item_t, node) : NULL;
}

static inline cf_client_item_t *cf_client_pop_front(cf_queue_t *list)
{
    return cf_client_item_of(cf_queue_pop_front(list));
}

static inline cf_client_item_t *cf_client_front(const cf_queue_t *list)
{
    return cf_client_item_of(cf_queue_front(list));
}

static inline void cf_client_wake(cf_client_t *self)
{
    cf_actor_wake(self->actor);
}

// ---------------------------------------------------------------------------
//  cf_client_task.c

//  Removes item from every structure and frees it; the caller resolved (or
//  resolves next) its future through the reference it took.
void cf_client_task_forget(cf_client_t *self, cf_client_item_t *item);
//  Forgets item and cancels its future.
void cf_client_task_cancelled(cf_client_t *self, cf_client_item_t *item);
//  Forgets item and fails its future with that error.
void cf_client_task_error(cf_client_t *self, cf_client_item_t *item, const char *type,
                          const char *message, const char *host, int pid);
//  Reports resolutions, cancel answers and the brokers' reach to waiting
//  application threads: one lock per loop iteration, not per task.
void cf_client_task_report(cf_client_t *self);
//  Every task sent on link and not answered goes back to the outbox (a
//  lost or restarted broker may have forgotten it), to be sent on the
//  links the spread picks; one a canceller waits on is cancelled, one
//  asked to stop fails with Interrupted. why is logged.
void cf_client_task_resend_all(cf_client_t *self, cf_client_link_t *link, const char *why);
//  Parks a task the broker answered BUSY until the resend round.
void cf_client_task_park(cf_client_t *self, cf_client_item_t *item, int64_t now);
//  Resolves every task the client holds with resolve(self, item, why):
//  inbox (taken by the caller under the mutex), outbox, parked, then what
//  is at the brokers; then reports.
void cf_client_task_resolve_all(cf_client_t *self, cf_queue_t *inbox,
                                void (*resolve)(cf_client_t *, cf_client_item_t *, const char *),
                                const char *why);
//  shutdown(cancel_futures) with no broker to answer: cancels here every
//  task at a broker not known to have started.
void cf_client_task_cancel_locally(cf_client_t *self);
//  Before the actor blocks: true when application threads left work; else
//  clears "signalled" under the same lock (see cf_client_task.c).
bool cf_client_task_inbox_has_work(cf_client_t *self);
//  Takes what application threads left (tasks, cancels, stops,
//  shutdown(cancel_futures)) and handles it.
void cf_client_task_drain_inbox(cf_client_t *self);

// ---------------------------------------------------------------------------
//  cf_client_send.c

//  After a message went out on link: its next heartbeat is due an
//  interval later.
void cf_client_send_sent(cf_client_link_t *link);
//  Sends one HEARTBEAT on link (the caller notes it sent).
cf_err_t cf_client_send_heartbeat(cf_client_t *self, cf_client_link_t *link);
//  Sends link's queued CANCEL ids until done or the socket is blocked.
void cf_client_send_cancels(cf_client_t *self, cf_client_link_t *link);
//  Encodes the outbox into SUBMIT messages, spread over the live links,
//  until it is empty or every such link is blocked.
void cf_client_send_tasks(cf_client_t *self);
//  A submission found the actor asleep: sends the inbox from this thread
//  when it can act for the actor, else wakes it.
void cf_client_send_kick(cf_client_t *self);
//  Sends link's queued STOP items until done or the socket is blocked.
void cf_client_send_stops(cf_client_t *self, cf_client_link_t *link);
//  True when some link's socket has a message to read.
bool cf_client_send_readable(cf_client_t *self);

// ---------------------------------------------------------------------------
//  cf_client_recv.c

//  Reads and handles what link's socket has, up to a burst.
void cf_client_recv_read(cf_client_t *self, cf_client_link_t *link);

// ---------------------------------------------------------------------------
//  cf_client_link.c

//  Publishes (at the next report) whether link's broker, and whether every
//  broker, is unreachable.
void cf_client_link_update_reach(cf_client_t *self, cf_client_link_t *link);
//  The broker stopped answering or said goodbye (why, for the log). With
//  several brokers, what it held moves to the others at once.
void cf_client_link_lost(cf_client_t *self, cf_client_link_t *link, const char *why);
//  The broker refused this client (why): that link is dropped for good;
//  when no other broker is left, every task fails with AuthError, later
//  submissions with CF_EAUTH.
void cf_client_link_refused(cf_client_t *self, cf_client_link_t *link, const char *why);
//  Reads link's monitor events (connections, handshakes) until none is left.
void cf_client_link_on_monitor(cf_client_t *self, cf_client_link_t *link);
//  Opens a DEALER to link's broker (and its monitor), connected; CF_OK, or
//  an error set with nothing left open.
cf_err_t cf_client_link_open(cf_client_t *self, cf_client_link_t *link, void **socket_p,
                             void **monitor_p);
//  Closes a socket and its monitor (either may be NULL) and clears both.
void cf_client_link_close(void **socket_p, void **monitor_p);
//  A fresh socket for a lost broker, at most once per backoff step: false
//  when not now.
bool cf_client_link_reopen(cf_client_t *self, cf_client_link_t *link, const char *why, int64_t now);
//  True when new tasks may go to link: its broker answers (or has not been
//  found silent yet) and did not refuse us.
static inline bool cf_client_link_usable(const cf_client_link_t *link)
{
    return !link->unreachable && !link->refused;
}

// ---------------------------------------------------------------------------
//  cf_client_actor.c

//  The actor's thread (cf_actor_new's body; arg is the client): the loop,
//  then every future resolved, DISCONNECT and the sockets closed.
void cf_client_actor_main(cf_actor_t *actor, void *arg);

#endif

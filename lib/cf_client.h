//  The client actor: CF_REMOTE and CF_PROCESSES back end. A thread that owns
//  one DEALER socket to a broker's client endpoint. Application threads hand
//  it tasks through a mutex-protected inbox and an eventfd it polls; it
//  batches them into SUBMIT messages, matches RESULT/STARTED replies to
//  futures by task id, heartbeats the broker, and when the broker may have
//  forgotten its tasks (its boot id changes, the connection is
//  re-established, it answers "unknown client", it speaks again after a
//  silence, or the client itself stalled past the broker's expiry) resends
//  every task still pending. A BUSY
//  result puts the task back in its queue for a later resend, so backpressure
//  never loses a task.
//
//  What callers can rely on (cf_client_ops):
//  - submit is safe from any thread and never blocks on the network.
//  - Futures complete on the actor thread, so their callbacks run there:
//    they may submit and cancel, not wait for this executor's shutdown.
//  - Cancel (cf_future_cancel): a task the client still holds is cancelled
//    at once; for one at the broker it sends CANCEL and waits for the answer
//    (true when the broker removed it, false once it started or finished),
//    at most 5 s, and not at all while the broker is unreachable or when
//    called from an actor thread (then false unless it was still local).
//  - shutdown(wait) returns when every submitted future is done;
//    cancel_futures cancels what the client holds and asks the broker to
//    drop what it queues.
//  - destroy resolves whatever is still pending: cancelled if it never
//    started, error "ExecutorDestroyed" if it did. No future hangs, and no
//    destroy either: once the broker was lost (or never heard) for
//    liveness intervals, the waiting shutdown before it ends with tasks
//    handed to that broker failed ("BrokerLost") and the rest cancelled.
//  - A connection that ends without libzmq redialling (a protocol error),
//    or a broker silent for liveness intervals, gets a fresh socket
//    (core/cf_link.h) and every task the broker had is resubmitted.
//  - Delivery is at-least-once: after a broker restart a task may run twice;
//    its future takes the first result.
//
//  Several brokers (endpoint "tcp://a:5555, tcp://b:5555"): one DEALER,
//  with its own heartbeats, boot id, fresh-socket reopen and handshake
//  monitor, per broker. A new task goes to the live broker holding the
//  fewest of our unanswered tasks. When a broker is lost (its connection
//  drops, or it is silent for liveness intervals) or restarts, every task
//  it held is resubmitted at once to the others (with none live, it waits
//  for the first that answers). From then on what the broker it left says
//  of it (RESULT, STARTED, PROGRESS) is late and ignored, so each future
//  resolves once, with the answer of the broker it is on; CANCEL and STOP
//  go to that broker. A task running on a worker when its broker died may
//  therefore run twice (at-least-once, as after a lost worker). A broker
//  that comes back takes new tasks again. No CANCEL is sent for moved
//  tasks to a broker that comes back: a lost broker gets a fresh socket at
//  once, so it sees a new client, which cannot name the old one's tasks;
//  the old client's queue is dropped at the broker's own expiry.

#ifndef CF_CLIENT_H
#define CF_CLIENT_H

#include "cf_task.h"

#include <stddef.h>
#include <stdint.h>

extern const cf_backend_ops_t cf_client_ops;
//  cf_client_ops.task_size, for back ends that pass tasks on to a client
//  (a static initialiser cannot read another's field).
#define CF_CLIENT_TASK_SIZE 32

typedef struct {
    //  The brokers' client endpoints: one, or a comma-separated list
    //  (spaces around the commas allowed; a duplicate is ignored with a
    //  warning; at most 16). See "Several brokers" above.
    const char *endpoint;
    void *zmq_context;         //  NULL: the client makes its own
    int heartbeat_ivl_ms;      //  <= 0: CF_HEARTBEAT_IVL_MS (the broker's, when shorter, wins)
    int heartbeat_liveness;    //  missed intervals before the broker is lost; <= 0: default
    //  > 0: cf_client_new waits up to this long for a first handshake with
    //  a broker (any of the list) and returns NULL with CF_ETIMEDOUT when
    //  none came (a message naming every endpoint); the brokers of a list
    //  still silent then are named in a warning. <= 0: it does not wait.
    int connect_timeout_ms;
    //  CURVE (Z85 text, all three or none; applied before connect, not
    //  kept): the broker's public key and this client's key pair. With
    //  them, cf_client_new waits for the first handshake up to
    //  heartbeat_ivl_ms * heartbeat_liveness and returns NULL with CF_EAUTH
    //  when every broker refuses the key. With several brokers
    //  curve_server_key is one key for all or a comma-separated list of
    //  one per endpoint, in the endpoints' order.
    const char *curve_server_key;
    const char *curve_public_key;
    const char *curve_secret_key;
} cf_client_config_t;

//  Whatever the keys, a handshake every broker refuses (key not on its client
//  list, CURVE on one side only, or with CURVE three handshakes in a row
//  dropped: a wrong broker key) fails every pending future with the runtime
//  error "AuthError", makes submit return CF_EAUTH, and stops reconnecting.

//  Connects (asynchronously: zmq connects in the background). NULL with
//  cf_last_error() on failure (CF_EINVAL for a malformed endpoint). A
//  shared zmq_context must outlive the client.
void *cf_client_new(const cf_client_config_t *config);

//  What the client did across its brokers, for tests and diagnostics.
typedef struct {
    size_t brokers;              //  links: the list less its duplicates
    uint64_t moved;              //  tasks sent to another broker than the one they were on
    uint64_t late;               //  RESULT, STARTED, PROGRESS items of moved tasks, ignored
    uint64_t failovers;          //  brokers lost while holding tasks, which were moved
    int64_t last_failover_ms;    //  cf_clock_now_ms() of the last one (0: none)
} cf_client_counters_t;

//  Reads the counters of a client (a cf_client_new back end). Safe from
//  any thread; each counter is exact, the set is not one snapshot.
void cf_client_counters(void *backend, cf_client_counters_t *counters);

#endif

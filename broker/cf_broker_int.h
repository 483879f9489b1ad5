//  The broker's private header: the state the broker's modules share and
//  the functions they call in each other. Nothing outside broker/cf_broker*.c
//  includes it; the public face is cf_broker.h.
//
//  The modules (ARCH_BROKER.md has the map), one prefix each:
//    cf_broker_actor.c    the handle (cf_broker_* of cf_broker.h), the actor
//                         and its loop, the pipe (STATS, LOST, $TERM)
//    cf_broker_state.c    cf_broker_state_*: the state's life (sockets
//                         bound, tables, goodbye), the stats snapshot
//    cf_broker_task.c     cf_broker_task_*: a task's life (new, where it
//                         lives, finished), the timeout heap
//    cf_broker_queue.c    cf_broker_queue_*, cf_broker_fn_*: the queued
//                         tasks (each client's lanes by function and
//                         priority), the fair pick of a task a worker can
//                         run, the functions workers serve, and the end of
//                         a task no worker serves (NoWorker)
//    cf_broker_peer.c     cf_broker_peer_*: identities and tables, reading
//                         the sockets (the role check), heartbeats and
//                         liveness, the simple replies (HEARTBEAT, ERROR)
//    cf_broker_client.c   cf_broker_client_*: clients: submit, cancel,
//                         outboxes (STARTED, RESULT) and their flush, lost
//    cf_broker_worker.c   cf_broker_worker_*: workers: ready, credit,
//                         dispatch, results, removal
//    cf_broker_dispatch.c cf_broker_dispatch: queued tasks planned over the
//                         workers with credit and sent in TASK batches
//    cf_broker_shared.c   cf_broker_shared_*: workers shared with other
//                         brokers (READY feature SHARED): WANT, REFUND,
//                         their grants
//    cf_broker_stats.c    cf_broker_stats_*: the STATS reply, its counters
//                         and its per-worker and per-client lists
//    cf_broker_stop.c     cf_broker_stop_*: STOP from clients, forwarded to
//                         workers; what a stopped task's lost worker means
//    cf_broker_progress.c cf_broker_progress_*: PROGRESS from workers kept
//                         in clients' outboxes (latest wins) and flushed
//
//  Design note. One thread, a cf_actor, creates and owns the two ROUTER
//  sockets and every table below; other threads reach it only through its
//  pipe, so nothing is shared and nothing is locked. Each turn of the loop
//  reads what the sockets have (up to a budget, so one flood cannot starve
//  the other side), runs due timers, dispatches queued tasks to workers with
//  credit, and flushes the clients' outboxes: many events between two polls
//  become one TASK per worker and one STARTED and one RESULT per client.
//
//  A task lives in exactly one place: its client's queue (waiting: a lane
//  of it, see cf_broker_queue.c) or its worker's running list (sent). The same list node serves both, so moving
//  it costs nothing and a task is never copied after SUBMIT. Two maps find
//  it: the broker's own id (what workers answer with) and the client's id
//  (what CANCEL names, and what detects a resubmission).
//
//  Nothing is dropped silently. A TASK the ROUTER refuses (worker at its
//  high-water mark, or gone) puts its tasks back at the front of their
//  queues; STARTED and RESULT items wait in the client's outbox until a send
//  goes through, and a client that stays unreachable for the liveness period
//  is lost like a silent one. Every such event is counted.

#ifndef CF_BROKER_INT_H
#define CF_BROKER_INT_H

#include "cf_broker.h"
#include "cf_auth.h"

#include "cf_idmap.h"
#include "cf_log.h"
#include "cf_proto.h"
#include "cf_queue.h"

#include <stddef.h>
#include <stdint.h>

//  Messages read from one socket in one turn before the loop looks at the
//  other socket and the timers.
#define CF_BROKER_READ_BUDGET       256
//  How soon a refused send (peer at its high-water mark) is tried again;
//  for a client the wait doubles with each refusal up to the maximum, and
//  while refused only one item is offered at a time, so a client that does
//  not read costs a small probe now and then, not a re-encoded 64 MiB batch
//  every few milliseconds.
#define CF_BROKER_RETRY_MS          10
#define CF_BROKER_RETRY_MAX_MS      320
//  An unasked STARTED (a task handed to a worker) waits up to this long for
//  the task's RESULT, or any RESULT for its client, to go out with it: a
//  message of its own would cost the client a wake-up per task, which on a
//  one-at-a-time round trip was a fifth of the time (docs/benchmarks.md). A
//  task running longer still shows as running within about this long; a
//  STARTED that answers a CANCEL or a resubmission goes out at once.
#define CF_BROKER_STARTED_DELAY_MS  CF_BROKER_RETRY_MS
//  A client with tasks still queued here waits on the workers, not on its
//  results' latency: its results go in messages of this many (or this many
//  bytes), or once the oldest has waited CF_BROKER_GATHER_US. With 100 clients sharing a
//  broker each one's share of a poll round is a few results, and every
//  message to a connection costs the I/O thread five system calls
//  (docs/scaling.md, "Many clients").
#define CF_BROKER_GATHER_ITEMS      64
#define CF_BROKER_WHOLE_MIN         (16u * 1024)
#define CF_BROKER_GATHER_BYTES      (64u * 1024)
#define CF_BROKER_GATHER_US         2000
//  Bodies are cut well below CF_PROTO_MAX_FRAME so the receiver never
//  refuses a batch we built.
#define CF_BROKER_MAX_BODY          (CF_PROTO_MAX_FRAME - 64u * 1024)
//  Per-item encoding overhead allowance when deciding where to cut.
#define CF_BROKER_ITEM_OVERHEAD     64
//  An outbox larger than this means the client does not read: it is lost.
#define CF_BROKER_MAX_OUTBOX        (256u * 1024 * 1024)
//  A worker cannot announce more slots than this (bounds planning loops).
#define CF_BROKER_MAX_CREDIT        (1u << 20)
//  Routing ids longer than ZeroMQ's 255 bytes do not exist.
#define CF_BROKER_MAX_IDENTITY      255
//  Lines a peer can cause once per message, logged a second at most: debug
//  lines about peer events (cf_broker_log_event), warnings about tasks
//  (cf_broker_log_task).
#define CF_BROKER_EVENT_LOG_PER_SEC 50
#define CF_BROKER_TASK_LOG_PER_SEC  10
//  How long a suspect waits for a worker that holds nothing before it runs
//  like any task: a cluster whose workers all hold long tasks never has an
//  empty one, and the suspect must not wait for them.
#define CF_BROKER_SUSPECT_WAIT_MS   2000
//  Linger on close: long enough for DISCONNECT to leave, short enough that a
//  stuck peer never holds shutdown.
#define CF_BROKER_LINGER_MS         200

//  How often at most the queued tasks of a function no worker serves are
//  looked over for ones whose wait ended (NoWorker): the end comes this
//  late at worst, and a million such tasks cost a scan this often.
#define CF_BROKER_UNSERVED_CHECK_MS 100

//  A listener that cannot accept a connection (out of file descriptors:
//  libzmq retries the accept at once, silently) is reported once in this
//  long at most.
#define CF_BROKER_ACCEPT_LOG_MS 10000

typedef struct cf_broker_client cf_broker_client_t;
typedef struct cf_broker_worker cf_broker_worker_t;

//  A function name the broker knows: of a task, or on a worker's list.
//  Interned, so a task, a lane and a worker's set hold a pointer, and
//  "does this worker serve it" is one lookup by id.
typedef struct cf_broker_fn {
    struct cf_broker_fn *hash_next;    //  names whose hash is alike
    uint64_t hash;
    uint64_t id;         //  key in workers' sets; never reused
    size_t refs;         //  lanes and workers' sets holding it
    size_t queued;       //  its tasks waiting in lanes
    uint32_t servers;    //  workers whose list names it
    cf_queue_t lanes;    //  lanes of this function, of every client (fn_node)
    //  Since when no connected worker serves it (0: one does); while it has
    //  queued tasks it is then in self->unserved, and its tasks end with
    //  NoWorker once they waited their wait (cf_broker_queue_expire).
    int64_t unserved_since_ms;
    int64_t next_check_ms;    //  no look at its tasks before then
    cf_queue_node_t unserved_node;
    uint16_t len;
    char name[];    //  NUL-terminated
} cf_broker_fn_t;

//  A client's queued tasks of one function, priority and wait for a worker
//  (wait_ms, as SUBMIT gave it: 0 is the broker's default), FIFO. A lane
//  lives while a task (queued or on a worker) refers to it, so putting a
//  task back never needs memory; a lost client's lanes live on, without
//  it, while its orphaned tasks run.
typedef struct cf_broker_lane {
    struct cf_broker_lane *same_fn;    //  the client's next lane of this function
    cf_queue_node_t all_node;          //  in client->lanes (every lane of the client)
    cf_queue_node_t order_node;        //  in client->order while it holds tasks
    cf_queue_node_t fn_node;           //  in fn->lanes
    cf_queue_t tasks;
    cf_broker_client_t *client;    //  NULL once the client is lost
    cf_broker_fn_t *fn;
    size_t refs;    //  tasks referring to it
    int32_t priority;
    uint32_t wait_ms;
} cf_broker_lane_t;

typedef enum {
    CF_BROKER_QUEUED,     //  in its client's queue
    CF_BROKER_RUNNING,    //  on a worker, its client waits
    CF_BROKER_EXPIRED,    //  on a worker, already failed with TimeoutError
    CF_BROKER_ORPHANED    //  on a worker, its client is gone
} cf_broker_task_state_t;

//  One task: 96 bytes on LP64 (measured), with its args in the same
//  allocation (the function name is its lane's), plus a 16-byte slot in
//  each of two maps (at 3/8 to 3/4 load, about 60 bytes together) and
//  malloc's own 8 to 16: about 170 bytes of bookkeeping per task beyond its
//  payload.
typedef struct {
    cf_queue_node_t node;          //  in its lane's tasks, the suspects, or worker->running
    cf_broker_lane_t *lane;        //  its client, function and priority
    cf_broker_client_t *client;    //  who waits; NULL once expired or orphaned
    cf_broker_worker_t *worker;    //  where it runs; NULL while queued
    uint64_t id;                   //  the broker's id (toward workers)
    uint64_t client_task_id;       //  the client's id (toward the client)
    //  Running: when it times out. Queued in a lane: the earliest its wait
    //  for a worker serving its function can end. A queued suspect: the
    //  end of its wait for an empty worker.
    int64_t deadline_ms;
    uint32_t heap_index;    //  in the timeout heap, or CF_BROKER_NOT_IN_HEAP
    uint32_t timeout_ms;    //  run time limit, 0: none
    int32_t retries;        //  retries allowed after a lost worker (<0: none)
    uint32_t retries_used;
    uint32_t flags;    //  CF_TASK_*
    uint32_t args_len;
    uint32_t results_before;    //  its worker's results count when it was sent
    uint8_t state;              //  cf_broker_task_state_t
    uint8_t marks;              //  CF_BROKER_BEGUN, ...
    uint8_t args[];
} cf_broker_task_t;

_Static_assert(sizeof(cf_broker_task_t) <= 96, "keep per-task bookkeeping small");

#define CF_BROKER_NOT_IN_HEAP UINT32_MAX

//  Task marks. BEGUN: its function began on its worker (the worker said
//  STARTED, or, for a worker that does not say, it was sent): its client
//  was told. CANCEL_ASKED: its client asked to cancel it while on a worker
//  that had not said it began; the worker was asked in turn. SUSPECT: it
//  was on a worker that vanished and may have been what killed it; it runs
//  alone on a worker from now on, so that a second loss names it alone.
#define CF_BROKER_BEGUN        0x1u
#define CF_BROKER_CANCEL_ASKED 0x2u
#define CF_BROKER_SUSPECT      0x4u
//  Transient, while a lost worker's tasks are released: uses a retry.
#define CF_BROKER_CHARGED      0x8u
//  STOP_ASKED: its client asked to stop it (cf_future_stop) and its worker
//  was sent STOP: an error is final (no retry), a hand-back is cancelled,
//  and a lost worker fails it with Interrupted instead of a retry
//  (cf_broker_stop.c).
#define CF_BROKER_STOP_ASKED   0x10u
//  CHUNK: a cf.chunk task (map's chunksize), routed by the function its
//  arguments name (its lane's), sent to the worker as cf.chunk.
#define CF_BROKER_CHUNK        0x20u
//  WHOLE: its arguments (CF_BROKER_WHOLE_MIN bytes or more) are kept in the
//  one-item TASK body it is sent as, built when it came, so that they are
//  copied once in the broker: args holds a count of references (the task,
//  and each send ZeroMQ has not finished with), then the body, args_len
//  bytes (cf_broker_task_body).
#define CF_BROKER_WHOLE        0x40u

//  What a supervisor saw when a worker process died: the broker ids of the
//  tasks its threads were running (count of them; none when between tasks).
typedef struct {
    const uint64_t *running;
    size_t count;
} cf_broker_died_t;

//  What clients and workers have in common: a routing id, a table slot,
//  liveness.
typedef struct cf_broker_peer {
    struct cf_broker_peer *hash_next;    //  peers whose identity hashes alike
    uint64_t hash;                       //  of the identity
    int64_t last_seen_ms;                //  last message from it
    cf_queue_node_t all_node;            //  in self->clients or self->workers
    size_t id_len;
    uint8_t id[CF_BROKER_MAX_IDENTITY];
    char label[24];              //  identity as shown in logs
    uint64_t auth_generation;    //  allow-lists its key was last found on; 0: not checked
} cf_broker_peer_t;

//  A RESULT item waiting to be sent to its client.
typedef struct cf_broker_out {
    struct cf_broker_out *next;
    uint64_t id;           //  the client's task id
    uint32_t value_len;    //  OK: value bytes in data
    int32_t pid;           //  ERROR
    uint8_t status;        //  cf_status_t
    //  data is a whole one-item RESULT body (value_len its size) that goes
    //  alone, handed to ZeroMQ: a value of CF_BROKER_WHOLE_MIN bytes or
    //  more is copied once in the broker, not three times.
    bool whole;
    uint8_t data[];    //  OK: value (or whole body); ERROR: type\0message\0function\0host\0
} cf_broker_out_t;

struct cf_broker_client {
    cf_broker_peer_t peer;    //  first: a client is a peer
    //  Its waiting tasks, in lanes by function and priority. order holds
    //  the lanes with tasks by (priority high first, front task oldest
    //  first): a worker takes from the first lane whose function it serves.
    cf_queue_t lanes;
    cf_queue_t order;
    cf_idmap_t *lane_map;           //  fn id -> its first lane here (same_fn: the others)
    cf_broker_lane_t *last_lane;    //  where the last SUBMIT went (the usual next)
    size_t queued;
    cf_queue_node_t ring_node;    //  in self->ring while queued > 0
    cf_idmap_t *tasks;            //  client task id -> task (queued or on a worker)
    size_t running;               //  of its tasks on workers
    uint64_t *started;            //  STARTED ids not sent yet
    size_t started_count, started_cap;
    int64_t started_due_ms;                  //  STARTED go out by then, or with a RESULT
    cf_broker_out_t *out_head, *out_tail;    //  RESULT items not sent yet
    size_t out_count;
    int64_t out_since_us;            //  when the oldest of them came
    size_t out_bytes;                //  memory held by started + out items
    cf_queue_node_t flush_node;      //  in self->flush while anything is unsent
    int64_t unreachable_since_ms;    //  first refused send not followed by a good one; 0: none
    int64_t retry_at_ms;             //  no flush before this after a refusal
    uint64_t submitted, completed, failed;    //  its tasks taken; answered with a value, an error
    int retry_delay_ms;                       //  the current wait between refused flushes
    //  Progress (cf_broker_progress.c): client task id -> the record of a
    //  task that reported (NULL until one did), and the records holding a
    //  report not sent yet.
    cf_idmap_t *progress;
    cf_queue_t progress_out;
};

struct cf_broker_worker {
    cf_broker_peer_t peer;          //  first: a worker is a peer
    cf_queue_t running;             //  tasks sent to it, in dispatch order
    uint32_t credit;                //  tasks it can take now
    uint32_t plan;                  //  tasks planned for it in this dispatch
    cf_queue_node_t *plan_first;    //  the first of them on running
    //  Tasks it runs at once (its READY credit plus what it held then);
    //  credit beyond this is prefetch, filled only after every worker's
    //  idle threads (see cf_broker_dispatch).
    uint32_t threads;
    uint32_t results;              //  results received (wraps; compared for equality)
    uint32_t suspects;             //  SUSPECT tasks on it (it then takes nothing else)
    uint64_t completed, failed;    //  its results with a value, with an error
    bool says_begun;               //  READY feature BEGUN: sends STARTED, takes CANCEL
    bool says_stop;                //  READY feature STOP: takes STOP
    bool says_lone;                //  READY feature LONE: takes CF_TASK_LONE
    bool exhausted;                //  this dispatch found nothing it serves
    //  READY feature SHARED: it grants credit explicitly and a RESULT
    //  returns no slot; it hears WANT when it has no credit and a task
    //  waits for it, REFUND of credit nothing here can use (see "Shared
    //  workers" in cf_broker_worker.c).
    bool shared;
    bool want_sent;                 //  SHARED: a WANT went since its last grant (READY, CREDIT)
    cf_queue_node_t shared_node;    //  in self->shared while shared
    bool counted_all;               //  in self->serve_all
    //  The functions it serves: fn id -> cf_broker_fn_t; NULL when it sent
    //  no list (it serves every function, as cf/1 workers do).
    cf_idmap_t *fns;
    cf_queue_node_t avail_node;    //  in self->available while credit > 0 and not blocked
    int64_t blocked_until_ms;      //  a TASK was refused at HWM: wait till then; 0: not blocked
    int32_t pid;
    char host[64];
};

//  The actor's state: everything the broker knows. The actor's thread
//  alone touches it (cf_broker_state_new to cf_broker_state_destroy).
typedef struct cf_broker_state {
    void *clients_sock;
    void *workers_sock;
    cf_proto_enc_t *enc;
    int ivl_ms;
    int liveness;
    size_t max_queued;
    size_t max_queued_per_client;
    uint32_t no_worker_wait_ms;    //  a task's wait for a worker serving its function
    bool require_roles;            //  CURVE: check each message's User-Id role
    cf_auth_t *auth;               //  CURVE: the allow-lists, for revoked keys; borrowed
    cf_log_limit_t refused_log;    //  audit lines of refused messages, per second
    cf_log_limit_t event_log;      //  debug lines a peer can cause per message
    cf_log_limit_t task_log;       //  warnings about tasks that cannot go on
    uint64_t boot;                 //  random, nonzero: tells peers this run from another
    int64_t started_ms;            //  when the state was made (uptime_ms)
    uint64_t next_task_id;         //  starts at random: a restarted broker never
                                   //  matches a result meant for its predecessor
    cf_idmap_t *client_table;      //  identity hash -> first cf_broker_peer_t of the chain
    cf_idmap_t *worker_table;
    cf_queue_t clients;      //  all clients (all_node)
    cf_queue_t workers;      //  all workers (all_node)
    cf_queue_t ring;         //  clients with queued tasks, in turn order (ring_node)
    size_t queued;           //  tasks in lanes
    cf_queue_t available;    //  workers with credit (avail_node)
    //  SHARED workers (shared_node), and how many of them are available. A
    //  change that may let one of them use a WANT (a task queued, a shared
    //  worker at credit 0 or holding less) sets want_due; the dispatch then
    //  looks once.
    cf_queue_t shared;
    size_t shared_available;
    bool want_due;
    cf_idmap_t *fn_table;    //  name hash -> first cf_broker_fn_t of the chain
    uint64_t next_fn_id;
    uint32_t serve_all;     //  workers with no list (they serve every function)
    cf_queue_t unserved;    //  functions with queued tasks and no worker (unserved_node)
    //  Queued suspects (CF_BROKER_SUSPECT), oldest first, apart from their
    //  clients' queues so that one waiting for an empty worker holds no
    //  other task back; each goes alone to a worker that holds nothing, or,
    //  after CF_BROKER_SUSPECT_WAIT_MS without one, back to its client's
    //  queue as an ordinary task.
    cf_queue_t suspects;
    cf_queue_t flush;           //  clients with unsent items (flush_node)
    bool gathering;             //  the last flush held a client's results back to gather more
    cf_idmap_t *tasks;          //  broker id -> task, queued or on a worker
    cf_broker_task_t **heap;    //  running tasks with a timeout, by deadline
    size_t heap_size, heap_cap;
    size_t running;    //  tasks on workers whose client waits
    size_t blocked_workers;
    int64_t next_heartbeat_ms;
    bool terminated;
    cf_broker_stats_t stats;
    char client_endpoint[256];    //  bound, a "*" port resolved
    char worker_endpoint[256];
    //  What libzmq says of each ROUTER's listener (zmq_socket_monitor,
    //  ZMQ_EVENT_ACCEPT_FAILED only): [0] the clients', [1] the workers'.
    //  NULL when not watching: it could not be made, or a failure was just
    //  reported and the monitor waits till monitor_rearm_ms (0: never).
    void *ctx;
    void *monitors[2];
    int64_t monitor_rearm_ms[2];
    uint64_t monitor_generation;    //  names each arming's inproc endpoint
} cf_broker_state_t;

static inline const char *cf_broker_task_function(const cf_broker_task_t *task)
{
    return task->lane->fn->name;
}

static inline size_t cf_broker_task_function_len(const cf_broker_task_t *task)
{
    return task->lane->fn->len;
}

//  The function as the client sent it and the worker gets it: cf.chunk for
//  a chunk, else the function it is routed by.
static inline cf_proto_str_t cf_broker_task_wire_function(const cf_broker_task_t *task)
{
    if (task->marks & CF_BROKER_CHUNK)
        return (cf_proto_str_t){ CF_PROTO_CHUNK_FUNCTION, sizeof CF_PROTO_CHUNK_FUNCTION - 1 };
    return (cf_proto_str_t){ task->lane->fn->name, task->lane->fn->len };
}

//  The command's name for logs ("SUBMIT"), "?" for none.
static inline const char *cf_broker_command_name(cf_msg_type_t type)
{
    const char *name = cf_proto_command_name(type);
    return name ? name : "?";
}

//  True when one more debug line about a peer event may be logged now
//  (cf-broker --verbose). Debug is checked first, so with it off the
//  limiter costs nothing on the hot path.
static inline bool cf_broker_log_event(cf_broker_state_t *self)
{
    return cf_log_enabled(CF_LOG_DEBUG)
           && cf_log_limit_allow(&self->event_log, "broker", "peer events");
}

//  True when one more warning about a task that cannot go on (a peer sent
//  what cannot be forwarded) may be logged now.
static inline bool cf_broker_log_task(cf_broker_state_t *self)
{
    return cf_log_enabled(CF_LOG_WARN)
           && cf_log_limit_allow(&self->task_log, "broker", "task warnings");
}

// ---------------------------------------------------------------------------
//  cf_broker_state.c

//  The state for config with both sockets made (config->socket_setup run)
//  and bound, in ctx; NULL with cf_last_error(). On the actor's thread.
cf_broker_state_t *cf_broker_state_new(void *ctx, const cf_broker_config_t *config);
//  Says DISCONNECT to every peer, drops what is left and frees the state,
//  whole or half built. Safe with NULL.
void cf_broker_state_destroy(cf_broker_state_t **self);
//  The counters now.
void cf_broker_state_stats(cf_broker_state_t *self, cf_broker_stats_t *stats);
//  Reads what monitor i (of self->monitors) has: a failed accept is
//  logged with its cause ("Too many open files") and what to do, and the
//  monitor rests CF_BROKER_ACCEPT_LOG_MS. Read it whenever it has
//  something: libzmq blocks its I/O thread on a monitor that is not read.
void cf_broker_state_monitor_read(cf_broker_state_t *self, int i);
//  Arms again a monitor whose rest is over; one that cannot be armed for
//  want of a descriptor means the broker is at its limit still: logged so.
void cf_broker_state_monitor_check(cf_broker_state_t *self, int64_t now);

// ---------------------------------------------------------------------------
//  cf_broker_task.c

//  A new queued task of client from a SUBMIT item, in the broker's task
//  map and the client's; NULL when out of memory (nothing kept).
cf_broker_task_t *cf_broker_task_new(cf_broker_state_t *self, cf_broker_client_t *client,
                                     const cf_proto_task_t *item);
//  Frees a task that is in no queue or running list (unwatched, unmapped).
void cf_broker_task_free(cf_broker_state_t *self, cf_broker_task_t *task);
//  A WHOLE task's body goes to worker alone, handed to ZeroMQ with a
//  reference of its own. CF_OK or cf_proto_send_body's error.
cf_err_t cf_broker_task_send_whole(cf_broker_state_t *self, cf_broker_task_t *task,
                                   cf_broker_worker_t *worker);
//  A task leaves its client for good (answered): forgotten there too.
void cf_broker_task_finish(cf_broker_state_t *self, cf_broker_task_t *task);
//  Takes a task off its worker's running list.
void cf_broker_task_unassign(cf_broker_state_t *self, cf_broker_task_t *task);
//  Puts an unassigned task back at the front of its lane (a suspect: of
//  the broker's suspects).
void cf_broker_task_requeue(cf_broker_state_t *self, cf_broker_task_t *task);
//  Takes a queued task out of whichever queue holds it.
void cf_broker_task_unqueue(cf_broker_state_t *self, cf_broker_task_t *task);
//  Watches a running task's deadline_ms (the timeout heap). CF_ENOMEM.
cf_err_t cf_broker_task_watch(cf_broker_state_t *self, cf_broker_task_t *task);
//  Stops watching it; safe when not watched.
void cf_broker_task_unwatch(cf_broker_state_t *self, cf_broker_task_t *task);
//  Fails the running tasks whose deadline passed with TimeoutError.
void cf_broker_task_expire(cf_broker_state_t *self, int64_t now);

// ---------------------------------------------------------------------------
//  cf_broker_queue.c

//  The function named name (len bytes, checked by the codec), one more
//  reference to it; NULL when out of memory.
cf_broker_fn_t *cf_broker_fn_get(cf_broker_state_t *self, const char *name, size_t len);
//  Drops a reference; the last one frees it.
void cf_broker_fn_put(cf_broker_state_t *self, cf_broker_fn_t *fn);
//  Frees every function left (the state's end).
void cf_broker_fn_destroy_all(cf_broker_state_t *self);
//  The lane of client for item's function, priority and wait, one more
//  reference to it (a task's); NULL when out of memory.
cf_broker_lane_t *cf_broker_queue_lane(cf_broker_state_t *self, cf_broker_client_t *client,
                                       const cf_proto_task_t *item);
//  Drops a task's reference to its lane; the last one frees it.
void cf_broker_queue_lane_put(cf_broker_state_t *self, cf_broker_lane_t *lane);
//  Queues a task in its lane, at the back (new) or the front (put back);
//  now starts its wait for a worker serving its function.
void cf_broker_queue_push(cf_broker_state_t *self, cf_broker_task_t *task, bool front, int64_t now);
//  Takes a queued task out of its lane.
void cf_broker_queue_remove(cf_broker_state_t *self, cf_broker_task_t *task);
//  True when worker may be sent tasks of fn.
bool cf_broker_queue_serves(const cf_broker_worker_t *worker, const cf_broker_fn_t *fn);
//  The next task for worker, fairly between clients (each turn one task,
//  then the client goes to the back of the ring), highest priority first
//  within a client, only of a function the worker serves; taken out of its
//  lane. NULL when no queued task is one the worker serves.
cf_broker_task_t *cf_broker_queue_pick(cf_broker_state_t *self, cf_broker_worker_t *worker);
//  True when cf_broker_queue_pick would find a task for worker now (it
//  takes nothing).
bool cf_broker_queue_has_for(const cf_broker_state_t *self, const cf_broker_worker_t *worker);
//  Frees the client's queued tasks and detaches its lanes (a lost
//  client); returns how many tasks went.
size_t cf_broker_queue_drop_client(cf_broker_state_t *self, cf_broker_client_t *client);
//  Sets the functions worker serves (names given: that list; not given:
//  every function), replacing what it served. CF_ENOMEM leaves it serving
//  what it did.
cf_err_t cf_broker_queue_set_functions(cf_broker_state_t *self, cf_broker_worker_t *worker,
                                       const cf_proto_names_t *names);
//  The worker goes: it serves nothing from now on.
void cf_broker_queue_clear_functions(cf_broker_state_t *self, cf_broker_worker_t *worker);
//  Fails with NoWorker the queued tasks whose wait for a worker serving
//  their function ended; when anything is unserved.
void cf_broker_queue_expire(cf_broker_state_t *self, int64_t now);

// ---------------------------------------------------------------------------
//  cf_broker_peer.c

//  A printable identity as is, else hex (ZeroMQ's generated ids are binary).
void cf_broker_peer_label(const uint8_t *id, size_t len, char *label, size_t size);
cf_broker_peer_t *cf_broker_peer_find(cf_idmap_t *table, const void *id, size_t len);
//  The peer with that identity, marked as seen at now (any message is a
//  sign of life); NULL when not known.
cf_broker_peer_t *cf_broker_peer_seen(cf_idmap_t *table, const void *id, size_t len, int64_t now);
//  A new client or worker (worker says which) of size bytes, the peer
//  first, zeroed but for its identity and seen at now; in its table and
//  its list. NULL when out of memory.
cf_broker_peer_t *cf_broker_peer_new(cf_broker_state_t *self, bool worker, size_t size,
                                     const void *id, size_t len, int64_t now);
//  Takes the peer out of its table and list; the caller frees it.
void cf_broker_peer_remove(cf_broker_state_t *self, cf_broker_peer_t *peer, bool worker);
//  Sends HEARTBEAT [boot, ivl_ms] to id on sock.
cf_err_t cf_broker_peer_send_heartbeat(cf_broker_state_t *self, void *sock, const void *id,
                                       size_t len);
//  Sends ERROR [ref, text]; a failure is only logged (the next one replaces it).
void cf_broker_peer_send_error(cf_broker_state_t *self, void *sock, const void *id, size_t len,
                               uint64_t ref, const char *text);
//  Counts, logs (debug) and answers (when id is known) a refused message.
void cf_broker_peer_malformed(cf_broker_state_t *self, void *sock, const void *id, size_t len,
                              const char *text);
//  Refuses a valid message of a type this side never takes (READY from a
//  client): malformed, "unexpected READY from a client".
void cf_broker_peer_unexpected(cf_broker_state_t *self, void *sock, const void *id, size_t len,
                               cf_msg_type_t type);
//  Answers a peer the broker does not know: HEARTBEAT, then ERROR text
//  (none when NULL).
void cf_broker_peer_unknown(cf_broker_state_t *self, void *sock, const void *id, size_t len,
                            const char *text);
//  Reads what sock has, up to CF_BROKER_READ_BUDGET messages, and hands
//  each to the client or worker module.
void cf_broker_peer_read(cf_broker_state_t *self, void *sock);
//  Heartbeats every peer and loses those silent (or unreachable) for the
//  liveness period; once an interval.
void cf_broker_peer_heartbeat(cf_broker_state_t *self, int64_t now);

// ---------------------------------------------------------------------------
//  cf_broker_client.c

//  One message from a client (routing id id).
void cf_broker_client_on_message(cf_broker_state_t *self, const void *id, size_t len,
                                 cf_proto_msg_t *msg);
//  Queues STARTED for client task id; asked: it answers the client (CANCEL,
//  resubmission), so it goes out at once.
void cf_broker_client_started(cf_broker_state_t *self, cf_broker_client_t *client, uint64_t id,
                              bool asked);
//  Answers task cancelled (RESULT status 2) and forgets it.
void cf_broker_client_cancelled(cf_broker_state_t *self, cf_broker_task_t *task);
//  Queues a RESULT with a value, or with an error (strings with a NULL ptr
//  are empty).
void cf_broker_client_result_ok(cf_broker_state_t *self, cf_broker_client_t *client, uint64_t id,
                                const void *value, size_t value_len);
void cf_broker_client_result_error(cf_broker_state_t *self, cf_broker_client_t *client, uint64_t id,
                                   cf_proto_str_t type, cf_proto_str_t message,
                                   cf_proto_str_t function, cf_proto_str_t host, int32_t pid);
//  Queues a runtime error made by the broker (WorkerLost, TimeoutError) for
//  a task whose client waits, naming its worker when it has one.
void cf_broker_client_runtime_error(cf_broker_state_t *self, cf_broker_task_t *task,
                                    const char *type, const char *message);
//  Sends what the outboxes hold; loses clients whose outbox outgrew its
//  bound.
void cf_broker_client_flush_all(cf_broker_state_t *self);
//  Drops the client: its queued tasks and unsent results go, its running
//  tasks are orphaned (their results will be dropped).
void cf_broker_client_lost(cf_broker_state_t *self, cf_broker_client_t *client, const char *reason);

// ---------------------------------------------------------------------------
//  cf_broker_progress.c

//  PROGRESS from worker: each item for a task running on it, whose client
//  reads PROGRESS (SUBMIT flag), becomes that client's latest report of
//  the task; other items are stale (counted as ignored).
void cf_broker_progress_from_worker(cf_broker_state_t *self, cf_broker_worker_t *worker,
                                    const cf_proto_msg_t *msg);
//  The result for client task id was queued: its record goes (once its
//  last report is sent, when one waits).
void cf_broker_progress_finished(cf_broker_state_t *self, cf_broker_client_t *client, uint64_t id);
//  True when client has reports not sent.
bool cf_broker_progress_unsent(const cf_broker_client_t *client);
//  Sends client's waiting reports, in as few PROGRESS as the limits allow.
//  CF_OK, or the refused send's error (what is left waits).
cf_err_t cf_broker_progress_flush(cf_broker_state_t *self, cf_broker_client_t *client);
//  Frees client's records (the client is lost).
void cf_broker_progress_drop_client(cf_broker_state_t *self, cf_broker_client_t *client);

// ---------------------------------------------------------------------------
//  cf_broker_stats.c

//  Answers a STATS request from id: the counters, and the lists flags asks
//  for (CF_PROTO_STATS_*).
void cf_broker_stats_reply(cf_broker_state_t *self, const void *id, size_t len, uint32_t flags);

// ---------------------------------------------------------------------------
//  cf_broker_stop.c

//  STOP from a client: queued tasks are answered cancelled, running ones
//  are asked of their worker (CF_BROKER_STOP_ASKED).
void cf_broker_stop_client(cf_broker_state_t *self, cf_broker_client_t *client,
                           const cf_proto_msg_t *msg);
//  A task marked STOP_ASKED leaves its worker without an answer: lost
//  (vanished, or its process died; ran: its supervisor saw it running
//  then) fails it with Interrupted; a DISCONNECT's hand-back (it never
//  ran) answers it cancelled. The task is finished either way.
void cf_broker_stop_release(cf_broker_state_t *self, cf_broker_task_t *task, bool lost, bool ran);

// ---------------------------------------------------------------------------
//  cf_broker_worker.c

//  One message from a worker (routing id id).
void cf_broker_worker_on_message(cf_broker_state_t *self, const void *id, size_t len,
                                 cf_proto_msg_t *msg);
//  A client asked to cancel task, which is on a worker. True when the
//  worker was asked (it answers RESULT cancelled or STARTED); false when
//  the task has begun, or its worker cannot cancel: then it runs on.
bool cf_broker_worker_cancel(cf_broker_state_t *self, cf_broker_task_t *task);
//  Makes workers whose refusal wait ended by now available again.
void cf_broker_worker_unblock(cf_broker_state_t *self, int64_t now);
//  The worker is gone. lost: it vanished (heartbeats, ROUTER says gone,
//  reported dead), so what it held used one attempt; otherwise it said
//  DISCONNECT and what it held was never run.
void cf_broker_worker_remove(cf_broker_state_t *self, cf_broker_worker_t *worker,
                             const char *reason, bool lost);
//  The same, for a lost worker whose supervisor said what it ran when it
//  died (died NULL: not known, as cf_broker_worker_remove).
void cf_broker_worker_remove_died(cf_broker_state_t *self, cf_broker_worker_t *worker,
                                  const char *reason, bool lost, const cf_broker_died_t *died);
//  Puts worker on the available list while it has credit and is not
//  blocked, and takes it off otherwise.
void cf_broker_worker_set_available(cf_broker_state_t *self, cf_broker_worker_t *worker);

// ---------------------------------------------------------------------------
//  cf_broker_dispatch.c

//  Hands queued tasks to workers with credit: idle threads first, then
//  prefetch slots; then what SHARED workers are owed.
void cf_broker_dispatch(cf_broker_state_t *self);

// ---------------------------------------------------------------------------
//  cf_broker_shared.c: SHARED workers grant every slot themselves

//  Answers a SHARED worker's READY (WANT, n possibly 0: the acknowledgement).
void cf_broker_shared_ack(cf_broker_state_t *self, cf_broker_worker_t *worker);
//  A SHARED worker's CREDIT arrived: its WANT is answered; credit nothing
//  waiting can use goes back (REFUND).
void cf_broker_shared_granted(cf_broker_state_t *self, cf_broker_worker_t *worker);
//  After a dispatch looked at a SHARED worker: a WANT is due at credit 0,
//  credit left that nothing waiting can use goes back.
void cf_broker_shared_settle(cf_broker_state_t *self, cf_broker_worker_t *worker);
//  WANT to every SHARED worker at credit 0, not asked yet, that a waiting
//  task could go to (run when self->want_due says something changed).
void cf_broker_shared_wants(cf_broker_state_t *self);
//  With nothing queued: every available SHARED worker's credit goes back.
void cf_broker_shared_refund_idle(cf_broker_state_t *self);

#endif

//  The worker's private header: the state the worker's modules share and
//  the functions they call in each other. Nothing outside worker/cf_worker*.c
//  includes it; the public face is cf_worker.h.
//
//  The modules (docs/architecture.md has the map), one prefix each:
//    cf_worker.c          the handle (cf_worker_* of cf_worker.h): new,
//                         wait, ended, abandon, destroy
//    cf_worker_exec.c     cf_worker_exec_*: the task record (new, free) and
//                         the execution threads that run tasks
//    cf_worker_send.c     cf_worker_send_*: what the actor sends: READY,
//                         FUNCTIONS, STARTED, PROGRESS, RESULT batches,
//                         tasks handed back, heartbeats, DISCONNECT; the
//                         prefetch (CREDIT, trimming what stalls)
//    cf_worker_recv.c     cf_worker_recv_*: reading the socket: TASK,
//                         CANCEL, STOP (and the deadlines of stopped tasks
//                         in a worker process), HEARTBEAT, ERROR,
//                         DISCONNECT; announcing again, a broker gone
//    cf_worker_actor.c    cf_worker_actor_*: the actor's thread and its
//                         loop, the socket's life (open, a fresh one for a
//                         lost broker), collecting results, the end; an
//                         executor acting for the sleeping actor (deliver)
//    cf_worker_progress.c progress reports of running tasks (a module with
//                         its own header, cf_worker_progress.h)
//
//  This header does not include cf_worker.h: cf_worker.c includes both,
//  and a private header that included the public one would make the module
//  cf_worker depend on itself through cf_worker_int, a cycle
//  tools/check_layers.py refuses (the broker has no cf_broker.c for that
//  reason). It repeats cf_worker.h's typedef of cf_worker_t instead, the
//  only thing it needs from there (C11 allows the same typedef twice).
//
//  The worker actor (see cf_worker.h): one DEALER to the broker, N
//  execution threads. With several brokers, one actor thread still, with
//  one link (a cf_worker_actor_t, all the per-connection state below) per
//  broker and one budget of slots they share (cf_worker_budget_t;
//  cf_worker_send_grants; docs/architecture.md, "A worker shared by
//  several brokers"); each task remembers its link.
//
//  Design note. The actor thread owns the socket and everything about the
//  broker (credit, heartbeats, boot id, what is still to send); execution
//  threads own nothing but the task they run. They meet in two lists under
//  one mutex: the queue (actor -> executors, with a condition variable) and
//  the outbox (executors -> actor). An executor that puts a result into an
//  empty outbox wakes the actor (cf_actor_wake: the eventfd it polls next
//  to its socket), or sends the result itself (below), so a burst of
//  finished tasks costs one syscall and becomes one RESULT batch. An inproc
//  PAIR per executor would cost a zmq socket and a message copy per result
//  and make the actor poll N + 1 sockets, for nothing the eventfd does not
//  do. cf_worker_destroy's request comes down the actor's pipe ($TERM).
//
//  One allocation per task: the task record carries its function name and
//  arguments and, once run, its outcome, and moves queue -> executor ->
//  outbox -> actor -> freed once its RESULT was handed to zmq. A refused
//  send (EAGAIN: the broker unreachable at the high-water mark) leaves the
//  records where they are; the actor waits for ZMQ_EVENTS to say POLLOUT
//  and retries.
//
//  Heartbeats come from the actor, so a task computing for minutes never
//  makes the worker look dead; the broker is judged on what it sends.
//
//  Results go out from the executor that made them when it can, and when
//  it is the only one working: an executor finishing the only task in hand
//  acts for the sleeping actor (cf_actor_enter, see cf_actor.h), does its
//  after-result work itself (collect, flush, prefetch) and wakes it only
//  when something is left for it. The actor polls the socket's ZMQ_FD as a
//  plain descriptor, not with zmq_poll (which would use the socket while
//  sleeping), and checks ZMQ_EVENTS first: an executor's send may have
//  consumed the descriptor's signal, so an executor that sent also checks
//  ZMQ_EVENTS and wakes the actor if a message waits.

#ifndef CF_WORKER_INT_H
#define CF_WORKER_INT_H

#include "cf_worker_progress.h"

#include "cf_actor.h"
#include "cf_link.h"
#include "cf_proto.h"
#include "cf_queue.h"
#include "cf_registry.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cf_worker cf_worker_t;    //  as in cf_worker.h

//  Prefetch (cf_worker_send.c): at most this many tasks held beyond the
//  threads, and about this much work (per thread) queued locally.
#define CF_WORKER_PREFETCH_MAX       256
#define CF_WORKER_PREFETCH_BUDGET_US 2000
//  Tasks queued while every thread ran the same tasks this long: those
//  tasks are long, whatever the mean says (see cf_worker_send_check_stall).
#define CF_WORKER_STALL_MS           10
//  A task's begin is announced (STARTED) within about this long: the actor
//  looks that often while tasks are queued or begun unannounced.
#define CF_WORKER_BEGUN_HOLD_MS      10
//  As in cf_worker.h (a macro may be defined twice alike).
#define CF_WORKER_MAX_BROKERS        16
//  Short tasks run in the actor (cf_worker_exec_inline): by default those
//  of a worker whose tasks ran at most this long on average (as in
//  cf_worker.h); the actor runs at most CF_WORKER_INLINE_BUDGET times that
//  in one go before the executors get the rest.
#define CF_WORKER_INLINE_MAX_US      50
#define CF_WORKER_INLINE_BUDGET      20

typedef struct cf_worker_task {
    cf_queue_node_t node;          //  in the queue, the outbox or pending
    cf_queue_node_t begun_node;    //  in begun from its start until announced or done
    uint64_t id;                   //  the broker's id: unique only with link
    unsigned link;                 //  the broker it came from (index in w->endpoints)
    const char *function;          //  NUL-terminated, in data
    size_t function_len;
    const uint8_t *args;    //  in data, or in args_body
    size_t args_len;
    bool holds_body;         //  args are in args_body, the TASK body they came in
    zmq_msg_t args_body;     //  holds_body: a reference to it (cf_proto_msg_hold)
    cf_outcome_t outcome;    //  once run
    int64_t run_us;          //  how long it ran
    bool out_of_memory;      //  cf_registry_run could not produce an outcome
    bool lone;               //  CF_TASK_LONE: all its client has at the broker
    //  Stopping (STOP; see "Stopping" in cf_worker_recv.c). stop is lent to the task
    //  (cf_run_ctx_t); run_node and stop_deadline_ms are under lock.
    atomic_bool stop;
    cf_queue_node_t run_node;    //  in runs while its function runs
    int64_t stop_deadline_ms;    //  stop_kills_process: end the process then; 0 none
    uint32_t stop_grace_ms;      //  the grace that set it, for the error
    char data[];
} cf_worker_task_t;

struct cf_worker {
    //  Set before any thread starts, read-only afterwards.
    char *endpoint;    //  endpoints[0]
    char *endpoints[CF_WORKER_MAX_BROKERS];
    unsigned endpoint_count;
    uint64_t limit;              //  several brokers: threads + prefetch allowance; else 0
    uint64_t shared_prefetch;    //  several brokers: the allowance
    char identity[256];
    int threads;
    int ivl_ms;
    int liveness;
    int max_tasks;
    bool exit_on_broker_loss;
    void (*initializer)(void *arg);
    void *initarg;
    cf_err_t (*socket_setup)(void *socket, const char *endpoint, void *arg);
    void *socket_setup_arg;
    _Atomic uint64_t *running_ids;    //  config's, or NULL
    bool announce_functions;
    bool stop_kills_process;
    atomic_int executor_seq;    //  hands each executor its slot
    void *ctx;
    bool own_ctx;
    int pid;
    pthread_t *executors;
    int executors_started;
    //  The actor may run short tasks itself (one broker, threads, no
    //  initializer); the watch thread then stands by (cf_worker_exec_watch).
    bool inline_allowed;
    int64_t inline_max_us;       //  the longest mean run time that runs there
    int64_t inline_budget_us;    //  the most run there in one go
    pthread_t actor_thread;      //  set by the actor before any task exists
    pthread_t watch;
    bool watch_started;
    pthread_cond_t watch_cond;
    //  Set by the actor's thread before it reports ready and before any
    //  task exists, so an executor never sees it unset; NULL after destroy.
    //  Its io mutex guards the actor's state (cf_worker_actor_t); an executor
    //  acting for the actor takes it before lock.
    cf_actor_t *actor;

    pthread_mutex_t lock;
    pthread_cond_t work;     //  executors: a task queued, or stopping
    pthread_cond_t state;    //  ended
    //  Under lock.
    cf_queue_t queue;       //  tasks to run
    cf_queue_t outbox;      //  tasks run, for the actor
    cf_queue_t begun;       //  tasks running whose start the broker was not told
    cf_queue_t runs;        //  tasks whose function runs (run_node): STOP finds them
    int running;            //  tasks being run, the actor's included
    int64_t progress_us;    //  an executor last took or finished a task
    bool stopping;          //  executors leave once the queue is empty
    //  Short tasks run in the actor (cf_worker_exec_inline).
    bool inline_due;            //  tasks were queued for the actor, no executor told
    int64_t inline_since_us;    //  the actor's task began then; 0: it runs none
    int64_t inline_last_us;     //  the actor last ran tasks
    bool inline_stuck;          //  its task outran CF_WORKER_STALL_MS: executors take the rest
    bool watch_resting;         //  the watch sleeps until the actor runs tasks again
    bool ended;                 //  the actor is done
    cf_err_t end_reason;        //  CF_ESTOP, CF_ESHUTDOWN; CF_OK for a destroy

    //  Counters (cf_worker_counters_t), under lock.
    uint64_t held, max_held;
    uint64_t taken[CF_WORKER_MAX_BROKERS], granted[CF_WORKER_MAX_BROKERS];

    //  Progress reports of running tasks, one set per broker (a task's
    //  reports go where it came from), under locks of their own
    //  (cf_worker_progress.h).
    cf_worker_progress_t *progress[CF_WORKER_MAX_BROKERS];
};

typedef struct cf_worker_budget cf_worker_budget_t;

//  The actor's state, on its stack, under the actor's io mutex.
typedef struct cf_worker_actor {
    cf_worker_t *w;
    cf_actor_t *actor;
    void *sock;
    cf_proto_enc_t *enc;
    cf_queue_t pending;    //  results to send, oldest first
    uint64_t in_hand;      //  tasks taken whose result is not sent
    //  What the broker believes we can hold: in_hand plus its credit for
    //  us. READY sets it, CREDIT raises it, results and tasks move slots
    //  between the two without changing it.
    uint64_t grant;
    double mean_run_us;      //  moving mean of run times; < 0 until measured
    bool prefetching;        //  we asked for more than threads (CREDIT)
    bool prefetched_once;    //  ever did: a READY of ours may race tasks
    uint64_t accepted;       //  tasks taken in all (max_tasks)
    uint64_t declined;       //  tasks not taken (handed back by DISCONNECT)
    bool accepting;
    bool term_asked;     //  $TERM came down the pipe
    bool terminating;    //  destroy: finish, send, leave
    bool announce;       //  READY to send
    bool blocked;        //  a send was refused: wait for POLLOUT
    bool broker_lost;
    bool done;
    cf_err_t end_reason;
    uint64_t boot;        //  broker's boot id, 0 until its first heartbeat
    int broker_ivl_ms;    //  what the broker announced, 0 until then
    int64_t last_recv_ms;
    int64_t last_send_ms;
    int64_t give_up_ms;    //  terminating: drop unsent results after this; 0 unset
    //  The socket's life cycle (see s_open, s_reopen in cf_worker_actor.c).
    int sock_fd;                  //  its ZMQ_FD
    unsigned generation;          //  sockets opened before this one
    cf_link_backoff_t reopen;     //  when a lost broker gets a fresh socket
    int64_t announce_asked_ms;    //  the last sign that set announce
    uint64_t reintroductions;     //  READYs asked for after the first
    bool introduced;              //  a fresh socket announced us since the loss
    uint64_t functions_sent;      //  registry generation the broker was last told
    bool functions_due;           //  more functions registered since: FUNCTIONS to send
    //  A broker older than routing refuses a READY with a function list as
    //  malformed: list_pending says one went out and no TASK came since;
    //  list_refused that this broker refused it, so READY goes without one
    //  (every function, as cf/1) until a broker with another boot id.
    bool list_pending;
    bool list_refused;
    int64_t stop_deadline_ms;    //  the earliest stop deadline armed; 0 none
    //  Which broker: its endpoint and index (0 with one broker).
    const char *endpoint;
    unsigned link;
    //  Several brokers (NULL: one, classic credit): the shared slots, and
    //  this broker's part of them (see cf_worker_send_grants).
    cf_worker_budget_t *budget;
    uint64_t credit_out;    //  what it may still send, by our grants since its READY's answer
    //  Grants it had when we sent READY (which sets its credit to 0):
    //  tasks it sent before reading that READY use these, until the WANT
    //  that answers the READY.
    uint64_t credit_stale;
    uint64_t wanted;    //  what its last WANT asked, less what we granted since
    //  Results in pending kept for this broker while it is lost: finished,
    //  so no longer in in_hand (they hold no slot of the budget; a broker
    //  gone for good would keep them for ever), sent if it comes back.
    uint64_t orphaned;
    unsigned readies_unacked;    //  SHARED READYs sent whose answering WANT did not come
    bool acked;                  //  it answered a SHARED READY: it grants by WANT
    bool ack_warned;             //  said once that it does not
    int64_t ready_sent_ms;       //  the first READY not answered
} cf_worker_actor_t;

//  Several brokers: one actor thread, one link (a cf_worker_actor_t) per
//  broker, and the slots they share.
struct cf_worker_budget {
    cf_worker_actor_t *links;
    unsigned count;
    unsigned next;         //  the link first in turn for a free slot
    double mean_run_us;    //  moving mean of run times over every broker's tasks
    uint64_t accepted;     //  tasks taken from every broker (max_tasks)
};

//  Tasks taken in all, the count max_tasks limits: of this broker, or of
//  every broker when the worker serves several.
static inline uint64_t *cf_worker_accepted(cf_worker_actor_t *a)
{
    return a->budget ? &a->budget->accepted : &a->accepted;
}

static inline cf_worker_task_t *cf_worker_task_of(cf_queue_node_t *node)
{
    return node ? cf_queue_entry(node, cf_worker_task_t, node) : NULL;
}

static inline cf_worker_task_t *cf_worker_pop(cf_queue_t *list)
{
    return cf_worker_task_of(cf_queue_pop_front(list));
}

static inline cf_worker_task_t *cf_worker_front(const cf_queue_t *list)
{
    return cf_worker_task_of(cf_queue_front(list));
}

static inline cf_worker_task_t *cf_worker_next(const cf_queue_t *list, cf_worker_task_t *task)
{
    return cf_worker_task_of(cf_queue_next(list, &task->node));
}

// ---------------------------------------------------------------------------
//  cf_worker_exec.c

//  Frees a task record and its outcome.
void cf_worker_exec_task_free(cf_worker_task_t *task);
//  Frees every task of list; returns how many.
size_t cf_worker_exec_clear(cf_queue_t *list);
//  A task record of a TASK item of msg (its function copied into it, and
//  its arguments, unless large enough to be read in msg's body, which the
//  record then keeps until the task has run); NULL when out of memory.
cf_worker_task_t *cf_worker_exec_task_new(cf_proto_msg_t *msg, const cf_proto_task_t *src);
//  Queues task (under lock): at the back, or a lone task (CF_TASK_LONE)
//  after the lone ones at the front, ahead of busier clients' tasks.
void cf_worker_exec_enqueue(cf_worker_t *w, cf_worker_task_t *task);
//  An execution thread (arg is the worker): runs queued tasks until the
//  worker stops and nothing is queued.
void *cf_worker_exec_main(void *arg);
//  Whether tasks taken now should wait for the actor to run them (it is
//  the actor's thread taking them, and the tasks are short) rather than wake
//  an executor. Under lock.
bool cf_worker_exec_inline_wanted(cf_worker_actor_t *a);
//  The actor's thread, between reading and sending: runs the tasks queued
//  for it (inline_due) itself, stepped out of the actor (cf_actor_step_out),
//  a batch at a time; true when more are due after this turn's sends. The
//  executors get them instead when they are more than
//  inline_budget_us of work, or a task outran it.
bool cf_worker_exec_inline(cf_worker_actor_t *a);
//  The watch thread (arg is the worker): when a task the actor runs outruns
//  CF_WORKER_STALL_MS, wakes the executors for the queued tasks and does
//  the actor's turns (heartbeats above all) until it is back.
void *cf_worker_exec_watch(void *arg);

// ---------------------------------------------------------------------------
//  cf_worker_send.c

//  After a send: CF_OK notes the time, EBUSY waits for POLLOUT, anything
//  else is logged (what names the message).
void cf_worker_send_sent(cf_worker_actor_t *a, cf_err_t rc, const char *what);
//  Sends READY if due, FUNCTIONS, STARTED, PROGRESS, then the pending
//  results in as few RESULT messages as the limits allow; stops at the
//  first refused send.
void cf_worker_send_flush(cf_worker_actor_t *a);
//  Answers every task of list unrun with status (BUSY or CANCELLED) in one
//  RESULT and frees them; a refused send puts them back in the queue.
cf_err_t cf_worker_send_unrun(cf_worker_actor_t *a, cf_queue_t *list, cf_status_t status);
//  Asks the broker for what the prefetch wants: more with CREDIT, less by
//  handing queued tasks back (also when stalled) and announcing again.
void cf_worker_send_adjust_prefetch(cf_worker_actor_t *a, bool stalled);
//  True when prefetched tasks wait behind threads that ran the same tasks
//  for CF_WORKER_STALL_MS (the mean run time learns it).
bool cf_worker_send_check_stall(cf_worker_actor_t *a);
//  Sends a HEARTBEAT (a refused one is replaced by the next).
void cf_worker_send_heartbeat(cf_worker_actor_t *a);
//  Sends DISCONNECT with reason, best effort.
void cf_worker_send_disconnect(cf_worker_actor_t *a, const char *reason);
//  Hands task id back unrun (RESULT BUSY): a broker sent past our credit.
void cf_worker_send_hand_back(cf_worker_actor_t *a, uint64_t id);
//  Several brokers: gives the free slots (limit minus tasks held minus the
//  credit every broker may still use) to the brokers that asked (WANT),
//  one slot at a time in turn, each at most what it asked, by CREDIT.
void cf_worker_send_grants(cf_worker_budget_t *b);
//  Several brokers: tasks queued while every thread ran the same tasks for
//  CF_WORKER_STALL_MS go back to their brokers unrun (BUSY), and the mean
//  run time learns that tasks are long, so no slot beyond the threads is
//  granted until they are short again.
void cf_worker_send_shared_stall(cf_worker_budget_t *b);
//  Several brokers: forgets what this broker could send (it is lost,
//  restarted, or we opened a fresh connection): its slots are free again.
void cf_worker_send_forget_credit(cf_worker_actor_t *a);

// ---------------------------------------------------------------------------
//  cf_worker_recv.c

//  Stopped tasks in a worker process that outran their grace: answered
//  Interrupted, and the worker ends (CF_ETIMEDOUT).
void cf_worker_recv_check_stops(cf_worker_actor_t *a, int64_t now);
//  Asks for one READY (a sign the broker forgot us; why is logged); an
//  "unknown worker" within an interval of the last sign is not a new one.
void cf_worker_recv_announce(cf_worker_actor_t *a, bool unknown_worker, const char *why);
//  The broker is gone (silent, or said DISCONNECT): the worker waits for
//  it, or ends (exit_on_broker_loss).
void cf_worker_recv_broker_gone(cf_worker_actor_t *a, const char *why);
//  Reads and handles what the socket has, up to a budget.
void cf_worker_recv_read(cf_worker_actor_t *a);

// ---------------------------------------------------------------------------
//  cf_worker_actor.c

//  Our heartbeat interval, or the broker's when shorter.
int cf_worker_actor_send_ivl(const cf_worker_actor_t *a);
//  Moves finished tasks to pending; reacts to destroy. Returns the tasks
//  still running or queued.
size_t cf_worker_actor_collect(cf_worker_actor_t *a);
//  An executor put a result into an empty outbox: does the actor's
//  after-result work when it sleeps, else wakes it.
void cf_worker_actor_deliver(cf_worker_t *w);
//  The watch: the actor runs a long task stepped out; does its turn (read,
//  collect, send, heartbeats) in its place.
void cf_worker_actor_tend(cf_worker_t *w);
//  The actor's thread (cf_actor_new's body; arg is the worker).
void cf_worker_actor_main(cf_actor_t *pipe, void *arg);

#endif

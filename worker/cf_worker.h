//  The worker actor: one DEALER to a broker's worker endpoint, N execution
//  threads. The actor thread does all I/O (so heartbeats flow while a task
//  computes for minutes); execution threads take tasks from an internal
//  queue, run them with cf_registry_run, and hand outcomes back through an
//  outbox the actor drains. It announces its capacity with READY, and when
//  the broker's boot id changes (a restarted broker) it announces again.
//
//  Used by cf-worker (threads mode, and each child of --procs) and by the
//  CF_PROCESSES executor's worker processes.
//
//  Several brokers (endpoint_count > 1): one DEALER per broker, each with
//  its own heartbeats, boot id and reconnection, and one budget of slots
//  shared by all: at every moment the tasks held (taken, result not sent)
//  plus the credit every broker may still use stay within the limit
//  (threads + prefetch allowance). READY says SHARED with credit 0; a
//  broker asks with WANT and gets free slots by CREDIT, in turn with the
//  others, so none keeps the worker (docs/protocol.md, "Shared workers").
//
//  Credit (see cf_broker.h): READY states the slots free now (threads minus
//  tasks held, capped by what max_tasks still allows); every RESULT item
//  gives one back. Tasks that arrive when the worker takes no more
//  (max_tasks reached, stopping) are not run and not answered: the
//  DISCONNECT that ends the worker hands them back, unrun, without using a
//  retry. Results that cannot be sent (broker unreachable) stay in the
//  outbox and are retried; only a destroy that cannot reach the broker for
//  liveness intervals drops them, with a warning.

#ifndef CF_WORKER_H
#define CF_WORKER_H

#include "cfutures.h"

#include <stdatomic.h>
#include <stdint.h>

typedef struct cf_worker cf_worker_t;

//  The most brokers one worker serves.
#define CF_WORKER_MAX_BROKERS 16

typedef struct {
    const char *endpoint;              //  broker worker endpoint (connect)
    int threads;                       //  execution threads (>= 1)
    void *zmq_context;                 //  NULL: own context
    const char *identity;              //  routing id; NULL: random
    int heartbeat_ivl_ms;              //  0: CF_HEARTBEAT_IVL_MS
    int heartbeat_liveness;            //  0: CF_HEARTBEAT_LIVENESS
    void (*initializer)(void *arg);    //  run in each execution thread first
    void *initarg;
    int max_tasks;    //  stop after this many tasks (0: never)
    //  true: a lost broker ends the worker (pool children die with their
    //  executor); false: reconnect and wait for it (cf-worker).
    bool exit_on_broker_loss;
    //  Called on the actor's thread with each DEALER before it connects to
    //  endpoint (one of the brokers: CURVE options, which differ per
    //  broker, ...); a non-OK return fails cf_worker_new. NULL: none.
    cf_err_t (*socket_setup)(void *socket, const char *endpoint, void *arg);
    void *socket_setup_arg;
    //  threads + 1 slots, or NULL: each execution thread writes the broker
    //  id of the task it runs into its slot, and 0 when done; the last slot
    //  is the actor's thread's, for the short tasks it runs (no_inline). cf_procs puts them
    //  in memory it shares with the process, so that when the process dies
    //  it can tell the broker which task was running (and which were not).
    _Atomic uint64_t *running_ids;
    //  true: READY names the functions this process has registered
    //  (cf_registry_names), and FUNCTIONS follows whenever more get
    //  registered, so the broker sends only tasks this worker can run
    //  (cf-worker). false: it serves every function, as cf/1 workers did,
    //  and a task of a function it lacks fails with UnknownFunction (the
    //  pools' own workers, which share their executor's functions).
    bool announce_functions;
    //  What a STOP does to a running task that ignores it (docs/protocol.md,
    //  STOP). false: nothing more than its stop flag (threads cannot be
    //  killed safely: cf-worker's threads mode). true: grace_ms after the
    //  request a task still running is answered Interrupted and the worker
    //  ends with CF_ETIMEDOUT, its executor still inside the task: the
    //  process must then cf_worker_abandon and _exit, which kills the task
    //  (cf_procs's children, one thread each, set it), never destroy.
    bool stop_kills_process;
    //  Several brokers: endpoints[0..endpoint_count-1] (then endpoint is
    //  not used), each served, the slots shared (see the top). With 0 or 1
    //  the worker serves endpoint (or endpoints[0]) alone, with the classic
    //  credit of cf/1. max_tasks then counts the tasks of every broker.
    const char *const *endpoints;
    int endpoint_count;
    //  Several brokers: tasks held beyond threads at most (the prefetch
    //  allowance; within it the worker prefetches by measured run time, as
    //  with one broker). 0: threads; < 0: none.
    int shared_prefetch;
    //  true: every task runs on an execution thread. false (default): when
    //  the tasks are short (a mean of at most inline_max_us) and no
    //  execution thread is busy, the actor's thread runs the ones it just
    //  read, saving two thread hand-offs per task (docs/architecture.md,
    //  "Short tasks run where they arrive"). Its task takes an execution
    //  thread's place: threads tasks at most run at once. Never with
    //  several brokers or an initializer (it prepares the execution threads
    //  only).
    bool no_inline;
    int inline_max_us;    //  0: 50
} cf_worker_config_t;

//  What a worker held and took, for tests and the exit line of cf-worker.
typedef struct {
    uint64_t held;        //  tasks taken whose result is not sent, at the last look
    uint64_t max_held;    //  the most held at once
    //  Several brokers: threads + allowance, which held plus every broker's
    //  credit never passes. One broker: 0 (classic credit).
    uint64_t limit;
    int brokers;
    struct {
        const char *endpoint;    //  borrowed: lives as long as the worker
        uint64_t taken;          //  tasks taken from it
        uint64_t granted;        //  slots granted to it by CREDIT (several brokers)
    } broker[CF_WORKER_MAX_BROKERS];
} cf_worker_counters_t;

//  Starts the actor and its threads; returns once connected (in zmq's
//  sense) and READY was sent. NULL with cf_last_error().
cf_worker_t *cf_worker_new(const cf_worker_config_t *config);
//  Blocks until the worker ended by itself (max_tasks reached, broker lost
//  with exit_on_broker_loss, key refused) or timeout_ms passed: CF_OK or
//  CF_ETIMEDOUT.
cf_err_t cf_worker_wait(cf_worker_t *worker, int timeout_ms);
//  Why the worker ended by itself: CF_OK while it has not; CF_ESTOP when
//  max_tasks was reached (every result sent, DISCONNECT said); CF_ESHUTDOWN
//  when the broker was lost or said DISCONNECT with exit_on_broker_loss
//  (tasks may still be running: a process may _exit instead of destroying);
//  CF_EAUTH when the broker refused our key (revoked since we connected);
//  CF_ETIMEDOUT when a task asked to stop overran its grace with
//  stop_kills_process (its RESULT Interrupted and DISCONNECT said: end the
//  process now, see cf_worker_abandon).
cf_err_t cf_worker_ended(cf_worker_t *worker);
//  For a process about to _exit after its worker ended with CF_ETIMEDOUT:
//  gives the worker's last messages up to flush_ms to leave (its own zmq
//  context is terminated on a helper thread), joins and frees nothing, so
//  that an execution thread stuck in a task never blocks the exit. Does
//  nothing while the worker runs, or with a caller's context.
void cf_worker_abandon(cf_worker_t *worker, int flush_ms);
//  The routing id the worker uses with the broker (borrowed, lives as long
//  as the worker).
const char *cf_worker_identity(cf_worker_t *worker);
//  Copies the worker's counters into *out. Safe from any thread.
void cf_worker_counters(cf_worker_t *worker, cf_worker_counters_t *out);
//  One line of them: "held at most 3 tasks (limit 3); taken: tcp://h:5556
//  812, tcp://h:5558 790". Safe from any thread. cf_worker_destroy logs it
//  (info) once every task ended.
void cf_worker_counters_line(cf_worker_t *worker, char *line, size_t size);
//  Stops taking tasks, finishes the running ones and sends their results,
//  says DISCONNECT, joins every thread and frees. Safe with NULL and twice.
void cf_worker_destroy(cf_worker_t **worker);

#endif

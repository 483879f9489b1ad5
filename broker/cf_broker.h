//  The broker actor: one ROUTER facing clients, one facing workers, a queue
//  per client served round-robin (one big batch never starves another
//  client), credit-based dispatch (a worker announces how many tasks it can
//  take; each result returns one), heartbeats both ways, retries of tasks
//  held by lost workers, cancellation of tasks not started, bounded queues
//  that answer BUSY. cf-broker is this actor as a daemon; CF_PROCESSES runs
//  it inside the client process.
//
//  Design note: the actor thread (core/cf_actor) creates, binds and owns
//  both sockets and all state. Other threads talk to it through cf_broker_*
//  calls on its pipe (cf_actor_call), never by touching its state.
//
//  What peers can rely on (docs/protocol.md has the full text):
//  - Clients are known by routing id from their first SUBMIT, workers from
//    READY. Any other message from a peer the broker does not know is
//    answered with HEARTBEAT [boot, ivl_ms] and then ERROR [0, "unknown
//    client"] or ERROR [0, "unknown worker"]: a client then resubmits what it
//    still waits for, a worker announces itself again with READY. (STATS
//    from an unknown client gets HEARTBEAT and the STATS reply, no ERROR.)
//  - Every task a client submits gets exactly one RESULT (value, error,
//    cancelled or busy) unless the client is lost first. BUSY (status 3)
//    comes at once for tasks over the queue limits; resubmit them later.
//  - STARTED carries the ids of tasks handed to a worker; it is sent once
//    per dispatch (again after a retry) and in reply to CANCEL of a task
//    that has started. RESULT status 2 answers CANCEL of a queued task.
//  - Resubmitting a client task id the broker still holds is harmless: a
//    queued one is left alone, a started one is answered with STARTED.
//  - Workers: READY's credit is the number of tasks the worker can take now;
//    every RESULT item returns one slot (whatever its id), CREDIT adds
//    slots. Tasks come in TASK batches. A worker may hand a task back
//    unrun with RESULT status 2 or 3: it is requeued without using a retry.
//  - Peers must send something at least every ivl_ms the broker announces;
//    silent for liveness intervals, they are lost.

#ifndef CF_BROKER_H
#define CF_BROKER_H

#include "cfutures.h"

#include <stddef.h>

typedef struct cf_broker cf_broker_t;

//  Called for each ROUTER before it binds (CURVE options, ...): is_clients
//  says which side. It runs on the broker's thread while cf_broker_new
//  waits. A non-OK return fails cf_broker_new with that code.
typedef cf_err_t(cf_broker_socket_fn)(void *socket, bool is_clients, void *arg);

typedef struct {
    const char *client_endpoint;     //  bind; "tcp://127.0.0.1:*" picks a port
    const char *worker_endpoint;     //  bind
    void *zmq_context;               //  NULL: the broker makes its own
    int heartbeat_ivl_ms;            //  0: CF_HEARTBEAT_IVL_MS
    int heartbeat_liveness;          //  0: CF_HEARTBEAT_LIVENESS
    size_t max_queued;               //  tasks queued in all; 0: CF_BROKER_MAX_QUEUED
    size_t max_queued_per_client;    //  0: same as max_queued
    //  How long a task may wait while no connected worker serves its
    //  function (workers that say which functions they serve) before it
    //  fails with NoWorker, unless its SUBMIT gives its own wait_ms.
    //  0: CF_BROKER_NO_WORKER_WAIT_MS.
    uint32_t no_worker_wait_ms;
    cf_broker_socket_fn *socket_setup;    //  NULL: none
    void *socket_setup_arg;
    //  CURVE (cf_auth): every message must come from a connection whose
    //  User-Id role fits the socket (client keys on the client socket,
    //  worker keys on the worker socket). Others are answered ERROR [0,
    //  CF_PROTO_NOT_ALLOWED], counted as refused, logged with the sender's
    //  fingerprint (a warning, at most CF_AUTH_LOG_PER_SEC a second) and
    //  otherwise ignored: no peer state is created.
    bool require_roles;
    //  With require_roles: the allow-lists (borrowed). A connection whose key
    //  a reload removed is cut off at its next message (heartbeats come every
    //  interval): ERROR [0, CF_PROTO_KEY_REVOKED], an audit line, and the
    //  peer dropped (a client's queued tasks, a worker's tasks retried).
    struct cf_auth *auth;
} cf_broker_config_t;

#define CF_BROKER_MAX_QUEUED        (4u * 1024 * 1024)
#define CF_BROKER_NO_WORKER_WAIT_MS 60000u

//  Starts the actor, which binds both endpoints; returns once it is
//  serving. NULL with cf_last_error() ("cannot bind tcp://...: Address in
//  use").
cf_broker_t *cf_broker_new(const cf_broker_config_t *config);
//  Stops the actor (queued tasks are dropped, clients and workers get
//  DISCONNECT) and frees it. Safe with NULL and twice.
void cf_broker_destroy(cf_broker_t **broker);

//  The endpoints actually bound (a "*" port resolved), borrowed.
const char *cf_broker_client_endpoint(cf_broker_t *broker);
const char *cf_broker_worker_endpoint(cf_broker_t *broker);

//  Tells the broker a worker is gone without waiting for heartbeats (the
//  process supervisor saw it exit). identity is the worker's routing id.
//  Its tasks are retried or fail as after missed heartbeats. CF_OK, or
//  CF_ENOTFOUND when no worker has that identity. Thread-safe; from an
//  actor's thread (which must not wait for another) the report goes one
//  way and the answer is CF_OK.
cf_err_t cf_broker_worker_lost(cf_broker_t *broker, const void *identity, size_t len);
//  The same, from a supervisor that read what the dead process ran: the
//  broker ids of the tasks its threads were running (n of them; none when
//  it was between tasks). Only those use a retry (and run alone from then
//  on); the other tasks it held never began, or finished, and go back
//  without using one. running NULL: not known (cf_broker_worker_lost).
cf_err_t cf_broker_worker_died(cf_broker_t *broker, const void *identity, size_t len,
                               const uint64_t *running, size_t n);

typedef struct {
    uint64_t clients, workers;    //  known now
    uint64_t queued;              //  tasks waiting for a worker now
    uint64_t running;             //  tasks on workers whose client waits, now
    uint64_t submitted;           //  tasks accepted into a queue
    uint64_t completed;           //  results with a value sent on
    uint64_t failed;              //  errors sent on: the task's, WorkerLost, TimeoutError
    uint64_t cancelled;           //  queued tasks removed by CANCEL
    uint64_t retried;             //  requeues that used one of a task's retries
    uint64_t lost_workers;        //  workers lost (heartbeats, gone, reported)
    uint64_t busy;                //  tasks refused with BUSY (queue limits)
    uint64_t malformed;           //  messages refused (bad frames, wrong command)
    uint64_t dropped;             //  tasks and results discarded with a lost client
    uint64_t ignored;             //  worker results matching no waiting task
    uint64_t timed_out;           //  tasks failed with TimeoutError (also in failed)
    uint64_t deferred;            //  sends refused (peer at HWM or gone) and kept or requeued
    uint64_t refused;             //  messages from a key of the wrong role (require_roles)
    uint64_t no_worker;           //  tasks failed with NoWorker (also in failed)
} cf_broker_stats_t;
//  A snapshot of counters. CF_OK, CF_ESHUTDOWN when the actor ended (its
//  context was terminated), CF_EINVAL from an actor's thread. Thread-safe.
cf_err_t cf_broker_stats(cf_broker_t *broker, cf_broker_stats_t *stats);

#endif

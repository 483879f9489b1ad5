//  The broker actor: one ROUTER facing clients, one facing workers, a queue
//  per client served round-robin (one big batch never starves another
//  client), credit-based dispatch (a worker announces how many tasks it can
//  take; each result returns one), heartbeats both ways, retries of tasks
//  held by lost workers, cancellation of tasks not started, bounded queues
//  that answer BUSY. cf-broker is this actor as a daemon; CF_PROCESSES runs
//  it inside the client process.
//
//  Design note: the actor thread owns both sockets and all state. Other
//  threads talk to it through cf_broker_* calls that send on an inproc pipe
//  (serialized by a mutex), never by touching its state.

#ifndef CF_BROKER_H
#define CF_BROKER_H

#include "cfutures.h"

#include <stddef.h>

typedef struct cf_broker cf_broker_t;

typedef struct {
    const char *client_endpoint;    //  bind; "tcp://127.0.0.1:*" picks a port
    const char *worker_endpoint;    //  bind
    void *zmq_context;              //  NULL: the broker makes its own
    int heartbeat_ivl_ms;           //  0: CF_HEARTBEAT_IVL_MS
    int heartbeat_liveness;         //  0: CF_HEARTBEAT_LIVENESS
    size_t max_queued;              //  tasks queued in all; 0: CF_BROKER_MAX_QUEUED
    size_t max_queued_per_client;   //  0: same as max_queued
} cf_broker_config_t;

#define CF_BROKER_MAX_QUEUED (4u * 1024 * 1024)

//  Binds both endpoints and starts the actor; returns once it is serving.
//  NULL with cf_last_error() ("cannot bind tcp://...: Address in use").
cf_broker_t *cf_broker_new(const cf_broker_config_t *config);
//  Stops the actor (queued tasks are dropped, clients see the broker go) and
//  frees it. Safe with NULL and twice.
void cf_broker_destroy(cf_broker_t **broker);

//  The endpoints actually bound (a "*" port resolved), borrowed.
const char *cf_broker_client_endpoint(cf_broker_t *broker);
const char *cf_broker_worker_endpoint(cf_broker_t *broker);

//  Tells the broker a worker is gone without waiting for heartbeats (the
//  process supervisor saw it exit). identity is the worker's routing id.
//  Thread-safe.
cf_err_t cf_broker_worker_lost(cf_broker_t *broker, const void *identity, size_t len);

//  A snapshot of counters. Thread-safe.
typedef struct {
    uint64_t clients, workers, queued, running;
    uint64_t submitted, completed, failed, cancelled, retried, lost_workers;
    uint64_t busy, malformed, dropped;
} cf_broker_stats_t;
cf_err_t cf_broker_stats(cf_broker_t *broker, cf_broker_stats_t *stats);

#endif

//  The client actor: CF_REMOTE and CF_PROCESSES back end. A thread that owns
//  one DEALER socket to a broker's client endpoint. Application threads hand
//  it tasks through a mutex-protected inbox and an eventfd it polls; it
//  batches them into SUBMIT messages, matches RESULT/STARTED replies to
//  futures by task id, heartbeats the broker, and when the broker is lost or
//  restarted (its boot id changes) resends every task still pending. A BUSY
//  result puts the task back in its queue for a later resend, so backpressure
//  never loses a task.

#ifndef CF_CLIENT_H
#define CF_CLIENT_H

#include "cf_executor.h"

extern const cf_backend_ops_t cf_client_ops;

typedef struct {
    const char *endpoint;       //  broker client endpoint
    void *zmq_context;          //  NULL: the client makes its own
    int heartbeat_ivl_ms;       //  0: CF_HEARTBEAT_IVL_MS
    int heartbeat_liveness;     //  missed intervals before the broker is lost
} cf_client_config_t;

//  Connects (asynchronously: zmq connects in the background). NULL with
//  cf_last_error() on failure.
void *cf_client_new(const cf_client_config_t *config);

#define CF_HEARTBEAT_IVL_MS  1000
#define CF_HEARTBEAT_LIVENESS 3

#endif

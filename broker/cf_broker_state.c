//  The broker's state (see cf_broker_int.h): built by the actor when it
//  starts (the two ROUTERs made and bound on the actor's own thread, so no
//  socket ever changes thread) and freed by it when it stops, after a
//  goodbye to every peer.

#include "cf_broker_int.h"

#include "cf_clock.h"
#include "cf_error.h"
#include "cf_random.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define S_LOG "broker"

static cf_err_t s_bind(void *sock, const char *endpoint, char *resolved, size_t size)
{
    if (!endpoint || !*endpoint)
        return cf_error_set(CF_EINVAL, "no endpoint to bind");
    if (zmq_bind(sock, endpoint) != 0)
        return cf_error_set(CF_ESYS, "cannot bind %s: %s", endpoint, zmq_strerror(errno));
    size_t len = size;
    if (zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, resolved, &len) != 0 || len == 0) {
        snprintf(resolved, size, "%s", endpoint);
        return CF_OK;
    }
    resolved[size - 1] = '\0';
    return CF_OK;
}

//  Watches the listener of ROUTER i (0 clients, 1 workers) for failed
//  accepts on an inproc PAIR of our own: CF_OK, or the errno that stopped
//  it (nothing left behind). Each arming takes a new inproc name.
static int s_monitor_arm(cf_broker_state_t *self, int i)
{
    void *sock = i == 0 ? self->clients_sock : self->workers_sock;
    char endpoint[96];
    snprintf(endpoint, sizeof endpoint, "inproc://cf-broker-monitor-%p-%d-%" PRIu64,
             (const void *)self, i, ++self->monitor_generation);
    if (zmq_socket_monitor(sock, endpoint, ZMQ_EVENT_ACCEPT_FAILED) != 0)
        return errno;
    //  No high-water mark on the way to us: libzmq sends events blocking,
    //  from its I/O thread, holding the socket's monitor lock. At a mark
    //  that thread would wait for us to read while we waited for the lock
    //  to stop the monitor (zmq_socket_monitor with NULL): both stuck, and
    //  the broker silent (seen once in seven runs of tests/test_fd_limit.c).
    //  Unbounded is safe: we read at once, and stop after the first event.
    void *pair = zmq_socket(self->ctx, ZMQ_PAIR);
    int linger = 0, unbounded = 0;
    if (!pair || zmq_setsockopt(pair, ZMQ_LINGER, &linger, sizeof linger) != 0
        || zmq_setsockopt(pair, ZMQ_RCVHWM, &unbounded, sizeof unbounded) != 0
        || zmq_connect(pair, endpoint) != 0) {
        int err = errno;
        if (pair)
            zmq_close(pair);
        zmq_socket_monitor(sock, NULL, 0);
        return err;
    }
    self->monitors[i] = pair;
    return 0;
}

static void s_monitor_stop(cf_broker_state_t *self, int i)
{
    if (!self->monitors[i])
        return;
    zmq_socket_monitor(i == 0 ? self->clients_sock : self->workers_sock, NULL, 0);
    zmq_close(self->monitors[i]);
    self->monitors[i] = NULL;
}

static void *s_router_new(void *ctx, const cf_broker_config_t *config, bool is_clients)
{
    void *sock = zmq_socket(ctx, ZMQ_ROUTER);
    if (!sock) {
        cf_error_set(CF_ESYS, "cannot create a socket: %s", zmq_strerror(errno));
        return NULL;
    }
    cf_err_t rc = cf_proto_socket_setup(sock, true);
    //  A peer that reconnects with the same identity (a client or worker
    //  with a fixed ZMQ_ROUTING_ID after a network blip) takes its old place
    //  instead of being refused while the old connection lingers.
    int handover = 1;
    if (rc == CF_OK && zmq_setsockopt(sock, ZMQ_ROUTER_HANDOVER, &handover, sizeof handover) != 0)
        rc = CF_ESYS;
    if (rc != CF_OK) {
        cf_error_set(rc, "cannot set up the %s socket: %s", is_clients ? "client" : "worker",
                     zmq_strerror(errno));
        zmq_close(sock);
        return NULL;
    }
    if (config->socket_setup) {
        rc = config->socket_setup(sock, is_clients, config->socket_setup_arg);
        if (rc != CF_OK) {
            if (cf_last_err() != rc)
                cf_error_set(rc, "cannot set up the %s socket: %s",
                             is_clients ? "client" : "worker", cf_strerror(rc));
            zmq_close(sock);
            return NULL;
        }
    }
    return sock;
}

cf_broker_state_t *cf_broker_state_new(void *ctx, const cf_broker_config_t *config)
{
    cf_broker_state_t *self = cf_calloc(1, sizeof *self);
    if (!self)
        return NULL;
    cf_queue_init(&self->clients);
    cf_queue_init(&self->workers);
    cf_queue_init(&self->ring);
    cf_queue_init(&self->unserved);
    cf_queue_init(&self->suspects);
    cf_queue_init(&self->available);
    cf_queue_init(&self->shared);
    cf_queue_init(&self->flush);
    self->ivl_ms = config->heartbeat_ivl_ms ? config->heartbeat_ivl_ms : CF_HEARTBEAT_IVL_MS;
    self->liveness = config->heartbeat_liveness ? config->heartbeat_liveness
                                                : CF_HEARTBEAT_LIVENESS;
    self->max_queued = config->max_queued ? config->max_queued : CF_BROKER_MAX_QUEUED;
    self->max_queued_per_client = config->max_queued_per_client ? config->max_queued_per_client
                                                                : self->max_queued;
    self->no_worker_wait_ms = config->no_worker_wait_ms ? config->no_worker_wait_ms
                                                        : CF_BROKER_NO_WORKER_WAIT_MS;
    self->require_roles = config->require_roles;
    self->auth = config->require_roles ? config->auth : NULL;
    self->refused_log.per_sec = CF_AUTH_LOG_PER_SEC;
    self->event_log.per_sec = CF_BROKER_EVENT_LOG_PER_SEC;
    self->task_log.per_sec = CF_BROKER_TASK_LOG_PER_SEC;
    self->boot = cf_random_u64();
    self->started_ms = cf_clock_now_ms();
    self->next_task_id = cf_random_u64();
    self->enc = cf_proto_enc_new();
    self->tasks = cf_idmap_new_dense(1024);
    self->client_table = cf_idmap_new(16);
    self->worker_table = cf_idmap_new(16);
    self->fn_table = cf_idmap_new(16);
    if (!self->enc || !self->tasks || !self->client_table || !self->worker_table
        || !self->fn_table) {
        cf_error_set(CF_ENOMEM, "out of memory");
        goto failed;
    }
    self->clients_sock = s_router_new(ctx, config, true);
    if (!self->clients_sock)
        goto failed;
    self->workers_sock = s_router_new(ctx, config, false);
    if (!self->workers_sock)
        goto failed;
    if (s_bind(self->clients_sock, config->client_endpoint, self->client_endpoint,
               sizeof self->client_endpoint)
            != CF_OK
        || s_bind(self->workers_sock, config->worker_endpoint, self->worker_endpoint,
                  sizeof self->worker_endpoint)
               != CF_OK)
        goto failed;
    self->ctx = ctx;
    for (int i = 0; i < 2; i++) {
        int err = s_monitor_arm(self, i);
        if (err)    //  the broker serves as before, only without the report
            cf_log_warn(S_LOG,
                        "cannot watch the %s socket's connections: %s (a failed accept "
                        "goes unreported)",
                        i == 0 ? "client" : "worker", zmq_strerror(err));
    }
    return self;
failed:
    cf_broker_state_destroy(&self);
    return NULL;
}

void cf_broker_state_destroy(cf_broker_state_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    cf_broker_state_t *self = *self_p;
    *self_p = NULL;
    //  Results still in outboxes (a gather, a full pipe) go first: each
    //  one lost would be run again by its client.
    if (self->enc && self->clients_sock) {
        self->terminated = true;
        cf_broker_client_flush_all(self);
    }
    //  Say goodbye so peers need not wait for heartbeats to notice.
    cf_queue_node_t *node;
    for (node = cf_queue_front(&self->workers); node; node = cf_queue_next(&self->workers, node)) {
        cf_broker_peer_t *peer = cf_queue_entry(node, cf_broker_peer_t, all_node);
        cf_proto_enc_begin(self->enc, CF_MSG_DISCONNECT);
        cf_proto_enc_text(self->enc, "broker stopping", 0);
        (void)cf_proto_enc_send(self->enc, self->workers_sock, peer->id, peer->id_len);
    }
    for (node = cf_queue_front(&self->clients); node; node = cf_queue_next(&self->clients, node)) {
        cf_broker_peer_t *peer = cf_queue_entry(node, cf_broker_peer_t, all_node);
        cf_proto_enc_begin(self->enc, CF_MSG_DISCONNECT);
        cf_proto_enc_text(self->enc, "broker stopping", 0);
        (void)cf_proto_enc_send(self->enc, self->clients_sock, peer->id, peer->id_len);
    }
    while ((node = cf_queue_front(&self->clients))) {
        cf_broker_client_t *client = cf_queue_entry(node, cf_broker_client_t, peer.all_node);
        cf_broker_client_lost(self, client, "broker stopping");
    }
    //  Every task left is on a worker and orphaned now.
    while ((node = cf_queue_front(&self->workers))) {
        cf_broker_worker_t *worker = cf_queue_entry(node, cf_broker_worker_t, peer.all_node);
        cf_broker_worker_remove(self, worker, "broker stopping", false);
    }
    assert(!self->tasks || cf_idmap_size(self->tasks) == 0);
    cf_idmap_destroy(&self->tasks);
    cf_idmap_destroy(&self->client_table);
    cf_idmap_destroy(&self->worker_table);
    cf_broker_fn_destroy_all(self);
    free(self->heap);
    cf_proto_enc_destroy(&self->enc);
    int linger = CF_BROKER_LINGER_MS;
    void *socks[] = { self->clients_sock, self->workers_sock };
    for (size_t i = 0; i < 2; i++) {
        if (socks[i])
            s_monitor_stop(self, (int)i);
        if (socks[i]) {
            zmq_setsockopt(socks[i], ZMQ_LINGER, &linger, sizeof linger);
            zmq_close(socks[i]);
        }
    }
    free(self);
}

void cf_broker_state_stats(cf_broker_state_t *self, cf_broker_stats_t *stats)
{
    *stats = self->stats;
    stats->clients = cf_queue_size(&self->clients);
    stats->workers = cf_queue_size(&self->workers);
    stats->queued = self->queued + cf_queue_size(&self->suspects);
    stats->running = self->running;
}

//  The clear line for a listener that cannot accept: what failed, why, and
//  what to do; the broker serves the peers it has meanwhile.
static void s_accept_failed_log(cf_broker_state_t *self, int i, int err)
{
    size_t have = cf_queue_size(i == 0 ? &self->clients : &self->workers);
    cf_log_error(S_LOG, "cannot accept a connection on %s: %s%s; the %zu %s connected are served",
                 i == 0 ? self->client_endpoint : self->worker_endpoint, strerror(err),
                 err == EMFILE   ? " (raise LimitNOFILE / ulimit -n)"
                 : err == ENFILE ? " (the system's file table is full: raise fs.file-max)"
                                 : "",
                 have, i == 0 ? "clients" : "workers");
}

void cf_broker_state_monitor_read(cf_broker_state_t *self, int i)
{
    //  Each event: [uint16 event, uint32 errno] then the endpoint.
    for (int budget = CF_BROKER_READ_BUDGET; budget > 0 && self->monitors[i]; budget--) {
        zmq_msg_t head, where;
        zmq_msg_init(&head);
        if (zmq_msg_recv(&head, self->monitors[i], ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&head);
            return;
        }
        zmq_msg_init(&where);
        if (zmq_msg_more(&head))
            (void)zmq_msg_recv(&where, self->monitors[i], 0);
        uint16_t event = 0;
        uint32_t err = 0;
        if (zmq_msg_size(&head) >= 6) {
            memcpy(&event, zmq_msg_data(&head), sizeof event);
            memcpy(&err, (const uint8_t *)zmq_msg_data(&head) + 2, sizeof err);
        }
        zmq_msg_close(&head);
        zmq_msg_close(&where);
        if (event != ZMQ_EVENT_ACCEPT_FAILED)
            continue;
        //  A listener out of descriptors fails its accept each time libzmq's
        //  I/O thread turns, so events come in floods: one is enough. The
        //  monitor stops (reading the flood cost the broker half a core
        //  more) and is armed again after CF_BROKER_ACCEPT_LOG_MS.
        s_accept_failed_log(self, i, (int)err);
        s_monitor_stop(self, i);
        self->monitor_rearm_ms[i] = cf_clock_now_ms() + CF_BROKER_ACCEPT_LOG_MS;
    }
}

void cf_broker_state_monitor_check(cf_broker_state_t *self, int64_t now)
{
    for (int i = 0; i < 2; i++) {
        if (self->monitors[i] || !self->monitor_rearm_ms[i] || now < self->monitor_rearm_ms[i])
            continue;
        int err = s_monitor_arm(self, i);
        if (err == EMFILE || err == ENFILE) {
            //  No descriptor even for the monitor: the listener took the
            //  ones the monitor freed, and is at the limit still.
            s_accept_failed_log(self, i, err);
            self->monitor_rearm_ms[i] = now + CF_BROKER_ACCEPT_LOG_MS;
        }
        else
            self->monitor_rearm_ms[i] = 0;    //  watching again (or never will: err)
    }
}

//  The broker actor (see cf_broker.h for what peers can rely on, and
//  cf_broker_int.h for how its modules divide the work): the handle other
//  threads hold (the cf_broker_* calls of cf_broker.h), the actor's thread
//  and its loop, and the pipe that carries cf_broker_stats and
//  cf_broker_worker_lost to it.
//
//  Not named cf_broker.c: the handle needs the private header, which needs
//  cf_broker.h's types, and a module cf_broker that includes cf_broker_int
//  which includes cf_broker is a cycle tools/check_layers.py refuses. So
//  cf_broker.h is a header of its own, and every broker file builds on it.
//
//  The actor is a cf_actor: cf_broker_new returns once the actor has built
//  its state and bound both endpoints (or with the error that stopped it),
//  cf_broker_destroy sends $TERM and joins. The loop polls the two ROUTERs
//  and the pipe's descriptor in one zmq_poll.

#include "cf_broker_int.h"

#include "cf_actor.h"
#include "cf_clock.h"
#include "cf_error.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define S_LOG "broker"

struct cf_broker {
    cf_actor_t *actor;    //  owns both sockets and every table
    void *ctx;
    bool own_ctx;
    char client_endpoint[256];    //  written by the actor before it is ready
    char worker_endpoint[256];
    //  The actor's state, which only the actor touches. Kept here too so that
    //  it stays reachable from the handle: a process forked while the broker
    //  runs (CF_PROCESSES' zygote) has no actor thread, and a leak checker
    //  there would take state known only to that thread's stack for lost.
    cf_broker_state_t *state;
};

// ---------------------------------------------------------------------------
//  The pipe from cf_broker_* calls

static void s_handle_pipe(cf_broker_state_t *self, cf_actor_t *actor)
{
    cf_actor_clear_wake(actor);
    cf_actor_msg_t *msg;
    while ((msg = cf_actor_recv(actor))) {
        size_t len = 0;
        const void *arg = cf_actor_msg_arg(msg, &len);
        if (cf_actor_msg_is(msg, "$TERM"))
            self->terminated = true;
        else if (cf_actor_msg_is(msg, "STATS")) {
            cf_broker_stats_t stats;
            cf_broker_state_stats(self, &stats);
            cf_actor_reply(actor, &msg, &stats, sizeof stats);
        }
        else if (cf_actor_msg_is(msg, "LOST") || cf_actor_msg_is(msg, "DIED")) {
            //  DIED: [id_len uint32][count uint32][identity][count ids],
            //  the ids copied out, as the mailbox keeps no alignment.
            cf_broker_died_t died = { 0 }, *known = NULL;
            uint64_t *ids = NULL;
            if (cf_actor_msg_is(msg, "DIED")) {
                uint32_t head[2];
                memcpy(head, arg, sizeof head);
                ids = malloc((head[1] ? head[1] : 1) * sizeof *ids);
                if (ids) {
                    memcpy(ids, (const char *)arg + sizeof head + head[0], head[1] * sizeof *ids);
                    died = (cf_broker_died_t){ ids, head[1] };
                    known = &died;
                }
                arg = (const char *)arg + sizeof head;
                len = head[0];
            }
            cf_broker_worker_t *worker = (cf_broker_worker_t *)cf_broker_peer_find(
                self->worker_table, arg, len);
            int32_t rc = worker ? CF_OK : CF_ENOTFOUND;
            if (worker)
                cf_broker_worker_remove_died(self, worker, "reported gone", true, known);
            else if (cf_log_enabled(CF_LOG_DEBUG)) {
                char label[24];
                cf_broker_peer_label(arg, len, label, sizeof label);
                cf_log_debug(S_LOG, "worker %s reported gone: not known here", label);
            }
            free(ids);
            cf_actor_reply(actor, &msg, &rc, sizeof rc);
        }
        else {
            //  Only our own code writes the pipe.
            assert(!"unknown verb on the broker pipe");
            cf_log_error(S_LOG, "unknown verb on the broker pipe");
        }
        cf_actor_reply(actor, &msg, NULL, 0);    //  NULL once answered
    }
}

// ---------------------------------------------------------------------------
//  The actor

//  Deadlines due: timeouts, waits for a worker serving a function, refused
//  workers' waits, heartbeats.
static void s_run_timers(cf_broker_state_t *self)
{
    int64_t now = cf_clock_now_ms();
    cf_broker_task_expire(self, now);
    if (!cf_queue_empty(&self->unserved))
        cf_broker_queue_expire(self, now);
    cf_broker_worker_unblock(self, now);
    cf_broker_peer_heartbeat(self, now);
    cf_broker_state_monitor_check(self, now);
}

static int s_poll_timeout(cf_broker_state_t *self)
{
    int64_t deadline = self->next_heartbeat_ms;
    if (self->heap_size && self->heap[0]->deadline_ms < deadline)
        deadline = self->heap[0]->deadline_ms;
    //  The oldest suspect's wait for an empty worker ends (see
    //  cf_broker_dispatch).
    cf_queue_node_t *suspect = cf_queue_front(&self->suspects);
    if (suspect && cf_queue_entry(suspect, cf_broker_task_t, node)->deadline_ms < deadline)
        deadline = cf_queue_entry(suspect, cf_broker_task_t, node)->deadline_ms;
    int timeout = cf_clock_ms_until(deadline);
    if ((!cf_queue_empty(&self->flush) || self->blocked_workers) && timeout > CF_BROKER_RETRY_MS)
        timeout = CF_BROKER_RETRY_MS;
    if (self->gathering && timeout > 1)
        timeout = 1;    //  the gather ends within CF_BROKER_GATHER_US
    if (!cf_queue_empty(&self->unserved) && timeout > CF_BROKER_UNSERVED_CHECK_MS)
        timeout = CF_BROKER_UNSERVED_CHECK_MS;
    return timeout;
}

//  What cf_broker_new hands the actor; valid until the actor is ready.
typedef struct {
    const cf_broker_config_t *config;
    cf_broker_t *broker;
} s_start_t;

static void s_loop(cf_broker_state_t *self, cf_actor_t *actor)
{
    zmq_pollitem_t items[5] = {
        { NULL, cf_actor_fd(actor), ZMQ_POLLIN, 0 },
        { self->clients_sock, 0, ZMQ_POLLIN, 0 },
        { self->workers_sock, 0, ZMQ_POLLIN, 0 },
    };
    self->next_heartbeat_ms = cf_clock_now_ms() + self->ivl_ms;
    while (!self->terminated) {
        //  The listeners' monitors that watch now (see cf_broker_state.c).
        int count = 3, which[5];
        for (int i = 0; i < 2; i++)
            if (self->monitors[i]) {
                which[count] = i;
                items[count++] = (zmq_pollitem_t){ self->monitors[i], 0, ZMQ_POLLIN, 0 };
            }
        int rc = zmq_poll(items, count, s_poll_timeout(self));
        if (rc < 0 && errno == EINTR)
            continue;    //  a signal; revents are stale
        if (rc < 0) {
            if (errno != ETERM)
                cf_log_error(S_LOG, "poll failed: %s", zmq_strerror(errno));
            break;    //  context terminated
        }
        if (items[0].revents & ZMQ_POLLIN)
            s_handle_pipe(self, actor);
        if (self->terminated)
            break;
        if (items[1].revents & ZMQ_POLLIN)
            cf_broker_peer_read(self, self->clients_sock);
        if (items[2].revents & ZMQ_POLLIN)
            cf_broker_peer_read(self, self->workers_sock);
        for (int i = 3; i < count; i++)
            if (items[i].revents & ZMQ_POLLIN)
                cf_broker_state_monitor_read(self, which[i]);
        s_run_timers(self);
        cf_broker_dispatch(self);
        cf_broker_client_flush_all(self);
    }
}

static void s_actor(cf_actor_t *actor, void *args)
{
    s_start_t *start = args;
    cf_broker_t *broker = start->broker;
    cf_broker_state_t *self = cf_broker_state_new(broker->ctx, start->config);
    if (!self) {
        cf_actor_ready(actor, cf_last_err(), cf_last_error());
        return;
    }
    //  Written before ready: cf_broker_new's caller reads them after.
    memcpy(broker->client_endpoint, self->client_endpoint, sizeof broker->client_endpoint);
    memcpy(broker->worker_endpoint, self->worker_endpoint, sizeof broker->worker_endpoint);
    cf_log_info(S_LOG, "serving clients at %s, workers at %s (heartbeat %d ms x %d)",
                self->client_endpoint, self->worker_endpoint, self->ivl_ms, self->liveness);
    broker->state = self;
    cf_actor_ready(actor, CF_OK, NULL);
    s_loop(self, actor);
    cf_broker_state_destroy(&self);
    broker->state = NULL;
}

// ---------------------------------------------------------------------------
//  The handle

static bool s_config_valid(const cf_broker_config_t *config)
{
    if (!config || !config->client_endpoint || !config->worker_endpoint)
        cf_error_set(CF_EINVAL, "a broker needs a client and a worker endpoint");
    else if (config->heartbeat_ivl_ms < 0 || config->heartbeat_liveness < 0)
        cf_error_set(CF_EINVAL, "heartbeat interval and liveness must be >= 0, got %d and %d",
                     config->heartbeat_ivl_ms, config->heartbeat_liveness);
    else
        return true;
    return false;
}

cf_broker_t *cf_broker_new(const cf_broker_config_t *config)
{
    if (!s_config_valid(config))
        return NULL;
    cf_broker_t *broker = cf_calloc(1, sizeof *broker);
    if (!broker)
        return NULL;
    broker->ctx = config->zmq_context;
    if (!broker->ctx) {
        broker->ctx = zmq_ctx_new();
        if (!broker->ctx) {
            cf_error_set(CF_ESYS, "cannot create a ZeroMQ context: %s", zmq_strerror(errno));
            goto failed;
        }
        broker->own_ctx = true;
    }
    //  Returns once the actor has bound both endpoints and serves, or with
    //  the error that stopped it ("cannot bind tcp://...").
    broker->actor = cf_actor_new("cf-broker", s_actor, &(s_start_t){ config, broker });
    if (!broker->actor)
        goto failed;
    return broker;
failed:
    cf_broker_destroy(&broker);
    return NULL;
}

void cf_broker_destroy(cf_broker_t **broker_p)
{
    if (!broker_p || !*broker_p)
        return;
    cf_broker_t *broker = *broker_p;
    *broker_p = NULL;
    //  $TERM: the actor says DISCONNECT to its peers, frees its state and
    //  closes its sockets; then the join.
    cf_actor_destroy(&broker->actor);
    if (broker->own_ctx)
        zmq_ctx_term(broker->ctx);
    free(broker);
}

const char *cf_broker_client_endpoint(cf_broker_t *broker)
{
    assert(broker);
    return broker->client_endpoint;
}

const char *cf_broker_worker_endpoint(cf_broker_t *broker)
{
    assert(broker);
    return broker->worker_endpoint;
}

cf_err_t cf_broker_worker_lost(cf_broker_t *broker, const void *identity, size_t len)
{
    if (!broker || !identity || len == 0 || len > CF_BROKER_MAX_IDENTITY)
        return CF_EINVAL;
    //  An actor must not wait for another: from one, the report goes one way.
    if (cf_actor_current())
        return cf_actor_send(broker->actor, "LOST", identity, len);
    int32_t reply = CF_ESYS;
    cf_err_t rc = cf_actor_call(broker->actor, "LOST", identity, len, &reply, sizeof reply);
    return rc != CF_OK ? rc : (cf_err_t)reply;
}

cf_err_t cf_broker_worker_died(cf_broker_t *broker, const void *identity, size_t len,
                               const uint64_t *running, size_t n)
{
    if (!running)
        return cf_broker_worker_lost(broker, identity, len);
    if (!broker || !identity || len == 0 || len > CF_BROKER_MAX_IDENTITY || n > UINT32_MAX / 8)
        return CF_EINVAL;
    uint32_t head[2] = { (uint32_t)len, (uint32_t)n };
    size_t size = sizeof head + len + n * sizeof *running;
    uint8_t *buf = malloc(size);
    if (!buf)
        return CF_ENOMEM;
    memcpy(buf, head, sizeof head);
    memcpy(buf + sizeof head, identity, len);
    if (n)
        memcpy(buf + sizeof head + len, running, n * sizeof *running);
    cf_err_t rc;
    if (cf_actor_current())
        rc = cf_actor_send(broker->actor, "DIED", buf, size);
    else {
        int32_t reply = CF_ESYS;
        rc = cf_actor_call(broker->actor, "DIED", buf, size, &reply, sizeof reply);
        if (rc == CF_OK)
            rc = (cf_err_t)reply;
    }
    free(buf);
    return rc;
}

cf_err_t cf_broker_stats(cf_broker_t *broker, cf_broker_stats_t *stats)
{
    if (!broker || !stats)
        return CF_EINVAL;
    return cf_actor_call(broker->actor, "STATS", NULL, 0, stats, sizeof *stats);
}

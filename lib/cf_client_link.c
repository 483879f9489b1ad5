//  The client's links to its brokers (cf_client_int.h has the map), one
//  per broker of the list: each socket's life (open, close, a fresh one
//  for a lost broker), the monitor's events (connections; handshakes: our
//  key accepted or refused), whether the broker is reachable, and what a
//  lost or refusing broker's tasks become.

#include "cf_client_int.h"

#include "cf_clock.h"
#include "cf_error.h"
#include "cf_log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define S_LOG "client"

//  Unreachable: no transport (per the monitor), or a broker that spoke once
//  and then went silent or said goodbye. Before the first word it is only
//  "not yet heard", which is no reason to give up on answers. The client as
//  a whole is unreachable when every broker is.
void cf_client_link_update_reach(cf_client_t *self, cf_client_link_t *link)
{
    link->unreachable = !link->transport_up || (link->heard_once && !link->connected);
    bool all = true;
    for (size_t i = 0; i < self->links_len && all; i++)
        all = self->links[i].unreachable;
    if (all != self->own.unreachable) {
        self->own.unreachable = all;
        self->own.reach_changed = true;
    }
}

//  The broker stopped answering or said goodbye. With one broker there is
//  nothing to do but wait: zmq reconnects, and what the broker forgot is
//  resent when it says so (unknown client, new boot id, new connection).
//  With several, what it held is resubmitted at once to the others (or
//  waits in the outbox for the first broker that answers): waiting for
//  this one would hold those tasks for as long as it stays away.
void cf_client_link_lost(cf_client_t *self, cf_client_link_t *link, const char *why)
{
    if (link->connected) {
        cf_log_warn(S_LOG, "broker at %s lost (%s)", link->endpoint, why);
        link->lost_since_ms = cf_clock_now_ms();
    }
    link->connected = false;
    cf_client_link_update_reach(self, link);
    if (self->links_len > 1 && link->at_broker > 0) {
        atomic_fetch_add_explicit(&self->tally.failovers, 1, memory_order_relaxed);
        atomic_store_explicit(&self->tally.last_failover_ms, cf_clock_now_ms(),
                              memory_order_relaxed);
        char reason[512];
        snprintf(reason, sizeof reason, "broker at %s lost (%s), its tasks go to the others",
                 link->endpoint, why);
        cf_client_task_resend_all(self, link, reason);
    }
    //  Silent to us, we were probably silent to it as well: it may have
    //  dropped our tasks, and our next SUBMIT would rejoin without a word.
    link->resend_on_contact = true;
}

// ---------------------------------------------------------------------------
//  Handshakes

static void s_resolve_refused(cf_client_t *self, cf_client_item_t *item, const char *why)
{
    cf_client_task_error(self, item, "AuthError", why, "", 0);
}

//  The broker refused our key (or our lack of one): nothing sent to it can
//  ever succeed, and its socket stops reconnecting. While another broker
//  is left, what it held goes there; when none is, every pending future
//  fails with AuthError and later submissions with CF_EAUTH.
void cf_client_link_refused(cf_client_t *self, cf_client_link_t *link, const char *why)
{
    if (link->refused)
        return;
    link->refused = true;
    cf_log_error(S_LOG, "%s", why);
    if (zmq_disconnect(link->socket, link->endpoint) != 0)
        cf_log_debug(S_LOG, "disconnect from %s: %s", link->endpoint, zmq_strerror(errno));
    link->transport_up = false;
    link->redial_deadline_ms = -1;
    cf_client_link_update_reach(self, link);
    bool all = true;
    for (size_t i = 0; i < self->links_len && all; i++)
        all = self->links[i].refused;
    if (!all) {
        cf_client_task_resend_all(self, link, "broker refused this client");
        cf_client_task_report(self);
        return;
    }
    pthread_mutex_lock(&self->shared.mutex);
    if (self->shared.auth_state == CF_CLIENT_AUTH_REFUSED) {
        pthread_mutex_unlock(&self->shared.mutex);
        return;
    }
    self->shared.auth_state = CF_CLIENT_AUTH_REFUSED;
    snprintf(self->shared.auth_message, sizeof self->shared.auth_message, "%s", why);
    pthread_cond_broadcast(&self->shared.auth_cond);
    cf_queue_t tasks;
    cf_queue_init(&tasks);
    cf_queue_append(&tasks, &self->shared.inbox);
    pthread_mutex_unlock(&self->shared.mutex);
    cf_client_task_resolve_all(self, &tasks, s_resolve_refused, why);
    cf_client_task_report(self);
}

static void s_auth_accepted(cf_client_t *self, cf_client_link_t *link)
{
    link->handshaken = true;
    pthread_mutex_lock(&self->shared.mutex);
    if (self->shared.auth_state == CF_CLIENT_AUTH_UNKNOWN) {
        self->shared.auth_state = CF_CLIENT_AUTH_OK;
        pthread_cond_broadcast(&self->shared.auth_cond);
    }
    pthread_mutex_unlock(&self->shared.mutex);
}

//  A handshake outcome from the monitor (value: the event's value).
static void s_on_handshake(cf_client_t *self, cf_client_link_t *link, uint16_t event,
                           uint32_t value)
{
    char why[256];
    int verdict = cf_keys_judge(&link->judge, cf_keys_event_code(event), (int)value, why,
                                sizeof why);
    if (verdict > 0)
        s_auth_accepted(self, link);
    else if (verdict < 0)
        cf_client_link_refused(self, link, why);
}

// ---------------------------------------------------------------------------
//  The socket

//  Socket events: a reconnection means the broker may be another instance,
//  or the same one that now sees us under a new routing id and will drop
//  our old tasks; either way, resend.
void cf_client_link_on_monitor(cf_client_t *self, cf_client_link_t *link)
{
    for (;;) {
        zmq_msg_t frame;
        zmq_msg_init(&frame);
        if (zmq_msg_recv(&frame, link->monitor, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&frame);
            return;
        }
        uint16_t event = 0;
        uint32_t value = 0;
        if (zmq_msg_size(&frame) >= sizeof event)
            memcpy(&event, zmq_msg_data(&frame), sizeof event);
        if (zmq_msg_size(&frame) >= sizeof event + sizeof value)
            memcpy(&value, (const uint8_t *)zmq_msg_data(&frame) + sizeof event, sizeof value);
        bool more = zmq_msg_more(&frame);
        zmq_msg_close(&frame);
        while (more) {    //  the endpoint frame
            zmq_msg_init(&frame);
            if (zmq_msg_recv(&frame, link->monitor, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&frame);
                return;
            }
            more = zmq_msg_more(&frame);
            zmq_msg_close(&frame);
        }
        if (event == ZMQ_EVENT_CONNECT_RETRIED) {
            link->redial_deadline_ms = -1;    //  libzmq redials by itself
            continue;
        }
        if (event == ZMQ_EVENT_CONNECTED) {
            link->redial_deadline_ms = -1;
            link->transport_up = true;
            link->ever_up = true;
            //  What waited in the socket (a resubmission) goes out now: no
            //  reason for s_run_timers to call us silent and resend again.
            link->last_sent_ms = cf_clock_now_ms();
            if (!link->heard_once)
                link->last_heard_ms = link->last_sent_ms;    //  its silence counts from here
            cf_client_link_update_reach(self, link);
            if (link->ever_connected) {
                cf_log_info(S_LOG, "reconnected to %s", link->endpoint);
                link->boot = 0;
                //  The SUBMIT of the resent tasks introduces us again.
                cf_client_task_resend_all(self, link, "reconnected");
            }
            link->ever_connected = true;
        }
        else if (event == ZMQ_EVENT_DISCONNECTED) {
            link->transport_up = false;
            cf_client_link_lost(self, link, "disconnected");
            //  After a protocol error libzmq closes the connection for
            //  good: no CONNECT_RETRIED follows (see cf_link.h).
            if (!link->refused)
                link->redial_deadline_ms = cf_clock_now_ms() + CF_LINK_REDIAL_GRACE_MS;
        }
        else if (!link->refused)
            s_on_handshake(self, link, event, value);
    }
}

//  Opens a DEALER to link's broker (and its monitor) into *socket_p and
//  *monitor_p, with our options, keys and ZMTP heartbeats, connected.
//  On error nothing is left open and the error is set.
cf_err_t cf_client_link_open(cf_client_t *self, cf_client_link_t *link, void **socket_p,
                             void **monitor_p)
{
    void *socket = zmq_socket(self->ctx, ZMQ_DEALER);
    void *monitor = NULL;
    cf_err_t rc = CF_OK;
    if (!socket)
        return cf_error_set(CF_ESYS, "client: zmq_socket: %s", zmq_strerror(errno));
    if (cf_proto_socket_setup(socket, false) != CF_OK
        || cf_link_setup(socket, link->send_ivl_ms, self->liveness) != CF_OK) {
        rc = cf_error_set(CF_ESYS, "client: socket setup: %s", zmq_strerror(errno));
        goto failed;
    }
    if (self->curve) {
        rc = cf_keys_apply_client(socket, link->curve_server, self->curve_public,
                                  self->curve_secret);
        if (rc != CF_OK) {
            if (cf_last_err() != rc)
                cf_error_set(rc, "client: cannot set the CURVE keys for %s: %s", link->endpoint,
                             cf_strerror(rc));
            goto failed;
        }
    }
    if (link->watch) {
        char name[96];
        snprintf(name, sizeof name, "inproc://cf-client-monitor-%p-%u", (void *)self,
                 self->generation++);
        //  Handshake outcomes tell a refused key (or a missing one) from a
        //  broker that is not up yet, which ZeroMQ itself never reports;
        //  CONNECT_RETRIED tells a connection libzmq redials from one it
        //  dropped for good (cf_link.h).
        int events = ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_CONNECT_RETRIED
                     | ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH
                     | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL;
        if (zmq_socket_monitor(socket, name, events) != 0) {
            rc = cf_error_set(CF_ESYS, "client: socket monitor: %s", zmq_strerror(errno));
            goto failed;
        }
        monitor = zmq_socket(self->ctx, ZMQ_PAIR);
        if (!monitor || zmq_connect(monitor, name) != 0) {
            rc = cf_error_set(CF_ESYS, "client: socket monitor: %s", zmq_strerror(errno));
            goto failed;
        }
    }
    if (zmq_connect(socket, link->endpoint) != 0) {
        rc = cf_error_set(CF_EINVAL, "cannot connect to %s: %s", link->endpoint,
                          zmq_strerror(errno));
        goto failed;
    }
    zmq_fd_t socket_fd = -1, monitor_fd = -1;
    size_t len = sizeof socket_fd;
    if (zmq_getsockopt(socket, ZMQ_FD, &socket_fd, &len) != 0
        || (monitor && zmq_getsockopt(monitor, ZMQ_FD, &monitor_fd, &len) != 0)) {
        rc = cf_error_set(CF_ESYS, "client: socket descriptor: %s", zmq_strerror(errno));
        goto failed;
    }
    link->socket_fd = socket_fd;
    link->monitor_fd = monitor_fd;
    *socket_p = socket;
    *monitor_p = monitor;
    return CF_OK;

failed:
    zmq_socket_monitor(socket, NULL, 0);
    if (monitor)
        zmq_close(monitor);
    zmq_close(socket);
    return rc;
}

void cf_client_link_close(void **socket_p, void **monitor_p)
{
    if (*socket_p)
        zmq_socket_monitor(*socket_p, NULL, 0);    //  fine when none runs
    if (*monitor_p)
        zmq_close(*monitor_p);
    if (*socket_p)
        zmq_close(*socket_p);
    *socket_p = *monitor_p = NULL;
}

//  The broker is lost and libzmq may never redial by itself (cf_link.h): a
//  fresh socket, at most once per backoff step (false when not now). What
//  the old socket held unsent is gone with it, so every task at the broker
//  is resent, which introduces us to whichever broker answers on the new
//  one (a new routing id: the old one's tasks are dropped there).
bool cf_client_link_reopen(cf_client_t *self, cf_client_link_t *link, const char *why, int64_t now)
{
    if (link->refused || !link->watch)
        return true;    //  nothing to reopen for: no redial wanted, or inproc
    if (!cf_link_backoff_take(&link->reopen, now))
        return false;
    void *socket = NULL, *monitor = NULL;
    zmq_fd_t old_socket_fd = link->socket_fd, old_monitor_fd = link->monitor_fd;
    if (cf_client_link_open(self, link, &socket, &monitor) != CF_OK) {
        cf_log_warn(S_LOG, "%s; no fresh connection: %s (trying again later)", why,
                    cf_last_error());
        link->socket_fd = old_socket_fd;
        link->monitor_fd = old_monitor_fd;
        return false;
    }
    cf_client_link_close(&link->socket, &link->monitor);
    link->socket = socket;
    link->monitor = monitor;
    cf_log_warn(S_LOG, "%s: opened a fresh connection to %s", why, link->endpoint);
    link->blocked = false;
    link->transport_up = false;
    link->ever_connected = false;    //  its first connection is not a re-connection
    link->boot = 0;                  //  the next HEARTBEAT is not a second sign
    link->redial_deadline_ms = -1;
    cf_client_task_resend_all(self, link, "fresh connection");
    cf_client_link_update_reach(self, link);
    cf_client_link_on_monitor(self, link);
    return true;
}

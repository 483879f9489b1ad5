//  The client's actor thread (cf_client_int.h has the design and the map):
//  its loop, the timers (heartbeats, a silent broker, resend rounds,
//  warnings while tasks wait, a destroy giving up on a lost broker) and the
//  end, where every future still pending is resolved.

#include "cf_client_int.h"

#include "cf_clock.h"
#include "cf_log.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>

#define S_LOG           "client"
//  A resend round sends twice what the broker completed in the last round
//  (slow start), at least this many.
#define S_RESEND_MIN    64
//  While tasks wait and no broker (or no worker) is there, a warning this
//  often: steady enough to be seen, slow enough not to flood a log.
#define S_WARN_EVERY_MS 10000

static int64_t s_dead_after_ms(cf_client_t *self)
{
    int64_t ivl = self->ivl_ms;
    if ((int64_t)self->own.broker_ivl_ms > ivl)
        ivl = self->own.broker_ivl_ms;
    return ivl * self->liveness;
}

//  How long the broker lets a client be silent: its interval when known
//  (liveness is not announced; ours is assumed).
static int64_t s_broker_expiry_ms(cf_client_t *self)
{
    int64_t ivl = self->own.broker_ivl_ms ? (int64_t)self->own.broker_ivl_ms : self->ivl_ms;
    return ivl * self->liveness;
}

//  Tasks the broker had when destroy gave up on it: it may have run them or
//  not, and nobody will say. Tasks it never had (never sent, or sent while
//  no connection ever came up) are simply cancelled.
static void s_resolve_lost(cf_client_t *self, cf_client_item_t *item, const char *why)
{
    if (item->where == CF_CLIENT_AT_BROKER && self->own.ever_up)
        cf_client_task_error(self, item, "BrokerLost", why, "", 0);
    else
        cf_client_task_cancelled(self, item);
}

//  A lost broker (or one never heard) bounds two waits: a destroy gives up
//  on it after the time in which a live broker would have spoken
//  (s_dead_after_ms), and shutdown(cancel_futures) does not wait for
//  answers to its CANCELs (the tasks it asked about are cancelled here).
static void s_check_lost(cf_client_t *self, int64_t now)
{
    if (cf_idmap_size(self->own.pending) == 0)
        return;
    if (self->own.cancel_all_asked && self->own.unreachable)
        cf_client_task_cancel_locally(self);
    pthread_mutex_lock(&self->shared.mutex);
    bool destroying = self->shared.destroying;
    pthread_mutex_unlock(&self->shared.mutex);
    if (!destroying || now - self->own.lost_since_ms < s_dead_after_ms(self))
        return;
    size_t at_broker = 0, total = cf_idmap_size(self->own.pending);
    size_t cursor = 0;
    uint64_t id;
    void *value;
    while (cf_idmap_next(self->own.pending, &cursor, &id, &value))
        at_broker += ((cf_client_item_t *)value)->where == CF_CLIENT_AT_BROKER && self->own.ever_up;
    cf_log_warn(S_LOG,
                "executor destroyed while the broker at %s was unreachable (%" PRId64
                " ms): %zu tasks failed with BrokerLost, %zu never delivered cancelled",
                self->endpoint, now - self->own.lost_since_ms, at_broker, total - at_broker);
    char why[512];
    snprintf(why, sizeof why,
             "the executor was destroyed while the broker at %s was unreachable: the task "
             "may or may not have run",
             self->endpoint);
    pthread_mutex_lock(&self->shared.mutex);
    cf_queue_t tasks;
    cf_queue_init(&tasks);
    cf_queue_append(&tasks, &self->shared.inbox);
    pthread_mutex_unlock(&self->shared.mutex);
    cf_client_task_resolve_all(self, &tasks, s_resolve_lost, why);
}

//  No silent waits: while tasks are pending and no broker answers, a
//  warning every S_WARN_EVERY_MS; while the broker answers but nothing
//  started or finished for as long, a STATS request, whose answer says
//  whether the broker has any worker (s_on_stats).
static void s_warn_waiting(cf_client_t *self, int64_t now)
{
    size_t pending = cf_idmap_size(self->own.pending);
    if (pending == 0) {
        self->own.next_warn_ms = 0;
        return;
    }
    if (self->own.next_warn_ms == 0) {
        self->own.next_warn_ms = now + S_WARN_EVERY_MS;
        return;
    }
    if (now < self->own.next_warn_ms)
        return;
    self->own.next_warn_ms = now + S_WARN_EVERY_MS;
    if (!self->own.connected) {
        cf_log_warn(S_LOG, "%zu tasks waiting: no broker answers at %s (for %" PRId64 " s)",
                    pending, self->endpoint, (now - self->own.lost_since_ms) / 1000);
        return;
    }
    if (now - self->own.progress_ms < S_WARN_EVERY_MS || !self->own.transport_up)
        return;
    if (self->curve) {
        //  Under CURVE STATS is an admin key's (docs/security.md): asking
        //  with ours would only be refused and logged as a refusal.
        cf_log_warn(S_LOG,
                    "%zu tasks waiting: nothing started or finished for %" PRId64
                    " s (workers busy, missing, or serving none of these functions)",
                    pending, (now - self->own.progress_ms) / 1000);
        return;
    }
    cf_proto_enc_begin(self->own.enc, CF_MSG_STATS);
    if (cf_proto_enc_send(self->own.enc, self->socket, NULL, 0) == CF_OK) {
        self->own.stats_asked = true;
        cf_client_send_sent(self);
    }
}

static void s_run_timers(cf_client_t *self)
{
    int64_t now = cf_clock_now_ms();
    //  Heartbeats keep our gaps near one interval; a gap past the broker's
    //  expiry means this thread stalled (a long callback, a stopped
    //  process, a starved machine) and the broker may have dropped us.
    if (self->own.last_sent_ms && self->own.transport_up
        && now - self->own.last_sent_ms > s_broker_expiry_ms(self)) {
        cf_client_task_resend_all(self, "we were silent");
        self->own.last_sent_ms = now;
    }
    if (now >= self->own.next_heartbeat_ms) {
        //  Not while disconnected: zmq would queue them, and delivered ahead
        //  of the resent tasks after a reconnect each would draw an "unknown
        //  client" answer and a second, useless resend.
        if (self->own.transport_up) {
            cf_err_t rc = cf_client_send_heartbeat(self);
            if (rc == CF_OK)
                cf_client_send_sent(self);
            else if (rc != CF_EBUSY)
                cf_log_debug(S_LOG, "heartbeat not sent: %s", cf_strerror(rc));
        }
        self->own.next_heartbeat_ms = now + self->own.send_ivl_ms;
    }
    if (self->own.connected && now - self->own.last_heard_ms > s_dead_after_ms(self)) {
        cf_client_link_lost(self, "silent");
        //  A partition leaves the connection half-open for minutes, and a
        //  broker that went silent may be behind one: dial afresh.
        cf_client_link_reopen(self, "the broker went silent", now);
    }
    if (self->own.redial_deadline_ms >= 0 && now >= self->own.redial_deadline_ms
        && cf_client_link_reopen(self, "the connection broke and ZeroMQ does not redial", now))
        self->own.redial_deadline_ms = -1;
    if (!self->own.connected)
        s_check_lost(self, now);
    s_warn_waiting(self, now);
    if (self->own.resend_at_ms >= 0 && now >= self->own.resend_at_ms) {
        if (self->own.freed == 0)
            self->own.backoff_ms = self->own.backoff_ms * 2 > CF_CLIENT_BACKOFF_MAX_MS
                                       ? CF_CLIENT_BACKOFF_MAX_MS
                                       : self->own.backoff_ms * 2;
        else
            self->own.backoff_ms = CF_CLIENT_BACKOFF_MIN_MS;
        size_t n = self->own.freed * 2 > S_RESEND_MIN ? self->own.freed * 2 : S_RESEND_MIN;
        self->own.freed = 0;
        cf_queue_t round;
        cf_queue_init(&round);
        cf_client_item_t *item;
        while (n-- > 0 && (item = cf_client_pop_front(&self->own.parked))) {
            item->where = CF_CLIENT_AT_OUTBOX;
            cf_queue_push_back(&round, &item->node);
        }
        cf_queue_prepend(&self->own.outbox, &round);
        self->own.resend_at_ms = !cf_queue_empty(&self->own.parked) ? now + self->own.backoff_ms
                                                                    : -1;
    }
}

static int s_poll_timeout(cf_client_t *self)
{
    int64_t next = self->own.next_heartbeat_ms;
    if (self->own.redial_deadline_ms >= 0) {
        int64_t at = self->own.redial_deadline_ms > self->own.reopen.next_ms
                         ? self->own.redial_deadline_ms
                         : self->own.reopen.next_ms;
        if (at < next)
            next = at;
    }
    if (self->own.connected && self->own.last_heard_ms + s_dead_after_ms(self) + 1 < next)
        next = self->own.last_heard_ms + s_dead_after_ms(self) + 1;
    if (self->own.resend_at_ms >= 0 && self->own.resend_at_ms < next)
        next = self->own.resend_at_ms;
    return cf_clock_ms_until(next);
}

//  A task the destroyed client still held: cancelled if it never started
//  (so it never runs: the broker drops it on DISCONNECT), failed if it did.
static void s_resolve_destroyed(cf_client_t *self, cf_client_item_t *item, const char *why)
{
    if (item->started)
        cf_client_task_error(self, item, "ExecutorDestroyed", why, "", 0);
    else
        cf_client_task_cancelled(self, item);
}

//  Resolves everything still pending when the actor ends, so no future
//  hangs.
static void s_finish_all(cf_client_t *self)
{
    pthread_mutex_lock(&self->shared.mutex);
    self->shared.closed = true;
    cf_queue_t tasks;
    cf_queue_init(&tasks);
    cf_queue_append(&tasks, &self->shared.inbox);
    pthread_mutex_unlock(&self->shared.mutex);
    cf_client_task_resolve_all(self, &tasks, s_resolve_destroyed,
                               "the executor was destroyed before the task finished");
}

void cf_client_actor_main(cf_actor_t *actor, void *arg)
{
    cf_client_t *self = arg;
    self->actor = actor;
    int64_t now = cf_clock_now_ms();
    self->own.last_heard_ms = now;
    //  No hello: the broker knows a client from its first SUBMIT and
    //  answers anything before that with "unknown client", which would
    //  make us resubmit a burst that raced the answer.
    self->own.next_heartbeat_ms = now + self->own.send_ivl_ms;
    //  Both sockets are polled through their ZMQ_FD as plain descriptors
    //  (see the design note); for the monitor that also spares the two
    //  ZMQ_EVENTS checks (a getpid and a poll each) zmq_poll made on every
    //  call for events that come a few times per connection. A descriptor
    //  only says "look": cf_client_link_on_monitor reads until EAGAIN, which re-arms it,
    //  so nothing waits unseen. cf_client_link_open found both descriptors.
    self->own.lost_since_ms = now;
    if (self->monitor)
        cf_client_link_on_monitor(self);    //  what came before we looked

    cf_actor_serve(actor, self);
    cf_actor_ready(actor, CF_OK, NULL);
    while (!self->own.terminated) {
        bool work = cf_client_task_inbox_has_work(self);
        int events = cf_proto_events(self->socket);
        bool ready = work || (events & ZMQ_POLLIN) || (self->own.blocked && (events & ZMQ_POLLOUT));
        int timeout = ready ? 0 : s_poll_timeout(self);
        //  Read every round: cf_client_link_reopen may have replaced both sockets.
        zmq_fd_t monitor_fd = self->own.monitor_fd;
        struct pollfd fds[2] = {
            { self->own.socket_fd, POLLIN, 0 },
            { monitor_fd, POLLIN, 0 },
        };
        bool woken = false;
        if (cf_actor_sleep(actor, fds, monitor_fd >= 0 ? 2 : 1, timeout, &woken) < 0) {
            cf_log_warn(S_LOG, "poll failed: %s", strerror(errno));
            break;
        }
        if (woken) {
            //  $TERM (cf_client's destroy) is the only verb on the pipe.
            if (cf_actor_term_received(actor))
                self->own.term_asked = true;
            work = true;
        }
        if (work) {
            //  Whatever was submitted before destroy closed the inbox is
            //  taken first, so s_finish_all resolves it.
            cf_client_task_drain_inbox(self);
            if (self->own.term_asked) {
                self->own.terminated = true;
                break;
            }
        }
        events = cf_proto_events(self->socket);
        if (events & ZMQ_POLLIN)
            cf_client_recv_read(self);
        if (events & ZMQ_POLLOUT)
            self->own.blocked = false;
        if (monitor_fd >= 0 && (fds[1].revents & POLLIN) && monitor_fd == self->own.monitor_fd)
            cf_client_link_on_monitor(self);
        s_run_timers(self);
        if (self->own.cancel_ids_len)
            cf_client_send_cancels(self);
        cf_client_send_tasks(self);
        if (self->own.stop_items_len)
            cf_client_send_stops(self);
        cf_client_task_report(self);
    }
    cf_actor_serve(actor, NULL);
    s_finish_all(self);
    //  Tell the broker to drop what it still queues for us. Best effort:
    //  at the high-water mark it is lost and the broker's heartbeats find
    //  out instead.
    cf_proto_enc_begin(self->own.enc, CF_MSG_DISCONNECT);
    cf_proto_enc_text(self->own.enc, "client closed", 0);
    cf_proto_enc_send(self->own.enc, self->socket, NULL, 0);
    if (self->monitor) {
        zmq_socket_monitor(self->socket, NULL, 0);
        zmq_close(self->monitor);
        self->monitor = NULL;
    }
    zmq_close(self->socket);
    self->socket = NULL;
}

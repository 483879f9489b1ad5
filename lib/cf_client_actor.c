//  The client's actor thread (cf_client_int.h has the design and the map):
//  its loop over every broker's socket, the timers (heartbeats, a silent
//  broker, resend rounds, warnings while tasks wait, a destroy giving up
//  on lost brokers) and the end, where every future still pending is
//  resolved.

#include "cf_client_int.h"

#include "cf_clock.h"
#include "cf_log.h"

#include <errno.h>
#include <stdint.h>
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

static int64_t s_dead_after_ms(cf_client_t *self, const cf_client_link_t *link)
{
    int64_t ivl = self->ivl_ms;
    if ((int64_t)link->broker_ivl_ms > ivl)
        ivl = link->broker_ivl_ms;
    return ivl * self->liveness;
}

//  How long the broker lets a client be silent: its interval when known
//  (liveness is not announced; ours is assumed).
static int64_t s_broker_expiry_ms(cf_client_t *self, const cf_client_link_t *link)
{
    int64_t ivl = link->broker_ivl_ms ? (int64_t)link->broker_ivl_ms : self->ivl_ms;
    return ivl * self->liveness;
}

//  Tasks a broker had when destroy gave up on every broker: it may have
//  run them or not, and nobody will say. Tasks no broker ever had (never
//  sent, or sent while no connection ever came up) are simply cancelled.
static void s_resolve_lost(cf_client_t *self, cf_client_item_t *item, const char *why)
{
    if (item->link != CF_CLIENT_NO_LINK && self->links[item->link].ever_up)
        cf_client_task_error(self, item, "BrokerLost", why, "", 0);
    else
        cf_client_task_cancelled(self, item);
}

//  Every broker lost (or never heard) bounds two waits: a destroy gives up
//  on them after the time in which a live broker would have spoken
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
    if (!destroying)
        return;
    int64_t lost_ms = INT64_MAX;
    for (size_t i = 0; i < self->links_len; i++) {
        const cf_client_link_t *link = &self->links[i];
        if (link->connected || now - link->lost_since_ms < s_dead_after_ms(self, link))
            return;
        if (now - link->lost_since_ms < lost_ms)
            lost_ms = now - link->lost_since_ms;
    }
    size_t delivered = 0, total = cf_idmap_size(self->own.pending);
    size_t cursor = 0;
    uint64_t id;
    void *value;
    while (cf_idmap_next(self->own.pending, &cursor, &id, &value)) {
        const cf_client_item_t *item = value;
        delivered += item->link != CF_CLIENT_NO_LINK && self->links[item->link].ever_up;
    }
    char where[320];
    if (self->links_len == 1)
        snprintf(where, sizeof where, "the broker at %s was unreachable", self->endpoints);
    else
        snprintf(where, sizeof where, "no broker was reachable at %s", self->endpoints);
    cf_log_warn(S_LOG,
                "executor destroyed while %s (%" PRId64
                " ms): %zu tasks failed with BrokerLost, %zu never delivered cancelled",
                where, lost_ms, delivered, total - delivered);
    char why[512];
    snprintf(why, sizeof why,
             "the executor was destroyed while %s: the task may or may not have run", where);
    pthread_mutex_lock(&self->shared.mutex);
    cf_queue_t tasks;
    cf_queue_init(&tasks);
    cf_queue_append(&tasks, &self->shared.inbox);
    pthread_mutex_unlock(&self->shared.mutex);
    cf_client_task_resolve_all(self, &tasks, s_resolve_lost, why);
}

//  No silent waits: while tasks are pending and no broker answers, a
//  warning every S_WARN_EVERY_MS; while a broker answers but nothing
//  started or finished for as long, a STATS request to each that answers,
//  whose reply says whether it has any worker (s_on_stats).
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
    int64_t lost_since = INT64_MAX;
    for (size_t i = 0; i < self->links_len; i++) {
        if (self->links[i].connected)
            lost_since = INT64_MIN;
        else if (self->links[i].lost_since_ms < lost_since && lost_since != INT64_MIN)
            lost_since = self->links[i].lost_since_ms;
    }
    if (lost_since != INT64_MIN) {
        cf_log_warn(S_LOG, "%zu tasks waiting: no broker answers at %s (for %" PRId64 " s)",
                    pending, self->endpoints, (now - lost_since) / 1000);
        return;
    }
    if (now - self->own.progress_ms < S_WARN_EVERY_MS)
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
    for (size_t i = 0; i < self->links_len; i++) {
        cf_client_link_t *link = &self->links[i];
        if (!link->connected || !link->transport_up)
            continue;
        cf_proto_enc_begin(self->own.enc, CF_MSG_STATS);
        if (cf_proto_enc_send(self->own.enc, link->socket, NULL, 0) == CF_OK) {
            link->stats_asked = true;
            cf_client_send_sent(link);
        }
    }
}

//  With several brokers, once the connect timeout has passed: name those
//  that never completed a handshake (construction returned at the first
//  that did, so nobody else says it).
static void s_warn_unanswered(cf_client_t *self, int64_t now)
{
    if (self->own.connect_warn_ms < 0 || now < self->own.connect_warn_ms)
        return;
    self->own.connect_warn_ms = -1;
    char names[1024] = "";
    size_t len = 0, count = 0;
    for (size_t i = 0; i < self->links_len; i++) {
        const cf_client_link_t *link = &self->links[i];
        if (link->handshaken || link->refused || !link->watch)
            continue;
        int n = snprintf(names + len, sizeof names - len, "%s%s", count ? ", " : "",
                         link->endpoint);
        if (n > 0 && (size_t)n < sizeof names - len)
            len += (size_t)n;
        count++;
    }
    if (count)
        cf_log_warn(S_LOG,
                    "%zu of %zu brokers did not answer within %d ms: %s (tasks go to the "
                    "others until they do)",
                    count, self->links_len, self->connect_timeout_ms, names);
}

//  One link's timers: heartbeats, its silence, the stall of our own, a
//  connection that libzmq will not redial.
static void s_run_link_timers(cf_client_t *self, cf_client_link_t *link, int64_t now)
{
    //  Heartbeats keep our gaps near one interval; a gap past the broker's
    //  expiry means this thread stalled (a long callback, a stopped
    //  process, a starved machine) and the broker may have dropped us.
    if (link->last_sent_ms && link->transport_up
        && now - link->last_sent_ms > s_broker_expiry_ms(self, link)) {
        cf_client_task_resend_all(self, link, "we were silent");
        link->last_sent_ms = now;
    }
    if (now >= link->next_heartbeat_ms) {
        //  Not while disconnected: zmq would queue them, and delivered ahead
        //  of the resent tasks after a reconnect each would draw an "unknown
        //  client" answer and a second, useless resend.
        if (link->transport_up && !link->refused) {
            cf_err_t rc = cf_client_send_heartbeat(self, link);
            if (rc == CF_OK)
                cf_client_send_sent(link);
            else if (rc != CF_EBUSY)
                cf_log_debug(S_LOG, "heartbeat not sent: %s", cf_strerror(rc));
        }
        link->next_heartbeat_ms = now + link->send_ivl_ms;
    }
    //  With several brokers a connection that came up but never answered
    //  while holding tasks counts as silent too: one broker stopped before
    //  we ever heard it must not hold its share of the tasks forever.
    bool mute = self->links_len > 1 && !link->heard_once && link->transport_up
                && link->at_broker > 0;
    if ((link->connected || mute) && now - link->last_heard_ms > s_dead_after_ms(self, link)) {
        if (mute) {
            link->heard_once = true;    //  unusable until it speaks
            link->connected = true;     //  so that the loss is logged
        }
        cf_client_link_lost(self, link, "silent");
        //  A partition leaves the connection half-open for minutes, and a
        //  broker that went silent may be behind one: dial afresh.
        cf_client_link_reopen(self, link, "the broker went silent", now);
    }
    if (link->redial_deadline_ms >= 0 && now >= link->redial_deadline_ms
        && cf_client_link_reopen(self, link, "the connection broke and ZeroMQ does not redial",
                                 now))
        link->redial_deadline_ms = -1;
}

static void s_run_timers(cf_client_t *self)
{
    int64_t now = cf_clock_now_ms();
    bool connected = false;
    for (size_t i = 0; i < self->links_len; i++) {
        s_run_link_timers(self, &self->links[i], now);
        connected = connected || self->links[i].connected;
    }
    if (!connected)
        s_check_lost(self, now);
    s_warn_waiting(self, now);
    s_warn_unanswered(self, now);
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
    int64_t next = INT64_MAX;
    for (size_t i = 0; i < self->links_len; i++) {
        const cf_client_link_t *link = &self->links[i];
        if (link->next_heartbeat_ms < next)
            next = link->next_heartbeat_ms;
        if (link->redial_deadline_ms >= 0) {
            int64_t at = link->redial_deadline_ms > link->reopen.next_ms ? link->redial_deadline_ms
                                                                         : link->reopen.next_ms;
            if (at < next)
                next = at;
        }
        bool watched = link->connected
                       || (self->links_len > 1 && !link->heard_once && link->at_broker > 0);
        if (watched && link->last_heard_ms + s_dead_after_ms(self, link) + 1 < next)
            next = link->last_heard_ms + s_dead_after_ms(self, link) + 1;
    }
    if (self->own.resend_at_ms >= 0 && self->own.resend_at_ms < next)
        next = self->own.resend_at_ms;
    if (self->own.connect_warn_ms >= 0 && self->own.connect_warn_ms < next)
        next = self->own.connect_warn_ms;
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
    for (size_t i = 0; i < self->links_len; i++) {
        cf_client_link_t *link = &self->links[i];
        link->last_heard_ms = now;
        //  No hello: the broker knows a client from its first SUBMIT and
        //  answers anything before that with "unknown client", which would
        //  make us resubmit a burst that raced the answer.
        link->next_heartbeat_ms = now + link->send_ivl_ms;
        link->lost_since_ms = now;
    }
    //  The sockets are polled through their ZMQ_FD as plain descriptors
    //  (see the design note); for the monitors that also spares the two
    //  ZMQ_EVENTS checks (a getpid and a poll each) zmq_poll made on every
    //  call for events that come a few times per connection. A descriptor
    //  only says "look": cf_client_link_on_monitor reads until EAGAIN, which
    //  re-arms it, so nothing waits unseen. cf_client_link_open found every
    //  descriptor.
    for (size_t i = 0; i < self->links_len; i++) {
        if (self->links[i].monitor)
            cf_client_link_on_monitor(self, &self->links[i]);    //  what came before we looked
    }
    struct pollfd fds[2 * CF_CLIENT_MAX_LINKS];
    zmq_fd_t monitor_fds[CF_CLIENT_MAX_LINKS];

    cf_actor_serve(actor, self);
    cf_actor_ready(actor, CF_OK, NULL);
    while (!self->own.terminated) {
        bool work = cf_client_task_inbox_has_work(self);
        bool ready = work;
        int count = 0;
        for (size_t i = 0; i < self->links_len; i++) {
            cf_client_link_t *link = &self->links[i];
            int events = cf_proto_events(link->socket);
            ready = ready || (events & ZMQ_POLLIN) || (link->blocked && (events & ZMQ_POLLOUT));
            //  Read every round: cf_client_link_reopen may have replaced
            //  the sockets.
            fds[count++] = (struct pollfd){ link->socket_fd, POLLIN, 0 };
            monitor_fds[i] = link->monitor_fd;
            if (link->monitor_fd >= 0)
                fds[count++] = (struct pollfd){ link->monitor_fd, POLLIN, 0 };
        }
        int timeout = ready ? 0 : s_poll_timeout(self);
        bool woken = false;
        if (cf_actor_sleep(actor, fds, count, timeout, &woken) < 0) {
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
        int at = 0;
        for (size_t i = 0; i < self->links_len; i++) {
            cf_client_link_t *link = &self->links[i];
            int events = cf_proto_events(link->socket);
            if (events & ZMQ_POLLIN)
                cf_client_recv_read(self, link);
            if (events & ZMQ_POLLOUT)
                link->blocked = false;
            at++;
            if (monitor_fds[i] >= 0) {
                if ((fds[at].revents & POLLIN) && monitor_fds[i] == link->monitor_fd)
                    cf_client_link_on_monitor(self, link);
                at++;
            }
        }
        s_run_timers(self);
        for (size_t i = 0; i < self->links_len; i++) {
            if (self->links[i].cancel_ids_len)
                cf_client_send_cancels(self, &self->links[i]);
        }
        cf_client_send_tasks(self);
        for (size_t i = 0; i < self->links_len; i++) {
            if (self->links[i].stop_items_len)
                cf_client_send_stops(self, &self->links[i]);
        }
        cf_client_task_report(self);
    }
    cf_actor_serve(actor, NULL);
    s_finish_all(self);
    //  Tell each broker to drop what it still queues for us. Best effort:
    //  at the high-water mark it is lost and the broker's heartbeats find
    //  out instead.
    for (size_t i = 0; i < self->links_len; i++) {
        cf_client_link_t *link = &self->links[i];
        cf_proto_enc_begin(self->own.enc, CF_MSG_DISCONNECT);
        cf_proto_enc_text(self->own.enc, "client closed", 0);
        cf_proto_enc_send(self->own.enc, link->socket, NULL, 0);
        cf_client_link_close(&link->socket, &link->monitor);
    }
}

//  What the client's actor reads from the broker (cf_client_int.h has the
//  map): RESULT, STARTED, PROGRESS, HEARTBEAT, ERROR, STATS and DISCONNECT;
//  any message is a sign of life.

#include "cf_client_int.h"

#include "cf_clock.h"
#include "cf_error.h"
#include "cf_log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_LOG        "client"
//  Replies read per poll wakeup before the actor looks at its inbox again.
#define S_RECV_BURST 512
//  A result of at least S_HOLD_MIN bytes that is at least 1/S_HOLD_SHARE of
//  its RESULT body is read in the body, which its future keeps, instead of
//  copied out of it: a future (which the application may keep for long)
//  then never keeps more than S_HOLD_SHARE times its own result.
#define S_HOLD_MIN   (64 * 1024)
#define S_HOLD_SHARE 2

//  A RESULT body kept for a future's result.
typedef struct {
    cf_future_hold_t pub;
    zmq_msg_t body;
} s_hold_t;

static void s_hold_release(cf_future_hold_t *hold)
{
    s_hold_t *self = (s_hold_t *)hold;
    zmq_msg_close(&self->body);
    free(self);
}

//  Resolves f with r's value: kept in msg's body when large enough, else
//  copied (also when keeping fails: out of memory).
static void s_set_result(cf_future_t *f, cf_proto_msg_t *msg, const cf_proto_result_t *r)
{
    if (r->value_len >= S_HOLD_MIN && r->value_len * S_HOLD_SHARE >= cf_proto_msg_body_size(msg)) {
        s_hold_t *hold = malloc(sizeof *hold);
        if (hold) {
            hold->pub.value = r->value;
            hold->pub.release = s_hold_release;
            if (cf_proto_msg_hold(msg, &hold->body, &hold->pub.value) == CF_OK) {
                cf_future_hold_result(f, &hold->pub, r->value_len);
                return;
            }
            zmq_msg_close(&hold->body);
            free(hold);
        }
    }
    cf_future_set_result(f, r->value, r->value_len);
}

static void s_copy_text(char *dst, cf_proto_str_t src)
{
    size_t len = src.len > CF_PROTO_MAX_TEXT ? CF_PROTO_MAX_TEXT : src.len;
    if (len)
        memcpy(dst, src.ptr, len);
    dst[len] = '\0';
}

static void s_contact(cf_client_t *self, cf_client_link_t *link, int64_t now)
{
    link->last_heard_ms = now;
    if (!link->connected) {
        cf_log_debug(S_LOG, "broker at %s answers", link->endpoint);
        link->connected = true;
        cf_link_backoff_reset(&link->reopen);
        link->heard_once = true;
        cf_client_link_update_reach(self, link);
    }
    if (link->resend_on_contact) {
        link->resend_on_contact = false;
        cf_client_task_resend_all(self, link, "broker back after silence");
    }
}

//  The pending task id names, if link may speak for it: a task last sent
//  on another link was moved off this one, and what this broker says of it
//  now is late (counted, ignored): one broker answers for a task at a time,
//  so its future resolves once and its cancel or stop goes where it runs.
static cf_client_item_t *s_item_for(cf_client_t *self, cf_client_link_t *link, uint64_t id)
{
    cf_client_item_t *item = cf_idmap_get(self->own.pending, id);
    if (item && item->link != link->index) {
        atomic_fetch_add_explicit(&self->tally.late, 1, memory_order_relaxed);
        return NULL;
    }
    return item;
}

static void s_on_result(cf_client_t *self, cf_client_link_t *link, cf_proto_msg_t *msg, int64_t now)
{
    for (size_t i = 0; i < msg->count; i++) {
        cf_proto_result_t *r = &msg->results[i];
        cf_client_item_t *item = s_item_for(self, link, r->id);
        if (!item) {
            self->own.stale++;    //  resolved already (a resend's twin)
            continue;
        }
        //  A result for a task we are resending (its first copy came
        //  through after all) resolves it just the same; only BUSY is
        //  ignored then.
        switch (r->status) {
        case CF_STATUS_OK: {
            cf_future_t *f = cf_future_ref(cf_client_item_task(item)->future);
            cf_client_task_forget(self, item);
            s_set_result(f, msg, r);
            cf_future_release(&f);
            self->own.freed++;
            break;
        }
        case CF_STATUS_ERROR:
            s_copy_text(self->own.err_type, r->error.type);
            s_copy_text(self->own.err_message, r->error.message);
            s_copy_text(self->own.err_host, r->error.host);
            cf_client_task_error(self, item, self->own.err_type, self->own.err_message,
                                 self->own.err_host, r->error.pid);
            self->own.freed++;
            break;
        case CF_STATUS_CANCELLED:
            cf_client_task_cancelled(self, item);
            self->own.freed++;
            break;
        case CF_STATUS_BUSY:
            if (item->where == CF_CLIENT_AT_BROKER)
                cf_client_task_park(self, item, now);
            break;
        default:
            self->own.malformed++;
            break;
        }
    }
}

static void s_on_started(cf_client_t *self, cf_client_link_t *link, cf_proto_msg_t *msg)
{
    for (size_t i = 0; i < msg->count; i++) {
        cf_client_item_t *item = s_item_for(self, link, msg->ids[i]);
        if (!item || item->started)
            continue;
        item->started = true;
        cf_future_set_running(cf_client_item_task(item)->future);
        if (item->cancel_asked)
            self->own.answered = true;
    }
}

//  PROGRESS: reports of running tasks (docs/protocol.md). A report says
//  the function began, as STARTED does; the future drops one older than
//  what it has, and one for a task no longer pending is stale.
static void s_on_progress(cf_client_t *self, cf_client_link_t *link, cf_proto_msg_t *msg)
{
    for (size_t i = 0; i < msg->count; i++) {
        const cf_proto_progress_t *p = &msg->progress[i];
        cf_client_item_t *item = s_item_for(self, link, p->id);
        if (!item) {
            self->own.stale++;
            continue;
        }
        if (!item->started) {
            item->started = true;
            cf_future_set_running(cf_client_item_task(item)->future);
            if (item->cancel_asked)
                self->own.answered = true;
        }
        //  Runs the future's progress callback here, on the actor (or a
        //  thread acting for it), like the done callbacks.
        cf_future_put_progress(cf_client_item_task(item)->future, p->seq, p->done, p->total,
                               p->partial, p->partial_len);
    }
}

static void s_on_heartbeat(cf_client_t *self, cf_client_link_t *link, cf_proto_msg_t *msg)
{
    if (msg->ivl_ms && msg->ivl_ms <= INT32_MAX) {
        link->broker_ivl_ms = msg->ivl_ms;
        //  The broker expires peers silent for liveness of ITS intervals:
        //  speak at least that often.
        int ivl = (int)msg->ivl_ms < self->ivl_ms ? (int)msg->ivl_ms : self->ivl_ms;
        if (ivl != link->send_ivl_ms) {
            link->send_ivl_ms = ivl;
            int64_t now = cf_clock_now_ms();
            if (link->next_heartbeat_ms > now + ivl)
                link->next_heartbeat_ms = now + ivl;
        }
    }
    if (msg->boot == 0)
        return;
    if (link->boot != 0 && msg->boot != link->boot) {
        cf_log_warn(S_LOG, "broker at %s restarted", link->endpoint);
        cf_client_task_resend_all(self, link, "broker restarted");
    }
    link->boot = msg->boot;
}

//  The answer to the STATS s_warn_waiting sent: a broker without workers
//  is worth a warning of its own.
static void s_on_stats(cf_client_t *self, cf_client_link_t *link, cf_proto_msg_t *msg)
{
    if (!link->stats_asked)
        return;
    link->stats_asked = false;
    for (size_t i = 0; i < msg->count; i++) {
        if (cf_proto_str_eq(msg->stats[i].name, "workers") && msg->stats[i].value == 0)
            cf_log_warn(S_LOG, "%zu tasks waiting: the broker at %s has no workers",
                        cf_idmap_size(self->own.pending), link->endpoint);
    }
}

static void s_on_error(cf_client_t *self, cf_client_link_t *link, cf_proto_msg_t *msg)
{
    s_copy_text(self->own.err_message, msg->text);
    if (msg->ref == 0 && strcmp(self->own.err_message, CF_PROTO_UNKNOWN_CLIENT) == 0) {
        //  It lost our tasks (or never had them): give them again. Unless
        //  we just did: within an interval of a resubmission the error
        //  answers a message sent before it, and the resubmission already
        //  introduced us (one per restart, docs/protocol.md section 7).
        if (link->resent_ms && cf_clock_now_ms() - link->resent_ms < link->send_ivl_ms)
            return;
        cf_client_task_resend_all(self, link, "broker does not know us");
        return;
    }
    if (msg->ref == 0
        && (strcmp(self->own.err_message, CF_PROTO_KEY_REVOKED) == 0
            || strcmp(self->own.err_message, CF_PROTO_NOT_ALLOWED) == 0)) {
        //  No retry can help: every task fails, as at a refused handshake.
        char why[sizeof self->own.err_message + 64];
        snprintf(why, sizeof why, "the broker at %s refused this client: %s", link->endpoint,
                 self->own.err_message);
        cf_client_link_refused(self, link, why);
        return;
    }
    cf_client_item_t *item = msg->ref ? s_item_for(self, link, msg->ref) : NULL;
    if (item) {
        cf_client_task_error(self, item, "ProtocolError", self->own.err_message, "", 0);
        return;
    }
    cf_log_warn_rated(S_LOG, "broker refused a message: %s", self->own.err_message);
}

void cf_client_recv_read(cf_client_t *self, cf_client_link_t *link)
{
    int64_t now = cf_clock_now_ms();
    for (int n = 0; n < S_RECV_BURST; n++) {
        cf_proto_msg_t *msg = NULL;
        cf_err_t rc = cf_proto_recv(link->socket, false, NULL, &msg);
        if (rc == CF_ETIMEDOUT)
            break;
        if (rc == CF_EPROTO) {
            self->own.malformed++;
            cf_log_debug(S_LOG, "malformed message from the broker dropped");
            continue;
        }
        if (rc != CF_OK) {
            if (rc != CF_ESYS || errno != ETERM)
                cf_log_warn_rated(S_LOG, "receive failed: %s", cf_strerror(rc));
            break;
        }
        s_contact(self, link, now);
        switch (msg->type) {
        case CF_MSG_RESULT:
            s_on_result(self, link, msg, now);
            self->own.progress_ms = now;    //  for s_warn_waiting
            break;
        case CF_MSG_STARTED:
            s_on_started(self, link, msg);
            self->own.progress_ms = now;
            break;
        case CF_MSG_PROGRESS:
            s_on_progress(self, link, msg);
            self->own.progress_ms = now;
            break;
        case CF_MSG_HEARTBEAT:
            s_on_heartbeat(self, link, msg);
            break;
        case CF_MSG_ERROR:
            s_on_error(self, link, msg);
            break;
        case CF_MSG_DISCONNECT:
            cf_client_link_lost(self, link, "it said goodbye");
            break;
        case CF_MSG_STATS:
            s_on_stats(self, link, msg);
            break;
        default:
            self->own.malformed++;
            cf_log_debug(S_LOG, "unexpected %s from the broker dropped",
                         cf_proto_command_name(msg->type));
            break;
        }
        cf_proto_msg_destroy(&msg);
    }
}

//  What the client's actor sends (cf_client_int.h has the map): SUBMIT
//  batches from the outbox, CANCEL, STOP, heartbeats; and a submitter that
//  finds the actor asleep sending for it (cf_client_send_kick).

#include "cf_client_int.h"

#include "cf_clock.h"
#include "cf_error.h"
#include "cf_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_LOG         "client"
//  A SUBMIT carries at most this many tasks or bytes (docs/protocol.md
//  promises about 1 MiB): large enough that the per-message cost vanishes,
//  small enough that the broker starts dispatching a burst before all of it
//  has arrived.
#define S_BATCH_TASKS 4096
#define S_BATCH_BYTES (1u * 1024 * 1024)

//  Any message is a sign of life: a heartbeat is due only after an
//  interval in which we sent nothing else.
void cf_client_send_sent(cf_client_link_t *link)
{
    link->last_sent_ms = cf_clock_now_ms();
    link->next_heartbeat_ms = link->last_sent_ms + link->send_ivl_ms;
}

cf_err_t cf_client_send_heartbeat(cf_client_t *self, cf_client_link_t *link)
{
    cf_proto_enc_begin(self->own.enc, CF_MSG_HEARTBEAT);
    cf_proto_enc_heartbeat(self->own.enc, 0, 0);
    return cf_proto_enc_send(self->own.enc, link->socket, NULL, 0);
}

//  Item i of a CANCEL or STOP batch being sent on link.
typedef cf_err_t(s_encode_item_fn)(cf_client_t *self, cf_client_link_t *link, size_t i);

static cf_err_t s_encode_cancel(cf_client_t *self, cf_client_link_t *link, size_t i)
{
    return cf_proto_enc_id(self->own.enc, link->cancel_ids[i]);
}

static cf_err_t s_encode_stop(cf_client_t *self, cf_client_link_t *link, size_t i)
{
    return cf_proto_enc_stop(self->own.enc, link->stop_items[i].id, link->stop_items[i].grace_ms);
}

//  Sends the count items waiting (CANCEL ids, STOP items) in batches of
//  type until done or the socket is at its high-water mark; returns how
//  many went (or were dropped: the cancellers time out and report false,
//  a stop then runs its course).
static size_t s_send_items(cf_client_t *self, cf_client_link_t *link, cf_msg_type_t type,
                           size_t count, s_encode_item_fn *encode)
{
    size_t sent = 0;
    while (sent < count && !link->blocked) {
        size_t n = count - sent;
        if (n > CF_PROTO_MAX_BATCH)
            n = CF_PROTO_MAX_BATCH;
        cf_proto_enc_begin(self->own.enc, type);
        cf_err_t rc = CF_OK;
        for (size_t i = 0; i < n && rc == CF_OK; i++)
            rc = encode(self, link, sent + i);
        if (rc == CF_OK)
            rc = cf_proto_enc_send(self->own.enc, link->socket, NULL, 0);
        if (rc == CF_OK) {
            sent += n;
            cf_client_send_sent(link);
        }
        else if (rc == CF_EBUSY)
            link->blocked = true;
        else {
            cf_log_warn_rated(S_LOG, "cannot send %s: %s", cf_proto_command_name(type),
                              cf_strerror(rc));
            sent += n;
        }
    }
    return sent;
}

void cf_client_send_cancels(cf_client_t *self, cf_client_link_t *link)
{
    size_t sent = s_send_items(self, link, CF_MSG_CANCEL, link->cancel_ids_len, s_encode_cancel);
    memmove(link->cancel_ids, link->cancel_ids + sent,
            (link->cancel_ids_len - sent) * sizeof *link->cancel_ids);
    link->cancel_ids_len -= sent;
}

//  Where the next batch goes, and how many tasks it may take. One broker:
//  there, whatever its state, as before there were lists (zmq queues what
//  a lost broker cannot take yet, and a reconnection resends). Several:
//  the usable link (cf_client_link_usable, not blocked) that holds the
//  fewest unanswered tasks, ties taken in turn, with at most an even share
//  of the outbox, so that a burst of a few long tasks spreads over every
//  broker rather than filling one batch. Fewest-held rather than plain
//  turns: a broker whose workers finish sooner frees its count sooner and
//  draws more, and one that came back after a loss, holding nothing, takes
//  the next tasks first. NULL when no link is usable: the tasks wait in the
//  outbox for the first broker that answers.
static cf_client_link_t *s_pick_link(cf_client_t *self, size_t *limit)
{
    *limit = S_BATCH_TASKS;
    if (self->links_len == 1)
        return self->links[0].blocked ? NULL : &self->links[0];
    cf_client_link_t *best = NULL;
    size_t usable = 0;
    for (size_t n = 0; n < self->links_len; n++) {
        cf_client_link_t *link = &self->links[(self->own.next_link + n) % self->links_len];
        if (!cf_client_link_usable(link))
            continue;
        usable++;
        if (!link->blocked && (!best || link->at_broker < best->at_broker))
            best = link;
    }
    if (!best)
        return NULL;
    self->own.next_link = (best->index + 1u) % (unsigned)self->links_len;
    size_t share = (cf_queue_size(&self->own.outbox) + usable - 1) / usable;
    if (share < *limit)
        *limit = share;
    return best;
}

//  Encodes the outbox into SUBMIT messages until it is empty or every
//  usable link is at its high-water mark (then the tasks stay for the next
//  iteration).
void cf_client_send_tasks(cf_client_t *self)
{
    size_t limit;
    cf_client_link_t *link;
    while (!cf_queue_empty(&self->own.outbox) && (link = s_pick_link(self, &limit))) {
        cf_proto_enc_begin(self->own.enc, CF_MSG_SUBMIT);
        size_t count = 0;
        cf_client_item_t *item = cf_client_front(&self->own.outbox);
        bool redo = false;
        while (item && count < limit) {
            cf_task_t *task = cf_client_item_task(item);
            size_t need = item->function_len + task->args_len + CF_CLIENT_TASK_OVERHEAD;
            if (count > 0 && cf_proto_enc_size(self->own.enc) + need > S_BATCH_BYTES)
                break;
            //  This client reads PROGRESS: every task asks for it.
            uint32_t flags = task->flags | CF_TASK_PROGRESS;
            cf_err_t rc = cf_proto_enc_submit(self->own.enc, item->id, cf_task_function(task),
                                              item->function_len, task->args, task->args_len,
                                              task->retries, task->timeout_ms, flags,
                                              task->priority, task->wait_ms);
            if (rc != CF_OK) {
                //  This task cannot travel; fail it alone and rebuild the
                //  message without it.
                char message[96];
                snprintf(message, sizeof message, "cannot encode the task: %s", cf_strerror(rc));
                cf_client_task_error(self, item, "ProtocolError", message, "", 0);
                redo = true;
                break;
            }
            count++;
            item = cf_client_item_of(cf_queue_next(&self->own.outbox, &item->node));
        }
        if (redo)
            continue;
        cf_err_t rc = cf_proto_enc_send(self->own.enc, link->socket, NULL, 0);
        if (rc == CF_EBUSY) {
            link->blocked = true;
            continue;
        }
        if (rc != CF_OK) {
            //  ETERM and the like: the loop ends at the next poll; keep the
            //  tasks so they are resolved at the end.
            cf_log_warn_rated(S_LOG, "cannot send SUBMIT: %s", cf_strerror(rc));
            link->blocked = true;
            continue;
        }
        uint64_t moved = 0;
        for (size_t i = 0; i < count; i++) {
            item = cf_client_pop_front(&self->own.outbox);
            moved += item->link != CF_CLIENT_NO_LINK && item->link != link->index;
            item->where = CF_CLIENT_AT_BROKER;
            item->link = link->index;
        }
        link->at_broker += count;
        if (moved)
            atomic_fetch_add_explicit(&self->tally.moved, moved, memory_order_relaxed);
        cf_client_send_sent(link);
    }
}

//  A submission found the actor asleep (or going to sleep): sends the inbox
//  from this thread when it can act for the actor (see the design note),
//  else wakes it. Only with nothing else in flight: a stream of submissions
//  sent one by one would cost a message and a send each, where the woken
//  actor batches what arrived meanwhile (measured: 2.5x fewer tasks/s).
//  An actor thread (a callback submitting) only wakes.
void cf_client_send_kick(cf_client_t *self)
{
    if (!cf_actor_enter(self->actor)) {
        cf_client_wake(self);
        return;
    }
    bool wake = true;
    if (cf_idmap_size(self->own.pending) == 0) {
        cf_client_task_drain_inbox(self);
        if (!self->own.terminated) {
            cf_client_send_tasks(self);
            //  cf_client_task_inbox_has_work also re-arms "signalled" for the next
            //  submission when nothing new came meanwhile.
            wake = !cf_queue_empty(&self->own.outbox) || self->own.resolved || self->own.answered
                   || self->own.reach_changed;
            for (size_t i = 0; i < self->links_len && !wake; i++) {
                const cf_client_link_t *link = &self->links[i];
                wake = link->blocked || link->cancel_ids_len || link->stop_items_len;
            }
            wake = wake || cf_client_task_inbox_has_work(self) || cf_client_send_readable(self);
        }
    }
    cf_actor_leave(self->actor, wake);
}

void cf_client_send_stops(cf_client_t *self, cf_client_link_t *link)
{
    size_t sent = s_send_items(self, link, CF_MSG_STOP, link->stop_items_len, s_encode_stop);
    memmove(link->stop_items, link->stop_items + sent,
            (link->stop_items_len - sent) * sizeof *link->stop_items);
    link->stop_items_len -= sent;
}

bool cf_client_send_readable(cf_client_t *self)
{
    for (size_t i = 0; i < self->links_len; i++) {
        if (self->links[i].socket && (cf_proto_events(self->links[i].socket) & ZMQ_POLLIN))
            return true;
    }
    return false;
}

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
void cf_client_send_sent(cf_client_t *self)
{
    self->own.last_sent_ms = cf_clock_now_ms();
    self->own.next_heartbeat_ms = self->own.last_sent_ms + self->own.send_ivl_ms;
}

cf_err_t cf_client_send_heartbeat(cf_client_t *self)
{
    cf_proto_enc_begin(self->own.enc, CF_MSG_HEARTBEAT);
    cf_proto_enc_heartbeat(self->own.enc, 0, 0);
    return cf_proto_enc_send(self->own.enc, self->socket, NULL, 0);
}

//  Item i of a CANCEL or STOP batch being sent.
typedef cf_err_t(s_encode_item_fn)(cf_client_t *self, size_t i);

static cf_err_t s_encode_cancel(cf_client_t *self, size_t i)
{
    return cf_proto_enc_id(self->own.enc, self->own.cancel_ids[i]);
}

static cf_err_t s_encode_stop(cf_client_t *self, size_t i)
{
    return cf_proto_enc_stop(self->own.enc, self->own.stop_items[i].id,
                             self->own.stop_items[i].grace_ms);
}

//  Sends the count items waiting (CANCEL ids, STOP items) in batches of
//  type until done or the socket is at its high-water mark; returns how
//  many went (or were dropped: the cancellers time out and report false,
//  a stop then runs its course).
static size_t s_send_items(cf_client_t *self, cf_msg_type_t type, size_t count,
                           s_encode_item_fn *encode)
{
    size_t sent = 0;
    while (sent < count && !self->own.blocked) {
        size_t n = count - sent;
        if (n > CF_PROTO_MAX_BATCH)
            n = CF_PROTO_MAX_BATCH;
        cf_proto_enc_begin(self->own.enc, type);
        cf_err_t rc = CF_OK;
        for (size_t i = 0; i < n && rc == CF_OK; i++)
            rc = encode(self, sent + i);
        if (rc == CF_OK)
            rc = cf_proto_enc_send(self->own.enc, self->socket, NULL, 0);
        if (rc == CF_OK) {
            sent += n;
            cf_client_send_sent(self);
        }
        else if (rc == CF_EBUSY)
            self->own.blocked = true;
        else {
            cf_log_warn_rated(S_LOG, "cannot send %s: %s", cf_proto_command_name(type),
                              cf_strerror(rc));
            sent += n;
        }
    }
    return sent;
}

void cf_client_send_cancels(cf_client_t *self)
{
    size_t sent = s_send_items(self, CF_MSG_CANCEL, self->own.cancel_ids_len, s_encode_cancel);
    memmove(self->own.cancel_ids, self->own.cancel_ids + sent,
            (self->own.cancel_ids_len - sent) * sizeof *self->own.cancel_ids);
    self->own.cancel_ids_len -= sent;
}

//  Encodes the outbox into SUBMIT messages until it is empty or the socket
//  is at its high-water mark (then the tasks stay for the next iteration).
void cf_client_send_tasks(cf_client_t *self)
{
    while (!cf_queue_empty(&self->own.outbox) && !self->own.blocked) {
        cf_proto_enc_begin(self->own.enc, CF_MSG_SUBMIT);
        size_t count = 0;
        cf_client_item_t *item = cf_client_front(&self->own.outbox);
        bool redo = false;
        while (item && count < S_BATCH_TASKS) {
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
        cf_err_t rc = cf_proto_enc_send(self->own.enc, self->socket, NULL, 0);
        if (rc == CF_EBUSY) {
            self->own.blocked = true;
            break;
        }
        if (rc != CF_OK) {
            //  ETERM and the like: the loop ends at the next poll; keep the
            //  tasks so they are resolved at the end.
            cf_log_warn_rated(S_LOG, "cannot send SUBMIT: %s", cf_strerror(rc));
            self->own.blocked = true;
            break;
        }
        for (size_t i = 0; i < count; i++) {
            item = cf_client_pop_front(&self->own.outbox);
            item->where = CF_CLIENT_AT_BROKER;
        }
        cf_client_send_sent(self);
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
            wake = !cf_queue_empty(&self->own.outbox) || self->own.blocked
                   || self->own.cancel_ids_len || self->own.stop_items_len || self->own.resolved
                   || self->own.answered || self->own.reach_changed
                   || cf_client_task_inbox_has_work(self)
                   || (cf_proto_events(self->socket) & ZMQ_POLLIN);
        }
    }
    cf_actor_leave(self->actor, wake);
}

void cf_client_send_stops(cf_client_t *self)
{
    size_t sent = s_send_items(self, CF_MSG_STOP, self->own.stop_items_len, s_encode_stop);
    memmove(self->own.stop_items, self->own.stop_items + sent,
            (self->own.stop_items_len - sent) * sizeof *self->own.stop_items);
    self->own.stop_items_len -= sent;
}

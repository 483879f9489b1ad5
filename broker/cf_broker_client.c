//  The broker's clients (see cf_broker_int.h): what a client sends
//  (SUBMIT, CANCEL, STATS, DISCONNECT), its queue, and its outbox: the
//  STARTED ids and RESULT items waiting to be sent, flushed once a turn.
//
//  A client whose tasks still wait in our queue gets its RESULTs gathered
//  into fuller messages (CF_BROKER_GATHER_ITEMS, CF_BROKER_GATHER_US).
//
//  An outbox holds what could not go yet (the client's pipe at its
//  high-water mark): STARTED first, then RESULTs, so a client never sees a
//  task's result before its start. After a refusal the flush backs off and
//  offers one item at a time; a client that stays unreachable for the
//  liveness period, or whose outbox outgrows CF_BROKER_MAX_OUTBOX, is lost.

#include "cf_broker_int.h"

#include "cf_clock.h"
#include "cf_error.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_LOG "broker"

// ---------------------------------------------------------------------------
//  Outboxes

static void s_client_mark_unsent(cf_broker_state_t *self, cf_broker_client_t *client)
{
    if (!cf_queue_linked(&client->flush_node))
        cf_queue_push_back(&self->flush, &client->flush_node);
}

//  asked: it answers the client (CANCEL, resubmission): send it at once.
void cf_broker_client_started(cf_broker_state_t *self, cf_broker_client_t *client, uint64_t id,
                              bool asked)
{
    if (client->started_count == client->started_cap) {
        size_t cap = client->started_cap ? client->started_cap * 2 : 64;
        uint64_t *started = realloc(client->started, cap * sizeof *started);
        if (!started) {
            //  STARTED is advice (the RESULT will still come), so under
            //  memory pressure it is the one thing we give up; counted.
            self->stats.dropped++;
            cf_log_warn_rated(S_LOG, "out of memory: STARTED for task %" PRIu64 " not sent", id);
            return;
        }
        client->out_bytes += (cap - client->started_cap) * sizeof *started;
        client->started = started;
        client->started_cap = cap;
    }
    if (asked)
        client->started_due_ms = 0;
    else if (client->started_count == 0)
        client->started_due_ms = cf_clock_now_ms() + CF_BROKER_STARTED_DELAY_MS;
    client->started[client->started_count++] = id;
    s_client_mark_unsent(self, client);
}

//  Appends an outbox item for client task id with data_len bytes of data,
//  which the caller fills in; NULL when out of memory (the result is lost:
//  counted as dropped, logged).
static cf_broker_out_t *s_out_add(cf_broker_state_t *self, cf_broker_client_t *client, uint64_t id,
                                  cf_status_t status, size_t data_len)
{
    //  Its progress record goes once its last report went (before this).
    cf_broker_progress_finished(self, client, id);
    size_t size = sizeof(cf_broker_out_t) + data_len;
    cf_broker_out_t *out = malloc(size);
    if (!out) {
        self->stats.dropped++;
        cf_log_error_rated(S_LOG, "out of memory: result of task %" PRIu64 " for client %s lost",
                           id, client->peer.label);
        return NULL;
    }
    *out = (cf_broker_out_t){ .id = id, .status = (uint8_t)status };
    if (client->out_tail)
        client->out_tail->next = out;
    else {
        client->out_head = out;
        client->out_since_us = cf_clock_now_us();
    }
    client->out_tail = out;
    client->out_count++;
    client->out_bytes += size;
    s_client_mark_unsent(self, client);
    return out;
}

static void s_result_status(cf_broker_state_t *self, cf_broker_client_t *client, uint64_t id,
                            cf_status_t status)
{
    (void)s_out_add(self, client, id, status, 0);
}

void cf_broker_client_cancelled(cf_broker_state_t *self, cf_broker_task_t *task)
{
    s_result_status(self, task->client, task->client_task_id, CF_STATUS_CANCELLED);
    self->stats.cancelled++;
    cf_broker_task_finish(self, task);
}

void cf_broker_client_result_ok(cf_broker_state_t *self, cf_broker_client_t *client, uint64_t id,
                                const void *value, size_t value_len)
{
    client->completed++;
    uint8_t head[CF_PROTO_RESULT_HEAD_MAX];
    //  One too big to forward takes the usual path, which answers it with
    //  an error.
    size_t head_len = value_len >= CF_BROKER_WHOLE_MIN
                              && value_len + CF_PROTO_RESULT_HEAD_MAX <= CF_BROKER_MAX_BODY
                          ? cf_proto_result_ok_head(head, id, value_len)
                          : 0;
    cf_broker_out_t *out = s_out_add(self, client, id, CF_STATUS_OK, head_len + value_len);
    if (!out)
        return;
    out->whole = head_len > 0;
    out->value_len = (uint32_t)(head_len + value_len);
    memcpy(out->data, head, head_len);
    if (value_len)
        memcpy(out->data + head_len, value, value_len);
}

void cf_broker_client_result_error(cf_broker_state_t *self, cf_broker_client_t *client, uint64_t id,
                                   cf_proto_str_t type, cf_proto_str_t message,
                                   cf_proto_str_t function, cf_proto_str_t host, int32_t pid)
{
    client->failed++;
    //  The codec refuses an empty type; a worker that sent one still failed.
    if (!type.ptr || type.len == 0)
        type = (cf_proto_str_t){ "Error", 5 };
    cf_proto_str_t parts[4] = { type, message, function, host };
    size_t total = 0;
    for (int i = 0; i < 4; i++) {
        if (!parts[i].ptr)
            parts[i].len = 0;
        total += parts[i].len + 1;
    }
    cf_broker_out_t *out = s_out_add(self, client, id, CF_STATUS_ERROR, total);
    if (!out)
        return;
    out->pid = pid;
    uint8_t *at = out->data;
    for (int i = 0; i < 4; i++) {
        if (parts[i].len)
            memcpy(at, parts[i].ptr, parts[i].len);
        //  An embedded NUL would cut the string short: harmless, and the
        //  wire format has no way to carry it into a C string anyway.
        at[parts[i].len] = '\0';
        at += parts[i].len + 1;
    }
}

static cf_proto_str_t s_text(const char *s)
{
    return (cf_proto_str_t){ s, s ? strlen(s) : 0 };
}

//  A runtime error made by the broker (WorkerLost, TimeoutError).
void cf_broker_client_runtime_error(cf_broker_state_t *self, cf_broker_task_t *task,
                                    const char *type, const char *message)
{
    cf_broker_worker_t *worker = task->worker;
    cf_broker_client_result_error(self, task->client, task->client_task_id, s_text(type),
                                  s_text(message), cf_broker_task_wire_function(task),
                                  s_text(worker ? worker->host : ""), worker ? worker->pid : 0);
}

//  Encodes one outbox item; CF_ETOOBIG or CF_ENOMEM when it cannot be.
// ---------------------------------------------------------------------------
//  Flushing outboxes

static cf_err_t s_encode_out(cf_broker_state_t *self, const cf_broker_out_t *out)
{
    switch (out->status) {
    case CF_STATUS_OK:
        return cf_proto_enc_result_ok(self->enc, out->id, out->data, out->value_len);
    case CF_STATUS_ERROR: {
        const char *type = (const char *)out->data;
        const char *message = type + strlen(type) + 1;
        const char *function = message + strlen(message) + 1;
        const char *host = function + strlen(function) + 1;
        return cf_proto_enc_result_error(self->enc, out->id, type, message, function, host,
                                         out->pid);
    }
    default:
        return cf_proto_enc_result_status(self->enc, out->id, (cf_status_t)out->status);
    }
}

static size_t s_out_size(const cf_broker_out_t *out)
{
    if (out->status == CF_STATUS_ERROR) {
        size_t n = 0;
        const char *p = (const char *)out->data;
        for (int i = 0; i < 4; i++) {
            size_t len = strlen(p);
            n += len + 1;
            p += len + 1;
        }
        return sizeof *out + n;
    }
    return sizeof *out + out->value_len;
}

//  A send to a client was refused: keep what we have and remember since when.
static void s_client_refused(cf_broker_state_t *self, cf_broker_client_t *client, cf_err_t rc)
{
    self->stats.deferred++;
    int64_t now = cf_clock_now_ms();
    client->retry_delay_ms = client->retry_delay_ms ? client->retry_delay_ms * 2
                                                    : CF_BROKER_RETRY_MS;
    if (client->retry_delay_ms > CF_BROKER_RETRY_MAX_MS)
        client->retry_delay_ms = CF_BROKER_RETRY_MAX_MS;
    client->retry_at_ms = now + client->retry_delay_ms;
    if (!client->unreachable_since_ms) {
        client->unreachable_since_ms = now;
        cf_log_debug(S_LOG, "client %s unreachable (%s), keeping %zu results", client->peer.label,
                     cf_strerror(rc), client->out_count);
    }
}

//  A send went through: it reads (slow is not lost), full batches again.
static void s_client_reached(cf_broker_client_t *client)
{
    client->unreachable_since_ms = 0;
    client->retry_delay_ms = 0;
    client->retry_at_ms = 0;
}

//  Sends the outbox's STARTED ids in as few messages as the limits allow.
//  False when a send was refused (what is left waits).
static bool s_flush_started(cf_broker_state_t *self, cf_broker_client_t *client)
{
    while (client->started_count) {
        cf_proto_enc_begin(self->enc, CF_MSG_STARTED);
        size_t n = 0;
        while (n < client->started_count && n < CF_PROTO_MAX_BATCH) {
            if (cf_proto_enc_id(self->enc, client->started[n]) != CF_OK)
                break;
            n++;
        }
        //  Not even one id fits: only out of memory gets here. Retry later.
        cf_err_t rc = n == 0 ? CF_ENOMEM
                             : cf_proto_enc_send(self->enc, self->clients_sock, client->peer.id,
                                                 client->peer.id_len);
        if (rc != CF_OK) {
            s_client_refused(self, client, rc);
            return false;
        }
        memmove(client->started, client->started + n,
                (client->started_count - n) * sizeof *client->started);
        client->started_count -= n;
        //  A small STARTED getting through says little: only a RESULT
        //  going through (or an empty outbox) ends the backoff.
    }
    if (client->started_cap > 1024) {
        //  A burst is over: give its memory back.
        client->out_bytes -= client->started_cap * sizeof *client->started;
        free(client->started);
        client->started = NULL;
        client->started_cap = 0;
    }
    return true;
}

//  Adds one outbox item (item bytes with overhead) to the RESULT body that
//  holds n items. CF_OK, CF_ETOOBIG when it does not fit after them (it
//  leads the next body), CF_ENOMEM. An item that can never be forwarded
//  goes as an error in its place.
static cf_err_t s_encode_item(cf_broker_state_t *self, const cf_broker_out_t *out, size_t item,
                              size_t n)
{
    //  A failed item leaves the body as it was (the codec rolls back).
    cf_err_t rc = item > CF_BROKER_MAX_BODY ? CF_ETOOBIG : s_encode_out(self, out);
    if (rc == CF_ETOOBIG && n > 0)
        return rc;
    if (rc == CF_ETOOBIG || rc == CF_EINVAL) {
        //  Items are checked when they enter the outbox, so this is our
        //  mistake; still, the client gets an error in its place rather
        //  than nothing.
        char message[160];
        snprintf(message, sizeof message,
                 "the result of task %" PRIu64 " could not be forwarded: %s", out->id,
                 cf_strerror(rc));
        if (cf_broker_log_task(self))
            cf_log_error(S_LOG, "%s", message);
        rc = cf_proto_enc_result_error(self->enc, out->id, "ProtocolError", message, "", "", 0);
    }
    return rc;
}

//  Encodes one RESULT body from the head of the outbox: as many items as
//  the size limits allow, one while the client is unreachable (a probe
//  whether it reads again). *count gets how many. CF_OK or CF_ENOMEM (the
//  body is dropped).
static cf_err_t s_encode_results(cf_broker_state_t *self, cf_broker_client_t *client, size_t *count)
{
    cf_proto_enc_begin(self->enc, CF_MSG_RESULT);
    size_t n = 0, body = 0;
    size_t max_items = client->unreachable_since_ms ? 1 : CF_PROTO_MAX_BATCH;
    cf_broker_out_t *out = client->out_head;
    for (; out && n < max_items && !out->whole; out = out->next) {
        size_t item = s_out_size(out) + CF_BROKER_ITEM_OVERHEAD;
        if (n > 0 && body + item > CF_BROKER_MAX_BODY)
            break;
        cf_err_t rc = s_encode_item(self, out, item, n);
        if (rc == CF_ETOOBIG)
            break;    //  send what fits
        if (rc != CF_OK) {
            cf_proto_enc_begin(self->enc, CF_MSG_RESULT);
            return rc;
        }
        body += item;
        n++;
    }
    *count = n;
    return CF_OK;
}

//  Frees the outbox's first n items: they went.
static void s_results_sent(cf_broker_client_t *client, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        cf_broker_out_t *sent = client->out_head;
        client->out_head = sent->next;
        client->out_bytes -= s_out_size(sent);
        free(sent);
        client->out_count--;
    }
    if (!client->out_head)
        client->out_tail = NULL;
}

static void s_free_whole(void *body, void *hint)
{
    (void)body;
    free(hint);
}

//  Sends the outbox's first item, a whole body, handing it to ZeroMQ: the
//  outbox forgets it first, for ZeroMQ's I/O thread frees it once sent.
static cf_err_t s_send_whole(cf_broker_state_t *self, cf_broker_client_t *client)
{
    cf_broker_out_t *out = client->out_head;
    cf_broker_out_t *next = out->next;
    size_t size = s_out_size(out);
    cf_err_t rc = cf_proto_send_body(self->clients_sock, client->peer.id, client->peer.id_len,
                                     CF_MSG_RESULT, out->data, out->value_len, s_free_whole, out);
    if (rc != CF_OK)
        return rc;
    client->out_head = next;
    if (!next)
        client->out_tail = NULL;
    client->out_bytes -= size;
    client->out_count--;
    return CF_OK;
}

//  Sends the outbox's RESULT items. False when a send was refused or out
//  of memory (what is left waits).
static bool s_flush_results(cf_broker_state_t *self, cf_broker_client_t *client)
{
    while (client->out_head) {
        size_t n = 0;
        cf_err_t rc;
        if (client->out_head->whole)
            rc = s_send_whole(self, client);
        else {
            rc = s_encode_results(self, client, &n);
            if (rc == CF_OK)
                rc = cf_proto_enc_send(self->enc, self->clients_sock, client->peer.id,
                                       client->peer.id_len);
            if (rc == CF_OK)
                s_results_sent(client, n);
        }
        if (rc != CF_OK) {
            s_client_refused(self, client, rc);
            return false;
        }
        s_client_reached(client);
    }
    return true;
}

//  Sends the outbox's progress reports (cf_broker_progress.c), after
//  STARTED and before RESULTs. False when a send was refused.
static bool s_flush_progress(cf_broker_state_t *self, cf_broker_client_t *client)
{
    if (!cf_broker_progress_unsent(client))
        return true;
    cf_err_t rc = cf_broker_progress_flush(self, client);
    if (rc != CF_OK) {
        s_client_refused(self, client, rc);
        return false;
    }
    return true;
}

//  Sends what the client's outbox holds: STARTED first, then progress
//  reports, then RESULTs, so a client never sees a task's result before its
//  start, nor a task's last report after its result. Returns true when
//  everything went.
static bool s_gathering(cf_broker_state_t *self, const cf_broker_client_t *client)
{
    //  Only RESULTs are held: STARTED and progress have their own timing.
    //  A stopping broker sends what it has: a result it held would make
    //  the client run the task again elsewhere.
    if (self->terminated || !client->queued || client->out_count >= CF_BROKER_GATHER_ITEMS
        || client->out_bytes >= CF_BROKER_GATHER_BYTES || client->started_count
        || cf_broker_progress_unsent(client)
        || cf_clock_now_us() - client->out_since_us >= CF_BROKER_GATHER_US)
        return false;
    self->gathering = true;
    return true;
}

static bool s_client_flush(cf_broker_state_t *self, cf_broker_client_t *client)
{
    if (s_gathering(self, client))
        return false;
    if (client->started_count && !client->out_head && !cf_broker_progress_unsent(client)
        && client->started_due_ms > cf_clock_now_ms())
        return false;    //  not due: wait for a RESULT (or a report) to go with
    if (!s_flush_started(self, client) || !s_flush_progress(self, client)
        || !s_flush_results(self, client))
        return false;
    s_client_reached(client);
    return true;
}

void cf_broker_client_flush_all(cf_broker_state_t *self)
{
    cf_queue_node_t *node = cf_queue_front(&self->flush), *next;
    self->gathering = false;
    for (; node; node = next) {
        next = cf_queue_next(&self->flush, node);
        cf_broker_client_t *client = cf_queue_entry(node, cf_broker_client_t, flush_node);
        if (client->retry_at_ms && cf_clock_now_ms() < client->retry_at_ms)
            continue;
        if (s_client_flush(self, client))
            cf_queue_remove(&self->flush, node);
        else if (client->out_bytes > CF_BROKER_MAX_OUTBOX)
            cf_broker_client_lost(self, client, "not reading its results");
    }
}

// ---------------------------------------------------------------------------
//  Clients and their messages

static cf_broker_client_t *s_client_new(cf_broker_state_t *self, const void *id, size_t len,
                                        int64_t now)
{
    cf_broker_client_t *client = (cf_broker_client_t *)cf_broker_peer_new(
        self, false, sizeof *client, id, len, now);
    if (!client)
        return NULL;
    cf_queue_init(&client->lanes);
    cf_queue_init(&client->order);
    cf_queue_node_init(&client->ring_node);
    cf_queue_node_init(&client->flush_node);
    cf_queue_init(&client->progress_out);
    client->tasks = cf_idmap_new(16);
    client->lane_map = cf_idmap_new_dense(4);
    if (!client->tasks || !client->lane_map) {
        cf_idmap_destroy(&client->tasks);
        cf_idmap_destroy(&client->lane_map);
        cf_broker_peer_remove(self, &client->peer, false);
        free(client);
        return NULL;
    }
    return client;
}

void cf_broker_client_lost(cf_broker_state_t *self, cf_broker_client_t *client, const char *reason)
{
    //  Queued tasks go; tasks on workers stay there (the slot is taken until
    //  the worker answers) but their results will be dropped.
    size_t cursor = 0, orphaned = 0;
    void *value;
    while (cf_idmap_next(client->tasks, &cursor, NULL, &value)) {
        cf_broker_task_t *task = value;
        if (task->state == CF_BROKER_RUNNING) {
            cf_broker_task_unwatch(self, task);
            task->state = CF_BROKER_ORPHANED;
            task->client = NULL;
            self->running--;
            orphaned++;
        }
    }
    size_t queued = cf_broker_queue_drop_client(self, client);
    cf_queue_node_t *node, *next;
    for (node = cf_queue_front(&self->suspects); node; node = next) {
        next = cf_queue_next(&self->suspects, node);
        cf_broker_task_t *task = cf_queue_entry(node, cf_broker_task_t, node);
        if (task->client == client) {
            cf_queue_remove(&self->suspects, node);
            cf_broker_task_free(self, task);
            queued++;
        }
    }
    size_t unsent = client->out_count;
    self->stats.dropped += queued + unsent;
    while (client->out_head) {
        cf_broker_out_t *out = client->out_head;
        client->out_head = out->next;
        free(out);
    }
    free(client->started);
    cf_broker_progress_drop_client(self, client);
    cf_log_info(S_LOG,
                "client %s lost (%s): %zu queued tasks dropped, %zu running, %zu results unsent",
                client->peer.label, reason, queued, orphaned, unsent);
    if (cf_queue_linked(&client->flush_node))
        cf_queue_remove(&self->flush, &client->flush_node);
    cf_broker_peer_remove(self, &client->peer, false);
    cf_idmap_destroy(&client->tasks);
    cf_idmap_destroy(&client->lane_map);
    free(client);
}

//  A task of a SUBMIT that cannot be taken (the codec says why): it fails
//  alone, with a ProtocolError under its id, and the rest of its batch goes
//  on. Counted as failed (a status 1 result) and as malformed input.
static void s_client_refuse(cf_broker_state_t *self, cf_broker_client_t *client,
                            const cf_proto_task_t *t)
{
    char message[160];
    snprintf(message, sizeof message, "task refused by the broker: %s", t->refused);
    cf_broker_client_result_error(self, client, t->id, s_text("ProtocolError"), s_text(message),
                                  t->function, s_text(""), 0);
    self->stats.failed++;
    self->stats.malformed++;
    if (cf_broker_log_event(self))
        cf_log_debug(S_LOG, "client %s: task %" PRIu64 " refused: %s", client->peer.label, t->id,
                     t->refused);
}

static void s_client_submit(cf_broker_state_t *self, cf_broker_client_t *client,
                            const cf_proto_msg_t *msg)
{
    size_t busy = 0;
    int64_t now = cf_clock_now_ms();
    for (size_t i = 0; i < msg->count; i++) {
        const cf_proto_task_t *t = &msg->tasks[i];
        cf_broker_task_t *known = cf_idmap_get(client->tasks, t->id);
        if (known) {
            //  A resubmission (the client thought we were gone): the task is
            //  still here, so only say where it is.
            if (known->state == CF_BROKER_RUNNING && (known->marks & CF_BROKER_BEGUN))
                cf_broker_client_started(self, client, t->id, true);
            if (cf_broker_log_event(self))
                cf_log_debug(S_LOG, "client %s resubmitted task %" PRIu64, client->peer.label,
                             t->id);
            continue;
        }
        if (t->refused) {
            s_client_refuse(self, client, t);
            continue;
        }
        if (self->queued >= self->max_queued || client->queued >= self->max_queued_per_client) {
            s_result_status(self, client, t->id, CF_STATUS_BUSY);
            busy++;
            continue;
        }
        cf_broker_task_t *task = cf_broker_task_new(self, client, t);
        if (!task) {
            //  Out of memory, or past our fields' limits: refused as busy.
            s_result_status(self, client, t->id, CF_STATUS_BUSY);
            busy++;
            continue;
        }
        cf_broker_queue_push(self, task, false, now);
        self->stats.submitted++;
        client->submitted++;
    }
    self->stats.busy += busy;
    if (busy && cf_broker_log_event(self))
        cf_log_debug(S_LOG, "client %s: %zu of %zu tasks refused as busy (%zu queued)",
                     client->peer.label, busy, msg->count, self->queued);
}

static void s_client_cancel(cf_broker_state_t *self, cf_broker_client_t *client,
                            const cf_proto_msg_t *msg)
{
    for (size_t i = 0; i < msg->count; i++) {
        cf_broker_task_t *task = cf_idmap_get(client->tasks, msg->ids[i]);
        if (!task)
            continue;    //  done already, or never ours: nothing to say
        if (task->state == CF_BROKER_QUEUED) {
            cf_broker_task_unqueue(self, task);
            cf_broker_client_cancelled(self, task);
        }
        else if (!cf_broker_worker_cancel(self, task))
            cf_broker_client_started(self, client, task->client_task_id, true);
    }
}

void cf_broker_client_on_message(cf_broker_state_t *self, const void *id, size_t len,
                                 cf_proto_msg_t *msg)
{
    int64_t now = cf_clock_now_ms();
    cf_broker_client_t *client = (cf_broker_client_t *)cf_broker_peer_seen(self->client_table, id,
                                                                           len, now);
    switch (msg->type) {
    case CF_MSG_SUBMIT:
        if (!client) {
            client = s_client_new(self, id, len, now);
            if (!client) {
                //  Nowhere to keep it: refuse the whole batch as busy.
                cf_log_error(S_LOG, "out of memory: new client refused");
                cf_proto_enc_begin(self->enc, CF_MSG_RESULT);
                for (size_t i = 0; i < msg->count; i++)
                    (void)cf_proto_enc_result_status(self->enc, msg->tasks[i].id, CF_STATUS_BUSY);
                self->stats.busy += msg->count;
                (void)cf_proto_enc_send(self->enc, self->clients_sock, id, len);
                return;
            }
            cf_log_info(S_LOG, "client %s joined", client->peer.label);
        }
        s_client_submit(self, client, msg);
        break;
    case CF_MSG_CANCEL:
        if (client)
            s_client_cancel(self, client, msg);
        else
            cf_broker_peer_unknown(self, self->clients_sock, id, len, CF_PROTO_UNKNOWN_CLIENT);
        break;
    case CF_MSG_STOP:
        if (client)
            cf_broker_stop_client(self, client, msg);
        else
            cf_broker_peer_unknown(self, self->clients_sock, id, len, CF_PROTO_UNKNOWN_CLIENT);
        break;
    case CF_MSG_HEARTBEAT:
        if (!client)
            cf_broker_peer_unknown(self, self->clients_sock, id, len, CF_PROTO_UNKNOWN_CLIENT);
        break;
    case CF_MSG_STATS:
        if (!client)
            cf_broker_peer_unknown(self, self->clients_sock, id, len, NULL);
        cf_broker_stats_reply(self, id, len, msg->stats_flags);
        break;
    case CF_MSG_DISCONNECT:
        if (client)
            cf_broker_client_lost(self, client, "disconnected");
        break;
    default:
        cf_broker_peer_unexpected(self, self->clients_sock, id, len, msg->type);
        break;
    }
}

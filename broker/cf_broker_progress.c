//  The broker's part of PROGRESS (docs/protocol.md): reports of running
//  tasks from workers, forwarded to the tasks' clients through their
//  outboxes.
//
//  Design note. A client gets a record per task that reported, in a map
//  by its task id (made on the first report, so clients whose tasks never
//  report pay one NULL pointer). The record holds the latest report not
//  yet sent: a newer one replaces it in place (latest wins: done, total,
//  and the partial value when the newer one brings one), so a client that
//  reads slowly costs one report per running task, never a queue of them.
//  Records with something to send are in the client's progress_out list;
//  the flush sends them after STARTED and before RESULTs, so a task's last
//  report goes before its result. The record also numbers the reports the
//  client gets (seq), one count per task whatever worker ran it, so a
//  retried task's reports still grow. It goes when the task's result is
//  queued, or, if a report still waits then, once that is sent.
//
//  Who gets what: only a task whose SUBMIT carried flag PROGRESS (the
//  client reads PROGRESS) has its reports forwarded; a client older than
//  the command gets none. An item for a task that is not running on the
//  worker that sent it (finished, timed out, retried elsewhere, never
//  there) is stale: counted as ignored, logged at debug, rate-limited.

#include "cf_broker_int.h"

#include "cf_clock.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#define S_LOG "broker"

//  A client's record of one task's reports.
typedef struct {
    cf_queue_node_t node;    //  in client->progress_out while a report waits
    uint64_t id;             //  the client's task id
    uint32_t seq;            //  the last seq given to the client's reports
    bool finished;           //  its result is queued: freed once sent
    uint64_t done, total;    //  the waiting report
    uint8_t *partial;        //  its partial value (malloc'd), NULL when none
    size_t partial_len;
} s_record_t;

static size_t s_record_bytes(const s_record_t *record)
{
    return sizeof *record + record->partial_len;
}

static void s_record_free(cf_broker_client_t *client, s_record_t *record)
{
    client->out_bytes -= s_record_bytes(record);
    free(record->partial);
    free(record);
}

bool cf_broker_progress_unsent(const cf_broker_client_t *client)
{
    return !cf_queue_empty(&client->progress_out);
}

//  The client's record of task, made on its first report; NULL when out of
//  memory.
static s_record_t *s_record_of(cf_broker_client_t *client, uint64_t id)
{
    if (!client->progress) {
        client->progress = cf_idmap_new(16);
        if (!client->progress)
            return NULL;
    }
    s_record_t *record = cf_idmap_get(client->progress, id);
    if (record)
        return record;
    record = calloc(1, sizeof *record);
    if (!record)
        return NULL;
    cf_queue_node_init(&record->node);
    record->id = id;
    if (cf_idmap_put(client->progress, id, record) != CF_OK) {
        free(record);
        return NULL;
    }
    client->out_bytes += sizeof *record;
    return record;
}

//  One item for a running task of this worker's: kept as the client's
//  latest. False when stale.
static bool s_forward(cf_broker_state_t *self, cf_broker_worker_t *worker,
                      const cf_proto_progress_t *item)
{
    cf_broker_task_t *task = cf_idmap_get(self->tasks, item->id);
    if (!task || task->worker != worker || task->state != CF_BROKER_RUNNING || !task->client)
        return false;
    if (!(task->flags & CF_TASK_PROGRESS))
        return true;    //  its client does not read PROGRESS: nothing to do
    cf_broker_client_t *client = task->client;
    s_record_t *record = s_record_of(client, task->client_task_id);
    uint8_t *partial = NULL;
    if (record && item->partial) {
        partial = malloc(item->partial_len);
        if (partial)
            memcpy(partial, item->partial, item->partial_len);
    }
    if (!record || (item->partial && !partial)) {
        free(partial);
        self->stats.dropped++;
        cf_log_warn_rated(S_LOG, "out of memory: a progress report of task %" PRIu64 " dropped",
                          task->client_task_id);
        return true;
    }
    record->done = item->done;
    record->total = item->total;
    if (partial) {
        //  A newer partial replaces one not sent; a report without one
        //  leaves it to go with this one.
        client->out_bytes -= record->partial_len;
        free(record->partial);
        record->partial = partial;
        record->partial_len = item->partial_len;
        client->out_bytes += record->partial_len;
    }
    if (!cf_queue_linked(&record->node))
        cf_queue_push_back(&client->progress_out, &record->node);
    if (!cf_queue_linked(&client->flush_node))
        cf_queue_push_back(&self->flush, &client->flush_node);
    return true;
}

void cf_broker_progress_from_worker(cf_broker_state_t *self, cf_broker_worker_t *worker,
                                    const cf_proto_msg_t *msg)
{
    size_t stale = 0;
    for (size_t i = 0; i < msg->count; i++) {
        if (!s_forward(self, worker, &msg->progress[i]))
            stale++;
    }
    if (stale == 0)
        return;
    self->stats.ignored += stale;
    if (cf_broker_log_event(self))
        cf_log_debug(S_LOG, "worker %s: %zu progress reports for tasks not running there ignored",
                     worker->peer.label, stale);
}

void cf_broker_progress_finished(cf_broker_state_t *self, cf_broker_client_t *client, uint64_t id)
{
    (void)self;
    if (!client->progress)
        return;
    s_record_t *record = cf_idmap_remove(client->progress, id);
    if (!record)
        return;
    if (cf_queue_linked(&record->node))
        record->finished = true;    //  its last report goes first, then it
    else
        s_record_free(client, record);
}

//  The records sent: their reports went.
static void s_sent(cf_broker_client_t *client, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        cf_queue_node_t *node = cf_queue_pop_front(&client->progress_out);
        s_record_t *record = cf_queue_entry(node, s_record_t, node);
        if (record->finished) {
            s_record_free(client, record);
            continue;
        }
        client->out_bytes -= record->partial_len;
        free(record->partial);
        record->partial = NULL;
        record->partial_len = 0;
    }
}

cf_err_t cf_broker_progress_flush(cf_broker_state_t *self, cf_broker_client_t *client)
{
    while (!cf_queue_empty(&client->progress_out)) {
        cf_proto_enc_begin(self->enc, CF_MSG_PROGRESS);
        size_t n = 0, body = 0;
        cf_queue_node_t *node = cf_queue_front(&client->progress_out);
        for (; node; node = cf_queue_next(&client->progress_out, node)) {
            s_record_t *record = cf_queue_entry(node, s_record_t, node);
            size_t item = record->partial_len + CF_BROKER_ITEM_OVERHEAD;
            if (n > 0 && body + item > CF_BROKER_MAX_BODY)
                break;
            //  The seq of a report never sent is given again to the next.
            uint32_t seq = record->seq + 1 ? record->seq + 1 : 1;
            if (cf_proto_enc_progress(self->enc, record->id, seq, record->done, record->total,
                                      record->partial, record->partial_len)
                != CF_OK)
                break;    //  the batch is full (or out of memory): send what is there
            body += item;
            n++;
        }
        cf_err_t rc = n == 0 ? CF_ENOMEM
                             : cf_proto_enc_send(self->enc, self->clients_sock, client->peer.id,
                                                 client->peer.id_len);
        if (rc != CF_OK)
            return rc;    //  kept: newer reports replace them meanwhile
        node = cf_queue_front(&client->progress_out);
        for (size_t i = 0; i < n; i++, node = cf_queue_next(&client->progress_out, node)) {
            s_record_t *record = cf_queue_entry(node, s_record_t, node);
            record->seq = record->seq + 1 ? record->seq + 1 : 1;
        }
        s_sent(client, n);
    }
    return CF_OK;
}

void cf_broker_progress_drop_client(cf_broker_state_t *self, cf_broker_client_t *client)
{
    (void)self;
    cf_queue_node_t *node;
    while ((node = cf_queue_pop_front(&client->progress_out))) {
        s_record_t *record = cf_queue_entry(node, s_record_t, node);
        if (record->finished)
            s_record_free(client, record);
    }
    if (!client->progress)
        return;
    size_t cursor = 0;
    void *value;
    while (cf_idmap_next(client->progress, &cursor, NULL, &value))
        s_record_free(client, value);
    cf_idmap_destroy(&client->progress);
}

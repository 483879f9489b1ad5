//  The dispatch of queued tasks to workers with credit (see
//  cf_broker_int.h): module cf_broker_dispatch.
//
//  In two steps: planning picks tasks for workers one at a time (so 4
//  tasks and 4 idle workers means one each, not 4 on the first), putting
//  each on its worker's running list still unsent; sending then encodes
//  each worker's planned tasks, the last worker->plan of its running list,
//  into as few TASK messages as the size limits allow.

#include "cf_broker_int.h"

#include "cf_clock.h"
#include "cf_error.h"

#include <inttypes.h>
#include <stdio.h>

#define S_LOG "broker"

//  Fails a task that can never be dispatched (it cannot be encoded).
static void s_task_undispatchable(cf_broker_state_t *self, cf_broker_task_t *task, cf_err_t rc)
{
    char message[512];
    snprintf(message, sizeof message, "task %" PRIu64 " (%s) cannot be sent to a worker: %s",
             task->client_task_id, cf_broker_task_function(task), cf_strerror(rc));
    if (cf_broker_log_task(self))
        cf_log_warn(S_LOG, "%s", message);
    cf_broker_client_runtime_error(self, task, "ProtocolError", message);
    self->stats.failed++;
    cf_broker_task_finish(self, task);
}

//  Takes task, just picked for worker, onto its running list, unsent.
static void s_plan_task(cf_broker_worker_t *worker, cf_broker_task_t *task)
{
    task->worker = worker;
    task->results_before = worker->results;
    if (task->marks & CF_BROKER_SUSPECT)
        worker->suspects++;
    cf_queue_push_back(&worker->running, &task->node);
    if (worker->plan++ == 0)
        worker->plan_first = &task->node;
}

//  The last count tasks of worker->running were never sent: back to the
//  front of their lanes, last first, so each lane keeps its order.
static void s_unplan(cf_broker_state_t *self, cf_broker_worker_t *worker, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        cf_broker_task_t *task = cf_queue_entry(cf_queue_back(&worker->running), cf_broker_task_t,
                                                node);
        cf_broker_task_unassign(self, task);
        cf_broker_task_requeue(self, task);
    }
}

//  The count tasks from first on worker->running went out in a TASK.
static void s_sent(cf_broker_state_t *self, cf_broker_worker_t *worker, cf_queue_node_t *first,
                   size_t count)
{
    int64_t now = cf_clock_now_ms();
    cf_queue_node_t *node = first;
    for (size_t i = 0; i < count; i++, node = cf_queue_next(&worker->running, node)) {
        cf_broker_task_t *task = cf_queue_entry(node, cf_broker_task_t, node);
        task->state = CF_BROKER_RUNNING;
        self->running++;
        task->client->running++;
        worker->credit--;
        //  A worker that says when a task begins tells the client then.
        if (!worker->says_begun) {
            task->marks |= CF_BROKER_BEGUN;
            cf_broker_client_started(self, task->client, task->client_task_id, false);
        }
        if (task->timeout_ms) {
            task->deadline_ms = now + task->timeout_ms;
            if (cf_broker_task_watch(self, task) != CF_OK)
                cf_log_error_rated(S_LOG, "out of memory: timeout of task %" PRIu64 " not watched",
                                   task->client_task_id);
        }
    }
}

//  After a dispatch that ended with rc: a worker the ROUTER no longer
//  knows is gone; one that refused (at its high-water mark, or we are out
//  of memory) is left alone for a moment instead of spun on.
static void s_worker_dispatched(cf_broker_state_t *self, cf_broker_worker_t *worker, cf_err_t rc)
{
    if (rc == CF_ENOTFOUND) {
        cf_broker_worker_remove(self, worker, "gone", true);
        return;
    }
    if (rc != CF_OK) {
        if (!worker->blocked_until_ms)
            self->blocked_workers++;
        worker->blocked_until_ms = cf_clock_now_ms() + CF_BROKER_RETRY_MS;
        if (cf_broker_log_event(self))
            cf_log_debug(S_LOG, "worker %s refused a TASK (%s): its tasks are requeued",
                         worker->peer.label, cf_strerror(rc));
    }
    cf_broker_worker_set_available(self, worker);
    if (worker->shared && rc == CF_OK)
        cf_broker_shared_settle(self, worker);
}

//  What s_worker_send has encoded and not sent yet: batch tasks from first,
//  body bytes, and of the worker's plan unsent tasks not sent.
typedef struct {
    cf_queue_node_t *first;
    size_t batch, body, unsent;
} s_batch_t;

//  Sends the TASK encoded so far, if any, and begins the next.
static cf_err_t s_send_batch(cf_broker_state_t *self, cf_broker_worker_t *worker, s_batch_t *b)
{
    if (b->batch == 0)
        return CF_OK;
    cf_err_t rc = cf_proto_enc_send(self->enc, self->workers_sock, worker->peer.id,
                                    worker->peer.id_len);
    if (rc != CF_OK)
        return rc;
    s_sent(self, worker, b->first, b->batch);
    b->unsent -= b->batch;
    b->batch = b->body = 0;
    cf_proto_enc_begin(self->enc, CF_MSG_TASK);
    return CF_OK;
}

//  What a TASK item says besides the task: LONE when the task is all its
//  client has here (a client waiting for one task at a time), for a worker
//  that reads it. Such a worker runs it before the tasks it queues for
//  busier clients: without it, a one-at-a-time client's task waited behind
//  every task a loaded worker had prefetched (docs/benchmarks.md, "Under
//  load").
static uint32_t s_wire_flags(const cf_broker_worker_t *worker, const cf_broker_task_t *task)
{
    return worker->says_lone && task->client && cf_idmap_size(task->client->tasks) == 1
               ? CF_TASK_LONE
               : 0;
}

//  Sends what was planned for worker, in order: batches, and a task with
//  large arguments alone in the body it keeps them in. A task that cannot
//  be encoded fails alone; a refused send or a lack of memory puts every
//  unsent task back.
static void s_worker_send(cf_broker_state_t *self, cf_broker_worker_t *worker)
{
    s_batch_t b = { .unsent = worker->plan };
    worker->plan = 0;
    cf_queue_node_t *node = worker->plan_first, *next;
    cf_err_t rc = CF_OK;
    cf_proto_enc_begin(self->enc, CF_MSG_TASK);
    for (size_t left = b.unsent; left > 0 && rc == CF_OK; left--, node = next) {
        next = cf_queue_next(&worker->running, node);
        cf_broker_task_t *task = cf_queue_entry(node, cf_broker_task_t, node);
        if (task->marks & CF_BROKER_WHOLE) {
            rc = s_send_batch(self, worker, &b);
            if (rc == CF_OK)
                rc = cf_broker_task_send_whole(self, task, worker);
            if (rc == CF_OK) {
                s_sent(self, worker, node, 1);
                b.unsent--;
            }
            continue;
        }
        cf_proto_str_t function = cf_broker_task_wire_function(task);
        size_t item = function.len + task->args_len + CF_BROKER_ITEM_OVERHEAD;
        if (b.batch > 0 && (b.body + item > CF_BROKER_MAX_BODY || b.batch >= CF_PROTO_MAX_BATCH)) {
            rc = s_send_batch(self, worker, &b);
            if (rc != CF_OK)
                break;
        }
        rc = item > CF_BROKER_MAX_BODY
                 ? CF_ETOOBIG
                 : cf_proto_enc_task(self->enc, task->id, function.ptr, function.len, task->args,
                                     task->args_len, task->retries, task->timeout_ms,
                                     s_wire_flags(worker, task));
        if (rc == CF_ENOMEM) {
            cf_log_error_rated(S_LOG, "out of memory encoding task %" PRIu64, task->client_task_id);
            break;
        }
        if (rc != CF_OK) {
            cf_broker_task_unassign(self, task);
            s_task_undispatchable(self, task, rc);
            b.unsent--;
            rc = CF_OK;
            continue;
        }
        if (b.batch++ == 0)
            b.first = node;
        b.body += item;
    }
    if (rc == CF_OK)
        rc = s_send_batch(self, worker, &b);
    if (b.unsent > 0) {
        //  Never reached the worker: no attempt used.
        s_unplan(self, worker, b.unsent);
        self->stats.deferred++;
    }
    s_worker_dispatched(self, worker, rc);
}

//  True when the worker answered something since its oldest task in hand
//  was sent (or holds nothing sent): it is turning tasks over, so its
//  prefetch slots will be reached soon. A worker whose threads all sit on
//  long tasks gets nothing more to queue, so what waits stays here:
//  another worker may free up first, and a cancel of it still wins.
static bool s_worker_turning_over(const cf_broker_worker_t *worker)
{
    if (cf_queue_size(&worker->running) == worker->plan)
        return true;
    cf_queue_node_t *oldest = cf_queue_front(&worker->running);
    return cf_queue_entry(oldest, cf_broker_task_t, node)->results_before != worker->results;
}

//  Fills worker's idle threads (up to its credit) with what it serves, in
//  one go: one TASK message for many tasks. False when nothing queued is
//  one it serves.
static bool s_plan_idle(cf_broker_state_t *self, cf_broker_worker_t *worker)
{
    while (self->queued > 0 && worker->plan < worker->credit
           && cf_queue_size(&worker->running) < worker->threads) {
        cf_broker_task_t *task = cf_broker_queue_pick(self, worker);
        if (!task)
            return false;
        s_plan_task(worker, task);
    }
    return true;
}

//  Plans the queued tasks over the available workers, each only what it
//  serves. With idle_only, each worker in turn gets its idle threads filled
//  before the next: a free thread is a free thread wherever it is, and
//  dealing a burst one task a worker would cost a message a task once
//  workers outnumber it (a broker with 1,000 workers spent 3-4x the CPU a
//  task; docs/benchmarks.md, "Broker CPU per task as connections grow").
//  The available list rotates after each dispatch, so the next burst starts
//  at another worker. Prefetch slots (not idle_only) are dealt one task a
//  worker per lap, so no worker queues more than its share behind its
//  running tasks.
static void s_plan(cf_broker_state_t *self, bool idle_only)
{
    bool progress = true;
    while (progress && self->queued > 0) {
        progress = false;
        for (cf_queue_node_t *node = cf_queue_front(&self->available); node && self->queued > 0;
             node = cf_queue_next(&self->available, node)) {
            cf_broker_worker_t *worker = cf_queue_entry(node, cf_broker_worker_t, avail_node);
            if (worker->exhausted || worker->plan >= worker->credit || worker->suspects)
                continue;
            if (idle_only) {
                if (cf_queue_size(&worker->running) < worker->threads && !s_plan_idle(self, worker))
                    worker->exhausted = true;    //  nothing queued is one it serves
                continue;
            }
            //  A SHARED worker's grant is its own choice of what to queue.
            if (!worker->shared && !s_worker_turning_over(worker))
                continue;
            cf_broker_task_t *task = cf_broker_queue_pick(self, worker);
            if (!task) {
                worker->exhausted = true;    //  nothing queued is one it serves
                continue;
            }
            s_plan_task(worker, task);
            progress = true;
        }
    }
}

//  Sends each waiting suspect alone to a worker that holds nothing and
//  serves its function (it then gets nothing else until it answers). A
//  suspect that waited CF_BROKER_SUSPECT_WAIT_MS goes back to its lane as
//  an ordinary task: isolation must not cost the cluster a worker's
//  capacity, nor wait on workers that all hold long tasks.
static void s_dispatch_suspects(cf_broker_state_t *self)
{
    cf_queue_node_t *node = cf_queue_front(&self->available), *next;
    for (; node && !cf_queue_empty(&self->suspects); node = next) {
        next = cf_queue_next(&self->available, node);
        cf_broker_worker_t *worker = cf_queue_entry(node, cf_broker_worker_t, avail_node);
        if (!cf_queue_empty(&worker->running))
            continue;
        for (cf_queue_node_t *at = cf_queue_front(&self->suspects); at;
             at = cf_queue_next(&self->suspects, at)) {
            cf_broker_task_t *task = cf_queue_entry(at, cf_broker_task_t, node);
            if (cf_broker_queue_serves(worker, task->lane->fn)) {
                cf_queue_remove(&self->suspects, at);
                s_plan_task(worker, task);
                s_worker_send(self, worker);
                break;
            }
        }
    }
    int64_t now = cf_clock_now_ms();
    while ((node = cf_queue_front(&self->suspects))) {
        cf_broker_task_t *task = cf_queue_entry(node, cf_broker_task_t, node);
        if (task->deadline_ms > now)
            break;
        cf_queue_remove(&self->suspects, node);
        task->marks &= (uint8_t)~CF_BROKER_SUSPECT;
        cf_broker_task_requeue(self, task);
    }
}

//  Hands queued tasks to workers with credit, in two rounds: first to idle
//  threads anywhere, then to prefetch slots. A worker that prefetches (asks
//  for more than its threads while its tasks are short) must never take a
//  task another worker could start now: a long task behind a busy thread
//  would wait while a thread elsewhere idles.
static void s_dispatch_queued(cf_broker_state_t *self)
{
    cf_queue_node_t *node, *next;
    for (node = cf_queue_front(&self->available); node;
         node = cf_queue_next(&self->available, node))
        cf_queue_entry(node, cf_broker_worker_t, avail_node)->exhausted = false;
    s_plan(self, true);
    s_plan(self, false);
    //  The next dispatch starts at another worker, so single tasks rotate.
    cf_queue_rotate(&self->available);
    for (node = cf_queue_front(&self->available); node; node = next) {
        next = cf_queue_next(&self->available, node);
        cf_broker_worker_t *worker = cf_queue_entry(node, cf_broker_worker_t, avail_node);
        if (worker->plan)
            s_worker_send(self, worker);
        else if (worker->shared)
            cf_broker_shared_settle(self, worker);
    }
}

//  Suspects first, then the queued tasks; then what SHARED workers are
//  owed: a REFUND of what nothing waiting can use, a WANT where something
//  waits and they have no credit.
void cf_broker_dispatch(cf_broker_state_t *self)
{
    if (!cf_queue_empty(&self->suspects))
        s_dispatch_suspects(self);
    if (self->queued > 0 && !cf_queue_empty(&self->available))
        s_dispatch_queued(self);
    else if (self->shared_available > 0)
        cf_broker_shared_refund_idle(self);
    if (self->want_due && !cf_queue_empty(&self->shared))
        cf_broker_shared_wants(self);
}

//  The broker's tasks (see cf_broker_int.h): where a task lives from
//  SUBMIT to its answer, and the timeout heap that watches running tasks
//  with a time limit, earliest first.
//
//  A task is one allocation holding its arguments (its function is its
//  lane's, cf_broker_queue.c); its
//  state says whether a client still waits for it. Nothing here sends:
//  answers go through the client module's outbox.

#include "cf_broker_int.h"

#include "cf_clock.h"
#include "cf_mp.h"
#include "cf_utf8.h"

#include <assert.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_LOG "broker"

// ---------------------------------------------------------------------------
//  Life

//  The function a cf.chunk task runs (the first of its arguments, checked
//  as a task's function name); false when its arguments do not say, and
//  the chunk goes by its own name (its worker answers what is wrong).
static bool s_chunk_function(const cf_proto_task_t *item, cf_proto_str_t *function)
{
    if (!cf_proto_str_eq(item->function, CF_PROTO_CHUNK_FUNCTION))
        return false;
    cf_mp_reader_t r;
    cf_mp_reader_init(&r, item->args, item->args_len);
    uint32_t count;
    const char *name;
    size_t len;
    if (cf_mp_read_array(&r, UINT32_MAX, &count) != CF_OK || count < 1
        || cf_mp_read_str(&r, CF_PROTO_MAX_NAME, &name, &len) != CF_OK || len == 0
        || !cf_utf8_name_ok(name, len))
        return false;
    *function = (cf_proto_str_t){ name, len };
    return true;
}

//  A WHOLE task's references, at the first 8-byte boundary of args, and
//  its body after them.
#define S_WHOLE_EXTRA 16

static _Atomic uint32_t *s_refs(cf_broker_task_t *task)
{
    return (_Atomic uint32_t *)(((uintptr_t)task->args + 7) & ~(uintptr_t)7);
}

static uint8_t *s_body(cf_broker_task_t *task)
{
    return (uint8_t *)s_refs(task) + 8;
}

//  Drops a reference to a WHOLE task's memory (the last one frees it), or
//  frees any other task's.
static void s_release(cf_broker_task_t *task)
{
    if (!(task->marks & CF_BROKER_WHOLE)
        || atomic_fetch_sub_explicit(s_refs(task), 1, memory_order_acq_rel) == 1)
        free(task);
}

//  ZeroMQ is done with a send of the body (from its I/O thread).
static void s_body_sent(void *body, void *hint)
{
    (void)body;
    s_release(hint);
}

cf_err_t cf_broker_task_send_whole(cf_broker_state_t *self, cf_broker_task_t *task,
                                   cf_broker_worker_t *worker)
{
    assert(task->marks & CF_BROKER_WHOLE);
    atomic_fetch_add_explicit(s_refs(task), 1, memory_order_relaxed);
    cf_err_t rc = cf_proto_send_body(self->workers_sock, worker->peer.id, worker->peer.id_len,
                                     CF_MSG_TASK, s_body(task), task->args_len, s_body_sent, task);
    if (rc != CF_OK)
        atomic_fetch_sub_explicit(s_refs(task), 1, memory_order_relaxed);
    return rc;
}

//  Large arguments (not too large to forward: those fail at dispatch) go
//  in a body of their own.
static bool s_whole(const cf_proto_task_t *item)
{
    return item->args_len >= CF_BROKER_WHOLE_MIN
           && CF_PROTO_TASK_BODY_MAX(item->function.len, item->args_len) <= CF_BROKER_MAX_BODY;
}

cf_broker_task_t *cf_broker_task_new(cf_broker_state_t *self, cf_broker_client_t *client,
                                     const cf_proto_task_t *item)
{
    if (item->args_len > UINT32_MAX)
        return NULL;    //  the codec holds these limits; this guards our narrower fields
    cf_proto_task_t routed = *item;
    bool chunk = s_chunk_function(item, &routed.function);
    bool whole = s_whole(item);
    size_t extra = whole
                       ? S_WHOLE_EXTRA + CF_PROTO_TASK_BODY_MAX(item->function.len, item->args_len)
                       : item->args_len;
    cf_broker_task_t *task = malloc(sizeof *task + extra);
    cf_broker_lane_t *lane = task ? cf_broker_queue_lane(self, client, &routed) : NULL;
    if (!lane) {
        free(task);
        cf_log_warn_rated(S_LOG, "out of memory: task %" PRIu64 " of client %s refused as busy",
                          item->id, client->peer.label);
        return NULL;
    }
    *task = (cf_broker_task_t){
        .lane = lane,
        .client = client,
        .client_task_id = item->id,
        .heap_index = CF_BROKER_NOT_IN_HEAP,
        .timeout_ms = item->timeout_ms,
        .retries = item->retries,
        .flags = item->flags,
        .args_len = (uint32_t)item->args_len,
        .state = CF_BROKER_QUEUED,
        .marks = (uint8_t)((chunk ? CF_BROKER_CHUNK : 0) | (whole ? CF_BROKER_WHOLE : 0)),
    };
    cf_queue_node_init(&task->node);
    if (item->args_len && !whole)
        memcpy(task->args, item->args, item->args_len);
    do
        task->id = self->next_task_id++;
    while (task->id == 0 || cf_idmap_get(self->tasks, task->id));
    if (whole) {
        //  The worker gets the function as the client sent it (cf.chunk
        //  for a chunk), as in cf_broker_task_wire_function.
        atomic_init(s_refs(task), 1);
        task->args_len = (uint32_t)cf_proto_task_body(s_body(task), task->id, item->function.ptr,
                                                      item->function.len, item->args,
                                                      item->args_len, item->timeout_ms);
    }
    if (cf_idmap_put(self->tasks, task->id, task) != CF_OK) {
        cf_broker_queue_lane_put(self, lane);
        free(task);
        return NULL;
    }
    if (cf_idmap_put(client->tasks, item->id, task) != CF_OK) {
        cf_idmap_remove(self->tasks, task->id);
        cf_broker_queue_lane_put(self, lane);
        free(task);
        return NULL;
    }
    return task;
}

void cf_broker_task_free(cf_broker_state_t *self, cf_broker_task_t *task)
{
    cf_broker_task_unwatch(self, task);
    cf_idmap_remove(self->tasks, task->id);
    cf_broker_queue_lane_put(self, task->lane);
    s_release(task);
}

//  A task leaves its client for good (answered): forget it there too.
void cf_broker_task_finish(cf_broker_state_t *self, cf_broker_task_t *task)
{
    if (task->client)
        cf_idmap_remove(task->client->tasks, task->client_task_id);
    cf_broker_task_free(self, task);
}

//  Takes a task off its worker (it is in worker->running).
void cf_broker_task_unassign(cf_broker_state_t *self, cf_broker_task_t *task)
{
    cf_broker_worker_t *worker = task->worker;
    assert(worker);
    cf_queue_remove(&worker->running, &task->node);
    if (task->marks & CF_BROKER_SUSPECT)
        worker->suspects--;
    cf_broker_task_unwatch(self, task);
    if (task->state == CF_BROKER_RUNNING) {
        self->running--;
        task->client->running--;
    }
    task->worker = NULL;
}

//  Puts a task that was on a worker back at the front of its lane. Call
//  cf_broker_task_unassign first.
void cf_broker_task_requeue(cf_broker_state_t *self, cf_broker_task_t *task)
{
    assert(task->client && !task->worker);
    task->state = CF_BROKER_QUEUED;
    task->marks &= (uint8_t)~CF_BROKER_BEGUN;
    if (task->marks & CF_BROKER_SUSPECT) {
        //  deadline_ms serves a running task's timeout; while queued, it is
        //  the end of the suspect's wait for an empty worker.
        task->deadline_ms = cf_clock_now_ms() + CF_BROKER_SUSPECT_WAIT_MS;
        cf_queue_push_back(&self->suspects, &task->node);
    }
    else
        cf_broker_queue_push(self, task, true, cf_clock_now_ms());
}

void cf_broker_task_unqueue(cf_broker_state_t *self, cf_broker_task_t *task)
{
    assert(task->state == CF_BROKER_QUEUED);
    if (task->marks & CF_BROKER_SUSPECT)
        cf_queue_remove(&self->suspects, &task->node);
    else
        cf_broker_queue_remove(self, task);
}

// ---------------------------------------------------------------------------
//  The timeout heap

static void s_heap_swap(cf_broker_state_t *self, size_t a, size_t b)
{
    cf_broker_task_t *t = self->heap[a];
    self->heap[a] = self->heap[b];
    self->heap[b] = t;
    self->heap[a]->heap_index = (uint32_t)a;
    self->heap[b]->heap_index = (uint32_t)b;
}

static void s_heap_up(cf_broker_state_t *self, size_t i)
{
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (self->heap[parent]->deadline_ms <= self->heap[i]->deadline_ms)
            break;
        s_heap_swap(self, i, parent);
        i = parent;
    }
}

static void s_heap_down(cf_broker_state_t *self, size_t i)
{
    for (;;) {
        size_t left = 2 * i + 1, right = left + 1, least = i;
        if (left < self->heap_size
            && self->heap[left]->deadline_ms < self->heap[least]->deadline_ms)
            least = left;
        if (right < self->heap_size
            && self->heap[right]->deadline_ms < self->heap[least]->deadline_ms)
            least = right;
        if (least == i)
            break;
        s_heap_swap(self, i, least);
        i = least;
    }
}

cf_err_t cf_broker_task_watch(cf_broker_state_t *self, cf_broker_task_t *task)
{
    if (self->heap_size == self->heap_cap) {
        size_t cap = self->heap_cap ? self->heap_cap * 2 : 64;
        cf_broker_task_t **heap = realloc(self->heap, cap * sizeof *heap);
        if (!heap)
            return CF_ENOMEM;
        self->heap = heap;
        self->heap_cap = cap;
    }
    task->heap_index = (uint32_t)self->heap_size;
    self->heap[self->heap_size++] = task;
    s_heap_up(self, task->heap_index);
    return CF_OK;
}

void cf_broker_task_unwatch(cf_broker_state_t *self, cf_broker_task_t *task)
{
    if (task->heap_index == CF_BROKER_NOT_IN_HEAP)
        return;
    size_t i = task->heap_index;
    assert(i < self->heap_size && self->heap[i] == task);
    self->heap_size--;
    if (i != self->heap_size) {
        self->heap[i] = self->heap[self->heap_size];
        self->heap[i]->heap_index = (uint32_t)i;
        s_heap_down(self, i);
        s_heap_up(self, i);
    }
    task->heap_index = CF_BROKER_NOT_IN_HEAP;
}

static void s_task_timed_out(cf_broker_state_t *self, cf_broker_task_t *task)
{
    char message[512];
    snprintf(message, sizeof message,
             "task %" PRIu64 " (%s) exceeded its timeout of %" PRIu32 " ms on worker %s",
             task->client_task_id, cf_broker_task_function(task), task->timeout_ms,
             task->worker->peer.label);
    cf_broker_client_runtime_error(self, task, "TimeoutError", message);
    if (cf_broker_log_event(self))
        cf_log_debug(S_LOG, "client %s: %s", task->client->peer.label, message);
    self->stats.failed++;
    self->stats.timed_out++;
    //  It stays on the worker (the slot is busy until the worker answers)
    //  but nobody waits for it any more.
    cf_idmap_remove(task->client->tasks, task->client_task_id);
    task->client->running--;
    task->client = NULL;
    task->state = CF_BROKER_EXPIRED;
    self->running--;
}

void cf_broker_task_expire(cf_broker_state_t *self, int64_t now)
{
    while (self->heap_size && self->heap[0]->deadline_ms <= now) {
        cf_broker_task_t *task = self->heap[0];
        cf_broker_task_unwatch(self, task);
        s_task_timed_out(self, task);
    }
}

//  The worker's tasks and the threads that run them (cf_worker_int.h has
//  the map): one allocation per task, and the execution threads, which own
//  nothing but the task they run.

#include "cf_worker_int.h"

#include "cf_clock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  A result larger than this cannot ride in a RESULT body with its
//  envelope: it becomes an error instead.
#define S_MAX_RESULT (CF_PROTO_MAX_FRAME - 64 * 1024)
//  Arguments of at least S_HOLD_MIN bytes that are at least 1/S_HOLD_SHARE
//  of their TASK body are read in the body instead of copied out: the body
//  a task keeps alive (until it has run) is then at most S_HOLD_SHARE times
//  its own arguments, whatever else the broker batched with them.
#define S_HOLD_MIN   (64 * 1024)
#define S_HOLD_SHARE 4

//  Lets go of the TASK body a task's arguments are in, once read.
static void s_release_args(cf_worker_task_t *task)
{
    if (task->holds_body) {
        zmq_msg_close(&task->args_body);
        task->holds_body = false;
        task->args = NULL;
        task->args_len = 0;
    }
}

void cf_worker_exec_task_free(cf_worker_task_t *task)
{
    s_release_args(task);
    cf_outcome_fini(&task->outcome);
    free(task);
}

//  Frees every task of list; returns how many.
size_t cf_worker_exec_clear(cf_queue_t *list)
{
    size_t n = 0;
    cf_worker_task_t *task;
    while ((task = cf_worker_pop(list))) {
        cf_worker_exec_task_free(task);
        n++;
    }
    return n;
}

cf_worker_task_t *cf_worker_exec_task_new(cf_proto_msg_t *msg, const cf_proto_task_t *src)
{
    bool hold = src->args_len >= S_HOLD_MIN
                && src->args_len * S_HOLD_SHARE >= cf_proto_msg_body_size(msg);
    size_t size = sizeof(cf_worker_task_t) + src->function.len + 1 + (hold ? 0 : src->args_len);
    cf_worker_task_t *task = malloc(size);
    if (!task)
        return NULL;
    memset(task, 0, sizeof *task);
    cf_queue_node_init(&task->begun_node);
    cf_queue_node_init(&task->run_node);
    atomic_init(&task->stop, false);
    task->id = src->id;
    char *p = task->data;
    memcpy(p, src->function.ptr, src->function.len);
    p[src->function.len] = '\0';
    task->function = p;
    task->function_len = src->function.len;
    p += src->function.len + 1;
    task->args_len = src->args_len;
    if (hold) {
        task->args = src->args;
        if (cf_proto_msg_hold(msg, &task->args_body, &task->args) != CF_OK) {
            zmq_msg_close(&task->args_body);
            free(task);
            return NULL;
        }
        task->holds_body = true;
        return task;
    }
    if (src->args_len)
        memcpy(p, src->args, src->args_len);
    task->args = (const uint8_t *)p;
    return task;
}

// ---------------------------------------------------------------------------
//  Execution threads

//  Runs one task; its outcome stays in the record. Its progress reports
//  go to report (cf_worker_progress.h).
static void s_execute(cf_worker_task_t *task, cf_worker_progress_run_t *report)
{
    cf_run_ctx_t ctx = { .stop = &task->stop,
                         .progress = cf_worker_progress_sink,
                         .progress_arg = report };
    cf_err_t rc = cf_registry_run(task->function, task->function_len, task->args, task->args_len,
                                  &ctx, &task->outcome);
    if (rc != CF_OK) {
        task->out_of_memory = true;
        return;
    }
    if (task->outcome.ok && task->outcome.value_len > S_MAX_RESULT) {
        size_t len = task->outcome.value_len;
        cf_outcome_fini(&task->outcome);
        task->outcome.error_type = strdup("ValueError");
        char message[160];
        snprintf(message, sizeof message, "the result is %zu bytes; a message carries at most %u",
                 len, (unsigned)S_MAX_RESULT);
        task->outcome.error_message = strdup(message);
        if (!task->outcome.error_type || !task->outcome.error_message)
            task->out_of_memory = true;
    }
}

void *cf_worker_exec_main(void *arg)
{
    cf_worker_t *w = arg;
    int slot = atomic_fetch_add(&w->executor_seq, 1);
    _Atomic uint64_t *running_id = w->running_ids ? &w->running_ids[slot] : NULL;
    if (w->initializer)
        w->initializer(w->initarg);
    pthread_mutex_lock(&w->lock);
    while (true) {
        while (cf_queue_empty(&w->queue) && !w->stopping)
            pthread_cond_wait(&w->work, &w->lock);
        cf_worker_task_t *task = cf_worker_pop(&w->queue);
        if (!task)
            break;    //  stopping, nothing queued
        w->running++;
        int64_t start_us = cf_clock_now_us();
        w->progress_us = start_us;
        //  From here a CANCEL cannot find it in the queue: it has begun.
        //  No wakeup: the actor looks at begun within CF_WORKER_BEGUN_HOLD_MS.
        cf_queue_push_back(&w->begun, &task->begun_node);
        cf_queue_push_back(&w->runs, &task->run_node);
        pthread_mutex_unlock(&w->lock);

        //  Stored before the function runs: if it kills the process, the
        //  supervisor reads who did.
        if (running_id)
            atomic_store_explicit(running_id, task->id, memory_order_seq_cst);
        cf_worker_progress_run_t report = { .set = w->progress[task->link], .id = task->id };
        s_execute(task, &report);
        //  Read: the body is not kept while the result waits to be sent.
        s_release_args(task);
        //  Before its result is queued: the last report goes first.
        cf_worker_progress_end(&report);
        if (running_id)
            atomic_store_explicit(running_id, 0, memory_order_release);
        int64_t end_us = cf_clock_now_us();
        task->run_us = end_us - start_us;

        pthread_mutex_lock(&w->lock);
        //  Its RESULT says it began: no STARTED needed any more.
        if (cf_queue_linked(&task->begun_node))
            cf_queue_remove(&w->begun, &task->begun_node);
        cf_queue_remove(&w->runs, &task->run_node);
        w->progress_us = end_us;
        w->running--;
        bool was_empty = cf_queue_empty(&w->outbox);
        cf_queue_push_back(&w->outbox, &task->node);
        //  Sent from here only when nothing else runs or waits: under load
        //  the woken actor batches the results that came meanwhile (one by
        //  one from here cost 2.5x the throughput).
        bool alone = w->running == 0 && cf_queue_size(&w->queue) == 0;
        if (was_empty && alone) {
            //  A later result finds the outbox non-empty: this delivery
            //  (or the actor it wakes) takes it along.
            pthread_mutex_unlock(&w->lock);
            cf_worker_actor_deliver(w);
            pthread_mutex_lock(&w->lock);
        }
        else if (was_empty)
            cf_actor_wake(w->actor);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

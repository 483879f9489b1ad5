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
    task->lone = (src->flags & CF_TASK_LONE) != 0;
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

void cf_worker_exec_enqueue(cf_worker_t *w, cf_worker_task_t *task)
{
    if (!task->lone) {
        cf_queue_push_back(&w->queue, &task->node);
        return;
    }
    //  Lone tasks are one per waiting client: the walk is short.
    cf_queue_t front;
    cf_queue_init(&front);
    cf_worker_task_t *first;
    while ((first = cf_worker_front(&w->queue)) && first->lone) {
        cf_queue_remove(&w->queue, &first->node);
        cf_queue_push_back(&front, &first->node);
    }
    cf_queue_push_back(&front, &task->node);
    cf_queue_prepend(&w->queue, &front);
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

//  A task taken from the queue begins: from here a CANCEL cannot find it
//  there. No wakeup: the actor looks at begun within
//  CF_WORKER_BEGUN_HOLD_MS. Under lock.
static void s_begin(cf_worker_t *w, cf_worker_task_t *task, int64_t now_us)
{
    w->running++;
    w->progress_us = now_us;
    cf_queue_push_back(&w->begun, &task->begun_node);
    cf_queue_push_back(&w->runs, &task->run_node);
}

//  Runs a begun task, unlocked.
static void s_run(cf_worker_t *w, cf_worker_task_t *task, _Atomic uint64_t *running_id)
{
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
}

//  A run task's outcome goes to the outbox; true when that was empty.
//  Under lock.
static bool s_finish(cf_worker_t *w, cf_worker_task_t *task, int64_t now_us)
{
    //  Its RESULT says it began: no STARTED needed any more.
    if (cf_queue_linked(&task->begun_node))
        cf_queue_remove(&w->begun, &task->begun_node);
    cf_queue_remove(&w->runs, &task->run_node);
    w->progress_us = now_us;
    w->running--;
    bool was_empty = cf_queue_empty(&w->outbox);
    cf_queue_push_back(&w->outbox, &task->node);
    return was_empty;
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
        //  running counts a task the actor runs: threads at most at once.
        while ((cf_queue_empty(&w->queue) || w->running >= w->threads) && !w->stopping)
            pthread_cond_wait(&w->work, &w->lock);
        cf_worker_task_t *task = cf_worker_pop(&w->queue);
        if (!task)
            break;    //  stopping, nothing queued
        int64_t start_us = cf_clock_now_us();
        s_begin(w, task, start_us);
        pthread_mutex_unlock(&w->lock);
        s_run(w, task, running_id);
        int64_t end_us = cf_clock_now_us();
        task->run_us = end_us - start_us;
        bool lone = task->lone;
        pthread_mutex_lock(&w->lock);
        bool was_empty = s_finish(w, task, end_us);
        //  Sent from here only when nothing else runs or waits, or for a
        //  lone task, whose client waits for it alone: under load the woken
        //  actor batches the results that came meanwhile (one by one from
        //  here cost 2.5x the throughput).
        bool alone = w->running == 0 && cf_queue_size(&w->queue) == 0;
        if (was_empty && (alone || lone)) {
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

// ---------------------------------------------------------------------------
//  Short tasks in the actor
//
//  A task of a microsecond handed to an executor costs a wake-up of the
//  executor and one of the actor for its result, each a context switch
//  (about 10 us of CPU on the 2-core VM measured), and four threads (actor,
//  I/O, two executors) contending for two cores. When the worker's tasks
//  are short (mean at most inline_max_us, 50 by default) and no executor is
//  busy, the actor runs the tasks it just read itself, between reading and
//  sending, as the raw relay's worker does: no hand-off at all. It steps
//  out of the actor while it does (cf_actor_step_out), so an executor's
//  result can still be sent by that executor. Two things keep the actor's
//  other duties when a "short" task turns out long: the burst ends after
//  inline_budget_us and wakes the executors for the rest, and the
//  watch thread, ticking every CF_WORKER_STALL_MS while the actor runs
//  tasks, hands the queue to the executors and does the actor's turns
//  (reading, heartbeats, results; the end of the worker, when a stopped
//  task outruns its grace) once one task outran that. The actor's task
//  takes a thread's place: at most threads tasks run at once, so with one
//  thread (a worker process) nothing runs beside it and the queued tasks
//  wait, or go back as they do behind a stalled thread.

//  Tasks run in one go before the actor sends their results: as many as
//  it may hold. Fewer make more, smaller messages: with 32, map chunksize 1
//  on processes lost 14% against no inline runs; with 256 it gained 9%.
#define S_INLINE_BATCH CF_WORKER_PREFETCH_MAX

bool cf_worker_exec_inline_wanted(cf_worker_actor_t *a)
{
    cf_worker_t *w = a->w;
    return w->inline_allowed && !a->budget && a->mean_run_us >= 0
           && a->mean_run_us <= (double)w->inline_max_us && w->running == 0 && !w->inline_stuck
           && pthread_equal(pthread_self(), w->actor_thread);
}

bool cf_worker_exec_inline(cf_worker_actor_t *a)
{
    cf_worker_t *w = a->w;
    pthread_mutex_lock(&w->lock);
    if (!w->inline_due) {
        pthread_mutex_unlock(&w->lock);
        return false;
    }
    w->inline_due = false;
    //  More work queued than one go takes: it is worth the executors'
    //  wake-ups, and they run it in parallel.
    if ((double)cf_queue_size(&w->queue) * a->mean_run_us > (double)w->inline_budget_us) {
        pthread_cond_broadcast(&w->work);
        pthread_mutex_unlock(&w->lock);
        return false;
    }
    int64_t now_us = cf_clock_now_us();
    int64_t end_by = now_us + w->inline_budget_us;
    w->inline_last_us = now_us;
    if (w->watch_resting)
        pthread_cond_signal(&w->watch_cond);
    pthread_mutex_unlock(&w->lock);
    cf_actor_step_out(w->actor);
    pthread_mutex_lock(&w->lock);
    cf_worker_task_t *task;
    size_t ran = 0;
    bool lone = false;
    while (!w->stopping && now_us < end_by && ran < S_INLINE_BATCH && !lone
           && (task = cf_worker_pop(&w->queue))) {
        int64_t start_us = now_us;
        lone = task->lone;
        s_begin(w, task, start_us);
        w->inline_since_us = start_us;
        pthread_mutex_unlock(&w->lock);
        s_run(w, task, w->running_ids ? &w->running_ids[w->threads] : NULL);
        now_us = cf_clock_now_us();
        task->run_us = now_us - start_us;
        pthread_mutex_lock(&w->lock);
        s_finish(w, task, now_us);
        ran++;
    }
    w->inline_since_us = 0;
    w->inline_last_us = now_us;
    if (!cf_queue_empty(&w->queue)) {
        //  A batch done: the actor sends its results (the broker's next
        //  tasks are on their way meanwhile) and comes back for the rest,
        //  unless the time ran out or a task outran it: then the executors.
        //  A lone task ends its batch, so that its client, which waits for
        //  nothing else, gets its result now.
        if ((ran == S_INLINE_BATCH || lone) && now_us < end_by && !w->inline_stuck)
            w->inline_due = true;
        else
            pthread_cond_broadcast(&w->work);
    }
    w->inline_stuck = false;
    bool more = w->inline_due;
    pthread_mutex_unlock(&w->lock);
    cf_actor_step_in(w->actor);
    return more;
}

//  The watch rests (no tick) once the actor ran no task for this long.
#define S_WATCH_REST_US (1000 * 1000)

void *cf_worker_exec_watch(void *arg)
{
    cf_worker_t *w = arg;
    pthread_mutex_lock(&w->lock);
    while (!w->stopping) {
        int64_t now_us = cf_clock_now_us();
        if (!w->inline_since_us && now_us - w->inline_last_us > S_WATCH_REST_US) {
            w->watch_resting = true;
            pthread_cond_wait(&w->watch_cond, &w->lock);
            w->watch_resting = false;
            continue;
        }
        struct timespec tick = cf_clock_deadline(CF_WORKER_STALL_MS);
        pthread_cond_timedwait(&w->watch_cond, &w->lock, &tick);
        now_us = cf_clock_now_us();
        if (w->stopping || !w->inline_since_us
            || now_us - w->inline_since_us < CF_WORKER_STALL_MS * 1000)
            continue;
        if (!w->inline_stuck) {
            w->inline_stuck = true;
            if (!cf_queue_empty(&w->queue))
                pthread_cond_broadcast(&w->work);
        }
        pthread_mutex_unlock(&w->lock);
        cf_worker_actor_tend(w);
        pthread_mutex_lock(&w->lock);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

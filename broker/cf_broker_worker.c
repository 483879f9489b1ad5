//  The broker's workers (see cf_broker_int.h): what a worker sends (READY,
//  FUNCTIONS, CREDIT, RESULT, STARTED, PROGRESS, DISCONNECT), its credit,
//  and what happens to its tasks when it goes. The dispatch of queued tasks
//  in TASK batches is cf_broker_dispatch.c.
//
//  Credit comes from workers: READY says how many tasks a worker can take
//  now (and how many threads it has), each RESULT item returns a slot,
//  CREDIT adds slots. Dispatch fills idle threads everywhere before any
//  prefetch slot (docs/architecture.md, "Workers prefetch by measured run
//  time"). A worker that says SHARED (it serves several brokers) grants
//  every slot itself (cf_broker_shared.c).

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
//  Credit

void cf_broker_worker_set_available(cf_broker_state_t *self, cf_broker_worker_t *worker)
{
    bool want = worker->credit > 0 && !worker->blocked_until_ms;
    if (want && !cf_queue_linked(&worker->avail_node)) {
        cf_queue_push_back(&self->available, &worker->avail_node);
        self->shared_available += worker->shared;
    }
    else if (!want && cf_queue_linked(&worker->avail_node)) {
        cf_queue_remove(&self->available, &worker->avail_node);
        self->shared_available -= worker->shared;
    }
}

static void s_worker_add_credit(cf_broker_state_t *self, cf_broker_worker_t *worker, uint64_t n)
{
    uint64_t credit = (uint64_t)worker->credit + n;
    worker->credit = credit > CF_BROKER_MAX_CREDIT ? CF_BROKER_MAX_CREDIT : (uint32_t)credit;
    cf_broker_worker_set_available(self, worker);
}

void cf_broker_worker_unblock(cf_broker_state_t *self, int64_t now)
{
    if (!self->blocked_workers)
        return;
    for (cf_queue_node_t *node = cf_queue_front(&self->workers); node;
         node = cf_queue_next(&self->workers, node)) {
        cf_broker_worker_t *worker = cf_queue_entry(node, cf_broker_worker_t, peer.all_node);
        if (worker->blocked_until_ms && worker->blocked_until_ms <= now) {
            worker->blocked_until_ms = 0;
            self->blocked_workers--;
            cf_broker_worker_set_available(self, worker);
            //  A SHARED one at credit 0 was not asked while blocked.
            self->want_due = self->want_due || worker->shared;
        }
    }
}

// ---------------------------------------------------------------------------
//  Results

//  A value for the task's client, or an error in its place when it could
//  not go on (the codec refuses an empty value; one at the frame limit
//  leaves no room for our envelope): never nothing.
static void s_result_value(cf_broker_state_t *self, cf_broker_task_t *task,
                           const cf_proto_result_t *result)
{
    if (result->value_len == 0
        || result->value_len + sizeof(cf_broker_out_t) + CF_BROKER_ITEM_OVERHEAD
               > CF_BROKER_MAX_BODY) {
        char message[256];
        snprintf(message, sizeof message,
                 "the result of task %" PRIu64 " (%s) cannot be forwarded (%zu bytes)",
                 task->client_task_id, cf_broker_task_function(task), result->value_len);
        if (cf_broker_log_task(self))
            cf_log_warn(S_LOG, "%s", message);
        cf_broker_client_runtime_error(self, task, "ProtocolError", message);
        self->stats.failed++;
    }
    else {
        cf_broker_client_result_ok(self, task->client, task->client_task_id, result->value,
                                   result->value_len);
        self->stats.completed++;
    }
    cf_broker_task_unassign(self, task);
    cf_broker_task_finish(self, task);
}

//  The task's error goes to its client, unless the task asked to be
//  retried on errors and has retries left.
static void s_result_error(cf_broker_state_t *self, cf_broker_task_t *task,
                           const cf_proto_result_t *result)
{
    cf_broker_task_unassign(self, task);
    if ((task->flags & CF_TASK_RETRY_ON_ERROR) && task->retries > 0
        && task->retries_used < (uint32_t)task->retries && !(task->marks & CF_BROKER_STOP_ASKED)) {
        task->retries_used++;
        self->stats.retried++;
        cf_broker_task_requeue(self, task);
        if (cf_broker_log_event(self))
            cf_log_debug(S_LOG,
                         "task %" PRIu64 " (%s) of client %s failed, retried (%" PRIu32
                         " of %" PRId32 ")",
                         task->client_task_id, cf_broker_task_function(task),
                         task->client->peer.label, task->retries_used, task->retries);
        return;
    }
    const cf_proto_error_t *error = &result->error;
    cf_broker_client_result_error(self, task->client, task->client_task_id, error->type,
                                  error->message, error->function, error->host, error->pid);
    self->stats.failed++;
    cf_broker_task_finish(self, task);
}

//  One RESULT item: its slot returns, and its task is answered, retried or
//  requeued, or dropped when nobody waits for it any more.
static void s_worker_result(cf_broker_state_t *self, cf_broker_worker_t *worker,
                            const cf_proto_result_t *result)
{
    //  Every result returns its slot, known id or not: the worker is the
    //  authority on its slots, and this keeps a re-announced worker's count
    //  right while its earlier tasks drain. A SHARED worker gives the slot
    //  to whichever broker it chooses, by CREDIT.
    if (!worker->shared)
        s_worker_add_credit(self, worker, 1);
    //  A task handed back unrun says the worker is stalled, not turning
    //  over (see s_worker_turning_over).
    if (result->status == CF_STATUS_OK || result->status == CF_STATUS_ERROR)
        worker->results++;
    if (result->status == CF_STATUS_OK)
        worker->completed++;
    else if (result->status == CF_STATUS_ERROR)
        worker->failed++;
    cf_broker_task_t *task = cf_idmap_get(self->tasks, result->id);
    if (!task || task->worker != worker) {
        self->stats.ignored++;
        if (cf_broker_log_event(self))
            cf_log_debug(S_LOG, "worker %s: result for unknown task %" PRIu64 " ignored",
                         worker->peer.label, result->id);
        return;
    }
    if (task->state == CF_BROKER_EXPIRED || task->state == CF_BROKER_ORPHANED) {
        if (task->state == CF_BROKER_EXPIRED)
            self->stats.ignored++;
        else
            self->stats.dropped++;
        cf_broker_task_unassign(self, task);
        cf_broker_task_free(self, task);
        return;
    }
    if (result->status == CF_STATUS_OK)
        s_result_value(self, task, result);
    else if (result->status == CF_STATUS_ERROR)
        s_result_error(self, task, result);
    else if (task->marks & (CF_BROKER_CANCEL_ASKED | CF_BROKER_STOP_ASKED)) {
        //  Unrun, and its client asked to cancel or stop it: done.
        cf_broker_task_unassign(self, task);
        cf_broker_client_cancelled(self, task);
    }
    else {
        //  CANCELLED or BUSY from a worker: handed back unrun (a worker
        //  stopping, or stalled). Requeued without using a retry.
        cf_broker_task_unassign(self, task);
        cf_broker_task_requeue(self, task);
        if (cf_broker_log_event(self))
            cf_log_debug(S_LOG, "worker %s handed task %" PRIu64 " (%s) back unrun: requeued",
                         worker->peer.label, task->client_task_id, cf_broker_task_function(task));
    }
}

static void s_worker_results(cf_broker_state_t *self, cf_broker_worker_t *worker,
                             const cf_proto_msg_t *msg)
{
    for (size_t i = 0; i < msg->count; i++)
        s_worker_result(self, worker, &msg->results[i]);
    //  Holding less, it may now take a suspect: worth a WANT.
    if (worker->shared && msg->count > 0)
        self->want_due = true;
}

// ---------------------------------------------------------------------------
//  Workers and their messages

//  A running task of a lost worker with no retry left fails with
//  WorkerLost (while task->worker still names the worker for the error).
static void s_task_lost(cf_broker_state_t *self, cf_broker_worker_t *worker, cf_broker_task_t *task)
{
    char message[512];
    snprintf(message, sizeof message,
             "task %" PRIu64 " (%s) was lost with worker %s (host %s, pid %d) after %" PRIu32
             " attempt%s",
             task->client_task_id, cf_broker_task_function(task), worker->peer.label,
             worker->host[0] ? worker->host : "?", (int)worker->pid, task->retries_used + 1,
             task->retries_used ? "s" : "");
    cf_broker_client_runtime_error(self, task, "WorkerLost", message);
    self->stats.failed++;
    cf_broker_task_unassign(self, task);
    cf_broker_task_finish(self, task);
}

//  Marks SUSPECT every task a lost worker held. Any of them may have
//  killed it: a task's STARTED, and the RESULTs of tasks it finished just
//  before, die with the process, so what the broker holds cannot tell the
//  culprit from the tasks queued behind it. Each uses a retry; from now on
//  each runs alone on a worker, so that if it kills that one too it alone
//  is charged, and an innocent task loses at most one retry to another's
//  crash (before, one per crash: a task prefetched next to a poison task
//  failed with WorkerLost after 4 attempts).
//  With died (a supervisor read from the dead process's memory which tasks
//  its threads ran), only those are charged and become suspects; the rest
//  never began, or finished, and go back free.
static void s_worker_mark_suspects(cf_broker_worker_t *worker, const cf_broker_died_t *died)
{
    for (cf_queue_node_t *node = cf_queue_front(&worker->running); node;
         node = cf_queue_next(&worker->running, node)) {
        cf_broker_task_t *task = cf_queue_entry(node, cf_broker_task_t, node);
        bool ran = !died;
        for (size_t i = 0; died && i < died->count && !ran; i++)
            ran = died->running[i] == task->id;
        if (!ran)
            continue;
        task->marks |= CF_BROKER_CHARGED;
        if (!(task->marks & CF_BROKER_SUSPECT)) {
            task->marks |= CF_BROKER_SUSPECT;
            worker->suspects++;
        }
    }
}

//  Takes every task off the worker: requeued (using a retry when lost and
//  it may have run), failed when lost with no retry left, answered
//  cancelled when its client asked, dropped when nobody waits for it.
//  Counts into *requeued and *failed.
static void s_worker_release(cf_broker_state_t *self, cf_broker_worker_t *worker, bool lost,
                             const cf_broker_died_t *died, size_t *requeued, size_t *failed)
{
    if (lost)
        s_worker_mark_suspects(worker, died);
    //  Back to front with push_front: each client's tasks keep their order.
    cf_queue_node_t *node = cf_queue_back(&worker->running), *prev;
    for (; node; node = prev) {
        prev = cf_queue_prev(&worker->running, node);
        cf_broker_task_t *task = cf_queue_entry(node, cf_broker_task_t, node);
        if (task->state != CF_BROKER_RUNNING) {
            //  Nobody waits for it (timed out or its client is gone).
            cf_broker_task_unassign(self, task);
            cf_broker_task_free(self, task);
            continue;
        }
        if (task->marks & CF_BROKER_CANCEL_ASKED) {
            cf_broker_task_unassign(self, task);
            cf_broker_client_cancelled(self, task);
            continue;
        }
        if (task->marks & CF_BROKER_STOP_ASKED) {
            cf_broker_stop_release(self, task, lost, died && (task->marks & CF_BROKER_CHARGED));
            if (lost)
                (*failed)++;
            continue;
        }
        bool charged = (task->marks & CF_BROKER_CHARGED) != 0;
        task->marks &= (uint8_t)~CF_BROKER_CHARGED;
        if (charged && (task->retries <= 0 || task->retries_used >= (uint32_t)task->retries)) {
            s_task_lost(self, worker, task);
            (*failed)++;
            continue;
        }
        if (charged) {
            task->retries_used++;
            self->stats.retried++;
        }
        cf_broker_task_unassign(self, task);
        cf_broker_task_requeue(self, task);
        (*requeued)++;
    }
}

void cf_broker_worker_remove(cf_broker_state_t *self, cf_broker_worker_t *worker,
                             const char *reason, bool lost)
{
    cf_broker_worker_remove_died(self, worker, reason, lost, NULL);
}

void cf_broker_worker_remove_died(cf_broker_state_t *self, cf_broker_worker_t *worker,
                                  const char *reason, bool lost, const cf_broker_died_t *died)
{
    size_t requeued = 0, failed = 0;
    s_worker_release(self, worker, lost, died, &requeued, &failed);
    if (lost) {
        self->stats.lost_workers++;
        if (failed)
            cf_log_warn(S_LOG,
                        "worker %s lost (%s), %zu tasks requeued, %zu failed (retries used up)",
                        worker->peer.label, reason, requeued, failed);
        else
            cf_log_warn(S_LOG, "worker %s lost (%s), %zu tasks requeued", worker->peer.label,
                        reason, requeued);
    }
    else
        cf_log_info(S_LOG, "worker %s left (%s), %zu tasks requeued", worker->peer.label, reason,
                    requeued);
    //  After its tasks went back: a function only it served starts its wait.
    cf_broker_queue_clear_functions(self, worker);
    if (cf_queue_linked(&worker->avail_node)) {
        cf_queue_remove(&self->available, &worker->avail_node);
        self->shared_available -= worker->shared;
    }
    if (cf_queue_linked(&worker->shared_node))
        cf_queue_remove(&self->shared, &worker->shared_node);
    if (worker->blocked_until_ms)
        self->blocked_workers--;
    cf_broker_peer_remove(self, &worker->peer, true);
    free(worker);
}

static cf_broker_worker_t *s_worker_new(cf_broker_state_t *self, const void *id, size_t len,
                                        int64_t now)
{
    cf_broker_worker_t *worker = (cf_broker_worker_t *)cf_broker_peer_new(
        self, true, sizeof *worker, id, len, now);
    if (!worker)
        return NULL;
    cf_queue_init(&worker->running);
    cf_queue_node_init(&worker->avail_node);
    cf_queue_node_init(&worker->shared_node);
    return worker;
}

static size_t s_host_len(cf_proto_str_t host, size_t max)
{
    size_t len = host.ptr ? host.len : 0;
    return len > max ? max : len;
}

static bool s_same_host(const cf_broker_worker_t *worker, cf_proto_str_t host)
{
    size_t len = s_host_len(host, sizeof worker->host - 1);
    return strlen(worker->host) == len && (len == 0 || memcmp(worker->host, host.ptr, len) == 0);
}

static void s_worker_ready(cf_broker_state_t *self, cf_broker_worker_t *worker,
                           const cf_proto_msg_t *msg)
{
    size_t host_len = s_host_len(msg->host, sizeof worker->host - 1);
    if (host_len)
        memcpy(worker->host, msg->host.ptr, host_len);
    worker->host[host_len] = '\0';
    worker->pid = msg->pid;
    //  READY states what the worker can take now; what it still runs comes
    //  back with its results, each returning a slot (not for SHARED).
    worker->credit = 0;
    bool shared = (msg->features & CF_PROTO_FEATURE_SHARED) != 0;
    if (shared != worker->shared) {
        //  Out of the available list while it changes, so that list's
        //  SHARED count stays right; a READY that keeps it keeps the
        //  worker's place there, as before SHARED existed.
        cf_broker_worker_set_available(self, worker);
        worker->shared = shared;
        if (shared)
            cf_queue_push_back(&self->shared, &worker->shared_node);
        else
            cf_queue_remove(&self->shared, &worker->shared_node);
    }
    worker->want_sent = false;
    s_worker_add_credit(self, worker, msg->credit);
    //  threads decides what counts as an idle thread in s_plan. A worker
    //  that prefetches announces more credit than threads; taken as
    //  threads, that credit once sent a task to a "free thread" of a worker
    //  whose only thread ran a long task while another worker idled. A
    //  READY without threads (3 fields) says only its credit.
    uint64_t threads = msg->threads ? (uint64_t)msg->threads
                                    : (uint64_t)msg->credit + cf_queue_size(&worker->running);
    worker->threads = threads > CF_BROKER_MAX_CREDIT ? CF_BROKER_MAX_CREDIT : (uint32_t)threads;
    worker->says_begun = (msg->features & CF_PROTO_FEATURE_BEGUN) != 0;
    worker->says_stop = (msg->features & CF_PROTO_FEATURE_STOP) != 0;
    worker->says_lone = (msg->features & CF_PROTO_FEATURE_LONE) != 0;
}

//  The functions a READY or FUNCTIONS says the worker serves; false when
//  out of memory (it serves what it did).
static bool s_worker_functions(cf_broker_state_t *self, cf_broker_worker_t *worker,
                               const cf_proto_msg_t *msg)
{
    if (cf_broker_queue_set_functions(self, worker, &msg->functions) == CF_OK) {
        if (msg->functions.given && cf_broker_log_event(self))
            cf_log_debug(S_LOG, "worker %s serves %" PRIu32 " functions", worker->peer.label,
                         msg->functions.count);
        return true;
    }
    cf_log_error_rated(S_LOG, "out of memory: the function list of worker %s not taken",
                       worker->peer.label);
    return false;
}

//  CREDIT: more slots (for a SHARED worker, its grant: see
//  cf_broker_shared.c).
static void s_worker_on_credit(cf_broker_state_t *self, cf_broker_worker_t *worker, uint32_t n)
{
    s_worker_add_credit(self, worker, n);
    if (worker->shared)
        cf_broker_shared_granted(self, worker);
}

//  READY: a new worker joins; the same identity from another process
//  (another pid or host) replaces its predecessor, whose tasks are lost;
//  the same process announcing again (it thought we were gone) keeps its
//  tasks.
static void s_worker_on_ready(cf_broker_state_t *self, cf_broker_worker_t *worker, const void *id,
                              size_t len, const cf_proto_msg_t *msg, int64_t now)
{
    if (worker && msg->pid == worker->pid && s_same_host(worker, msg->host)) {
        s_worker_ready(self, worker, msg);
        s_worker_functions(self, worker, msg);
        if (cf_broker_log_event(self))
            cf_log_debug(S_LOG,
                         "worker %s announced again (%" PRIu32 " threads, %" PRIu32 " slots free)",
                         worker->peer.label, worker->threads, worker->credit);
        cf_broker_shared_ack(self, worker);
        return;
    }
    bool again = worker != NULL;
    if (again)
        cf_broker_worker_remove(self, worker, "restarted", true);
    worker = s_worker_new(self, id, len, now);
    if (!worker) {
        cf_log_error(S_LOG, "out of memory: new worker refused");
        return;
    }
    s_worker_ready(self, worker, msg);
    if (!s_worker_functions(self, worker, msg)) {
        //  It would serve nothing it said: better unknown, and asked again.
        cf_broker_worker_remove(self, worker, "out of memory", false);
        return;
    }
    char functions[32] = "every function";
    if (msg->functions.given)
        snprintf(functions, sizeof functions, "%" PRIu32 " functions", msg->functions.count);
    cf_log_info(
        S_LOG, "worker %s joined%s (host %s, pid %d, %" PRIu32 " threads, %" PRIu32 " slots, %s%s)",
        worker->peer.label, again ? " again" : "", worker->host[0] ? worker->host : "?",
        (int)worker->pid, worker->threads, worker->credit, functions,
        worker->shared ? ", shared" : "");
    cf_broker_shared_ack(self, worker);
}

//  STARTED: these tasks' functions began. Their clients hear it (at once
//  when it answers their CANCEL); a task's STARTED after its RESULT, or
//  for a task no longer on this worker, is stale and ignored.
static void s_worker_started(cf_broker_state_t *self, cf_broker_worker_t *worker,
                             const cf_proto_msg_t *msg)
{
    for (size_t i = 0; i < msg->count; i++) {
        cf_broker_task_t *task = cf_idmap_get(self->tasks, msg->ids[i]);
        if (!task || task->worker != worker || (task->marks & CF_BROKER_BEGUN))
            continue;
        task->marks |= CF_BROKER_BEGUN;
        if (task->state == CF_BROKER_RUNNING)
            cf_broker_client_started(self, task->client, task->client_task_id,
                                     (task->marks & CF_BROKER_CANCEL_ASKED) != 0);
    }
}

bool cf_broker_worker_cancel(cf_broker_state_t *self, cf_broker_task_t *task)
{
    cf_broker_worker_t *worker = task->worker;
    if ((task->marks & CF_BROKER_BEGUN) || !worker->says_begun)
        return false;
    if (task->marks & CF_BROKER_CANCEL_ASKED)
        return true;    //  the worker's answer is on its way
    cf_proto_enc_begin(self->enc, CF_MSG_CANCEL);
    cf_err_t rc = cf_proto_enc_id(self->enc, task->id);
    if (rc == CF_OK)
        rc = cf_proto_enc_send(self->enc, self->workers_sock, worker->peer.id, worker->peer.id_len);
    if (rc != CF_OK) {
        //  Unasked, it runs; the client's cancel gets no answer and gives
        //  up on its own. Its RESULT comes as usual.
        if (cf_broker_log_event(self))
            cf_log_debug(S_LOG, "CANCEL of task %" PRIu64 " not sent to worker %s: %s",
                         task->client_task_id, worker->peer.label, cf_strerror(rc));
        return true;
    }
    task->marks |= CF_BROKER_CANCEL_ASKED;
    return true;
}

void cf_broker_worker_on_message(cf_broker_state_t *self, const void *id, size_t len,
                                 cf_proto_msg_t *msg)
{
    int64_t now = cf_clock_now_ms();
    cf_broker_worker_t *worker = (cf_broker_worker_t *)cf_broker_peer_seen(self->worker_table, id,
                                                                           len, now);
    switch (msg->type) {
    case CF_MSG_READY:
        s_worker_on_ready(self, worker, id, len, msg, now);
        break;
    case CF_MSG_CREDIT:
        if (worker)
            s_worker_on_credit(self, worker, msg->credit);
        else
            cf_broker_peer_unknown(self, self->workers_sock, id, len, CF_PROTO_UNKNOWN_WORKER);
        break;
    case CF_MSG_RESULT:
        if (worker)
            s_worker_results(self, worker, msg);
        else {
            self->stats.ignored += msg->count;
            cf_broker_peer_unknown(self, self->workers_sock, id, len, CF_PROTO_UNKNOWN_WORKER);
        }
        break;
    case CF_MSG_STARTED:
        if (worker)
            s_worker_started(self, worker, msg);
        else
            cf_broker_peer_unknown(self, self->workers_sock, id, len, CF_PROTO_UNKNOWN_WORKER);
        break;
    case CF_MSG_PROGRESS:
        if (worker)
            cf_broker_progress_from_worker(self, worker, msg);
        else
            cf_broker_peer_unknown(self, self->workers_sock, id, len, CF_PROTO_UNKNOWN_WORKER);
        break;
    case CF_MSG_FUNCTIONS:
        if (worker)
            s_worker_functions(self, worker, msg);
        else
            cf_broker_peer_unknown(self, self->workers_sock, id, len, CF_PROTO_UNKNOWN_WORKER);
        break;
    case CF_MSG_HEARTBEAT:
        if (!worker)
            cf_broker_peer_unknown(self, self->workers_sock, id, len, CF_PROTO_UNKNOWN_WORKER);
        break;
    case CF_MSG_DISCONNECT:
        if (worker)
            cf_broker_worker_remove(self, worker, "disconnected", false);
        break;
    default:
        cf_broker_peer_unexpected(self, self->workers_sock, id, len, msg->type);
        break;
    }
}

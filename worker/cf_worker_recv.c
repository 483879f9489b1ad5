//  What the worker's actor reads from the broker (cf_worker_int.h has the
//  map): TASK, CANCEL, STOP, HEARTBEAT, ERROR and DISCONNECT; the signs
//  that the broker forgot us (announce again) or is gone.

#include "cf_worker_int.h"

#include "cf_clock.h"
#include "cf_error.h"
#include "cf_log.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <zmq.h>

#define S_LOG         "worker"
//  Messages read per wakeup before the actor looks at its other duties.
#define S_READ_BUDGET 256
//  Tasks queued beyond threads + prefetch + this (a broker ignoring credit)
//  are handed back.
#define S_QUEUE_SLACK 64
//  The shortest heartbeat interval a broker may impose.
#define S_MIN_IVL_MS  10

//  CANCEL from the broker: a task still queued here is taken out and
//  answered RESULT cancelled (it never runs); any other id is answered
//  STARTED, as its function began (its RESULT follows, or went already).
//  An executor takes tasks from the queue under the same lock, so each
//  task is either cancelled here or begun there, never both.
static void s_cancel_tasks(cf_worker_actor_t *a, const cf_proto_msg_t *msg)
{
    cf_worker_t *w = a->w;
    cf_queue_t cancelled;
    cf_queue_init(&cancelled);
    cf_proto_enc_begin(a->enc, CF_MSG_STARTED);
    pthread_mutex_lock(&w->lock);
    for (size_t i = 0; i < msg->count; i++) {
        cf_worker_task_t *task = cf_worker_front(&w->queue);
        while (task && (task->id != msg->ids[i] || task->link != a->link))
            task = cf_worker_next(&w->queue, task);
        if (task) {
            cf_queue_remove(&w->queue, &task->node);
            cf_queue_push_back(&cancelled, &task->node);
        }
        else if (!a->terminating)    //  else DISCONNECT hands it back unrun
            (void)cf_proto_enc_id(a->enc, msg->ids[i]);
    }
    pthread_mutex_unlock(&w->lock);
    if (cf_proto_enc_count(a->enc) > 0)
        cf_worker_send_sent(a, cf_proto_enc_send(a->enc, a->sock, NULL, 0), "STARTED");
    //  Refused: they run after all, and their results answer the CANCEL.
    (void)cf_worker_send_unrun(a, &cancelled, CF_STATUS_CANCELLED);
}

// ---------------------------------------------------------------------------
//  Stopping (STOP [[id, grace_ms]], docs/protocol.md). A task still queued
//  here is taken out and answered cancelled, as CANCEL does; a running one
//  gets its stop flag (cf_stop_requested says true to it from now on). In
//  a worker process (stop_kills_process) the request also arms a deadline:
//  if the task still runs grace_ms later, cf_worker_recv_check_stops answers
//  it Interrupted and ends the worker (CF_ETIMEDOUT), and the process that
//  runs it exits, which kills the task; its supervisor replaces it. Ids of
//  tasks that finished (their RESULT went or goes) or that we never had
//  are ignored: their RESULT answers for them.

static cf_worker_task_t *s_running_task(cf_worker_t *w, unsigned link, uint64_t id)
{
    for (cf_queue_node_t *node = cf_queue_front(&w->runs); node;
         node = cf_queue_next(&w->runs, node)) {
        cf_worker_task_t *task = cf_queue_entry(node, cf_worker_task_t, run_node);
        if (task->id == id && task->link == link)
            return task;
    }
    return NULL;
}

static void s_stop_tasks(cf_worker_actor_t *a, const cf_proto_msg_t *msg)
{
    cf_worker_t *w = a->w;
    cf_queue_t cancelled;
    cf_queue_init(&cancelled);
    int64_t now = cf_clock_now_ms();
    pthread_mutex_lock(&w->lock);
    for (size_t i = 0; i < msg->count; i++) {
        const cf_proto_stop_t *stop = &msg->stops[i];
        cf_worker_task_t *task = cf_worker_front(&w->queue);
        while (task && (task->id != stop->id || task->link != a->link))
            task = cf_worker_next(&w->queue, task);
        if (task) {
            cf_queue_remove(&w->queue, &task->node);
            cf_queue_push_back(&cancelled, &task->node);
            //  If the RESULT cannot be sent it runs after all: stopped.
            atomic_store_explicit(&task->stop, true, memory_order_release);
            continue;
        }
        task = s_running_task(w, a->link, stop->id);
        if (!task)
            continue;
        atomic_store_explicit(&task->stop, true, memory_order_release);
        if (!w->stop_kills_process)
            continue;
        int64_t deadline = now + (int64_t)stop->grace_ms;
        if (!task->stop_deadline_ms || deadline < task->stop_deadline_ms) {
            task->stop_deadline_ms = deadline;
            task->stop_grace_ms = stop->grace_ms;
        }
        if (!a->stop_deadline_ms || deadline < a->stop_deadline_ms)
            a->stop_deadline_ms = deadline;
    }
    pthread_mutex_unlock(&w->lock);
    (void)cf_worker_send_unrun(a, &cancelled, CF_STATUS_CANCELLED);
}

//  Encodes RESULT Interrupted for every running task whose stop deadline
//  passed (under lock); returns how many, and sets *next to the earliest
//  deadline still ahead (0: none).
static size_t s_encode_overdue(cf_worker_actor_t *a, int64_t now, int64_t *next)
{
    cf_worker_t *w = a->w;
    size_t overdue = 0;
    *next = 0;
    cf_proto_enc_begin(a->enc, CF_MSG_RESULT);
    for (cf_queue_node_t *node = cf_queue_front(&w->runs); node;
         node = cf_queue_next(&w->runs, node)) {
        cf_worker_task_t *task = cf_queue_entry(node, cf_worker_task_t, run_node);
        if (!task->stop_deadline_ms || task->link != a->link)
            continue;    //  none, or another broker's: its own link answers it
        if (task->stop_deadline_ms > now) {
            if (!*next || task->stop_deadline_ms < *next)
                *next = task->stop_deadline_ms;
            continue;
        }
        char message[256];
        snprintf(message, sizeof message,
                 "%s() was asked to stop and did not return within its grace of %" PRIu32
                 " ms: its worker process was killed (and replaced); the task is not retried",
                 task->function, task->stop_grace_ms);
        cf_log_warn(S_LOG,
                    "task %" PRIu64 " (%s) did not stop within %" PRIu32 " ms: ending this process",
                    task->id, task->function, task->stop_grace_ms);
        if (cf_proto_enc_result_error(a->enc, task->id, CF_INTERRUPTED, message, task->function,
                                      cf_registry_hostname(), w->pid)
            == CF_OK)
            overdue++;
    }
    return overdue;
}

void cf_worker_recv_check_stops(cf_worker_actor_t *a, int64_t now)
{
    if (!a->stop_deadline_ms || now < a->stop_deadline_ms)
        return;
    //  What finished before goes out first.
    cf_worker_actor_collect(a);
    cf_worker_send_flush(a);
    pthread_mutex_lock(&a->w->lock);
    size_t overdue = s_encode_overdue(a, now, &a->stop_deadline_ms);
    pthread_mutex_unlock(&a->w->lock);
    if (overdue == 0)
        return;    //  they returned in time
    //  Refused: the broker learns it from the process's death instead (a
    //  task it asked to stop whose worker is lost fails with Interrupted).
    cf_worker_send_sent(a, cf_proto_enc_send(a->enc, a->sock, NULL, 0), "RESULT");
    a->done = true;
    a->end_reason = CF_ETIMEDOUT;
}

// ---------------------------------------------------------------------------
//  Tasks, the broker's news, reading

//  Several brokers: a task uses one of the slots its broker may use,
//  those it had before our last READY first. None left: it sent past our
//  grant (or before it read a READY of ours after a loss), and the task
//  goes back unrun, so the worker never holds more than its limit.
static bool s_use_grant(cf_worker_actor_t *a)
{
    if (a->credit_stale > 0) {
        a->credit_stale--;
        return true;
    }
    if (a->credit_out > 0) {
        a->credit_out--;
        return true;
    }
    cf_log_debug(S_LOG, "a task from %s beyond our grant: handed back", a->endpoint);
    return false;
}

//  The counters of what is held now (under lock).
static void s_count_held(cf_worker_actor_t *a)
{
    cf_worker_t *w = a->w;
    uint64_t held = a->in_hand;
    if (a->budget) {
        held = 0;
        for (unsigned i = 0; i < a->budget->count; i++)
            held += a->budget->links[i].in_hand;
    }
    w->held = held;
    if (held > w->max_held)
        w->max_held = held;
}

static void s_take_tasks(cf_worker_actor_t *a, cf_proto_msg_t *msg)
{
    cf_worker_t *w = a->w;
    size_t queued = 0;
    pthread_mutex_lock(&w->lock);
    for (size_t i = 0; i < msg->count; i++) {
        const cf_proto_task_t *src = &msg->tasks[i];
        if (!a->accepting) {
            a->declined++;
            cf_log_debug(S_LOG, "task %" PRIu64 " not taken: this worker is leaving", src->id);
            continue;
        }
        cf_worker_task_t *task = NULL;
        bool granted = !a->budget || s_use_grant(a);
        if (granted
            && cf_queue_size(&w->queue)
                   < (size_t)w->threads + CF_WORKER_PREFETCH_MAX + S_QUEUE_SLACK)
            task = cf_worker_exec_task_new(msg, src);
        if (!task) {
            pthread_mutex_unlock(&w->lock);
            cf_worker_send_hand_back(a, src->id);
            pthread_mutex_lock(&w->lock);
            continue;
        }
        task->link = a->link;
        cf_worker_exec_enqueue(w, task);
        queued++;
        a->accepted++;
        if (a->budget)
            a->budget->accepted++;
        a->in_hand++;
        w->taken[a->link]++;
        s_count_held(a);
        if (a->in_hand > a->grant) {
            //  A broker past our credit, or tasks sent before it read our
            //  READY: those are ours to trim again.
            a->grant = a->in_hand;
            if (a->prefetched_once)
                a->prefetching = true;
        }
        if (w->max_tasks > 0 && *cf_worker_accepted(a) >= (uint64_t)w->max_tasks) {
            a->accepting = false;
            for (unsigned i = 0; a->budget && i < a->budget->count; i++)
                a->budget->links[i].accepting = false;
            cf_log_info(S_LOG, "took its %d tasks (--max-tasks): finishing", w->max_tasks);
        }
    }
    if (queued > 0 && cf_worker_exec_inline_wanted(a))
        w->inline_due = true;
    else if (queued == 1)
        pthread_cond_signal(&w->work);
    else if (queued > 1)
        pthread_cond_broadcast(&w->work);
    pthread_mutex_unlock(&w->lock);
}

//  One re-introduction per restart (docs/protocol.md section 7): every sign
//  sets the one announce flag that one READY clears. An "unknown worker"
//  that comes within an interval of a READY answers a message sent before
//  it (a heartbeat queued while the broker was away) and is not a new sign:
//  a second READY would only reset our credit while its tasks are on the
//  way. A broker that really missed the READY says so again at our next
//  heartbeat, after the interval.
void cf_worker_recv_announce(cf_worker_actor_t *a, bool unknown_worker, const char *why)
{
    int64_t now = cf_clock_now_ms();
    if (a->announce)
        return;
    if (unknown_worker && a->announce_asked_ms
        && now - a->announce_asked_ms < cf_worker_actor_send_ivl(a))
        return;
    cf_log_info(S_LOG, "%s: announcing again", why);
    a->announce = true;
    a->announce_asked_ms = now;
    a->reintroductions++;
}

//  The broker is gone (silent, or said DISCONNECT).
void cf_worker_recv_broker_gone(cf_worker_actor_t *a, const char *why)
{
    if (a->broker_lost)
        return;
    a->broker_lost = true;
    a->introduced = false;
    cf_worker_send_forget_credit(a);
    if (a->budget) {
        uint64_t kept = cf_queue_size(&a->pending) - a->orphaned;
        a->orphaned += kept;
        a->in_hand -= kept;
    }
    if (a->w->exit_on_broker_loss) {
        cf_log_warn(S_LOG, "broker %s %s: ending", a->endpoint, why);
        a->done = true;
        a->end_reason = CF_ESHUTDOWN;
        return;
    }
    cf_log_warn(S_LOG, "broker %s %s: waiting for it", a->endpoint, why);
}

//  Several brokers: WANT [n] (the broker could use n slots; the first
//  after a READY of ours answers it, and from then on its credit is what
//  we grant after that READY) or REFUND [k] (it gives k back: nothing
//  there can use them; every task it sent before came first). What is
//  granted goes out in cf_worker_send_grants.
static void s_on_slots(cf_worker_actor_t *a, const cf_proto_msg_t *msg)
{
    if (msg->type == CF_MSG_REFUND) {
        uint64_t k = msg->credit;
        a->credit_out = a->credit_out > k ? a->credit_out - k : 0;
        a->wanted = 0;
        return;
    }
    if (a->readies_unacked > 0) {
        a->readies_unacked--;
        a->credit_stale = 0;
        if (!a->acked)
            cf_log_info(S_LOG, "broker %s takes shared slots", a->endpoint);
        a->acked = true;
        a->ack_warned = false;
    }
    a->wanted = msg->credit;
}

static void s_on_message(cf_worker_actor_t *a, cf_proto_msg_t *msg)
{
    switch (msg->type) {
    case CF_MSG_HEARTBEAT:
        if (msg->boot) {
            if (a->boot && msg->boot != a->boot) {
                a->list_refused = false;    //  another broker: maybe a newer one
                cf_worker_send_forget_credit(a);
                cf_worker_recv_announce(a, false, "broker restarted (new boot id)");
            }
            a->boot = msg->boot;
        }
        if (msg->ivl_ms)
            a->broker_ivl_ms = msg->ivl_ms < S_MIN_IVL_MS ? S_MIN_IVL_MS
                               : msg->ivl_ms > INT32_MAX  ? INT32_MAX
                                                          : (int)msg->ivl_ms;
        break;
    case CF_MSG_TASK:
        a->list_pending = false;    //  it took our READY
        s_take_tasks(a, msg);
        break;
    case CF_MSG_CANCEL:
        s_cancel_tasks(a, msg);
        break;
    case CF_MSG_WANT:
    case CF_MSG_REFUND:
        if (a->budget)
            s_on_slots(a, msg);
        else
            cf_log_debug(S_LOG, "unexpected %s from the broker ignored",
                         cf_proto_command_name(msg->type));
        break;
    case CF_MSG_STOP:
        s_stop_tasks(a, msg);
        break;
    case CF_MSG_ERROR:
        if (cf_proto_str_eq(msg->text, CF_PROTO_UNKNOWN_WORKER)) {
            //  It lost track of us (it restarted, or judged us lost).
            cf_worker_recv_announce(a, true, "broker does not know this worker");
        }
        else if (a->list_pending && cf_proto_str_eq(msg->text, CF_PROTO_MALFORMED)) {
            //  A broker older than routing: our READY's function list is
            //  what it cannot read. Serve every function there, as cf/1
            //  workers do, rather than not at all.
            a->list_pending = false;
            a->list_refused = true;
            cf_log_warn(S_LOG,
                        "the broker at %s refused READY with a function list (a broker older "
                        "than routing by function): announcing without one, so it may send "
                        "tasks of functions this worker lacks; upgrade the broker",
                        a->endpoint);
            cf_worker_recv_announce(a, false, "the broker refused READY's function list");
        }
        else if (cf_proto_str_eq(msg->text, CF_PROTO_KEY_REVOKED)
                 || cf_proto_str_eq(msg->text, CF_PROTO_NOT_ALLOWED)) {
            //  Nothing we send will be taken: stop, and say why.
            cf_log_error(S_LOG, "the broker at %s refused this worker: %.*s", a->endpoint,
                         (int)msg->text.len, msg->text.ptr);
            a->done = true;
            a->end_reason = CF_EAUTH;
        }
        else
            cf_log_warn_rated(S_LOG, "broker refused a message: %.*s",
                              (int)(msg->text.len > 200 ? 200 : msg->text.len),
                              msg->text.ptr ? msg->text.ptr : "");
        break;
    case CF_MSG_DISCONNECT:
        cf_worker_recv_broker_gone(a, "said DISCONNECT");
        //  Whoever answers next has forgotten us: cf_worker_recv_read announces when it
        //  speaks, not now (a READY to a broker going away is lost), and
        //  its first HEARTBEAT is not a second sign.
        a->boot = 0;
        break;
    default:
        cf_log_debug(S_LOG, "unexpected %s from the broker ignored",
                     cf_proto_command_name(msg->type) ? cf_proto_command_name(msg->type) : "?");
        break;
    }
}

void cf_worker_recv_read(cf_worker_actor_t *a)
{
    for (int n = 0; n < S_READ_BUDGET && !a->done; n++) {
        cf_proto_msg_t *msg = NULL;
        cf_err_t rc = cf_proto_recv(a->sock, false, NULL, &msg);
        if (rc == CF_ETIMEDOUT)
            break;
        if (rc == CF_ESYS) {
            if (errno == ETERM) {
                cf_log_error(S_LOG, "the zmq context was terminated under the worker");
                a->done = true;
                a->end_reason = CF_ESHUTDOWN;
            }
            break;
        }
        //  Anything the broker sends, even a message we refuse, shows it
        //  is alive.
        a->last_recv_ms = cf_clock_now_ms();
        if (a->broker_lost && !a->done) {
            a->broker_lost = false;
            a->ready_sent_ms = a->last_recv_ms;    //  its answer to a READY is due from now
            cf_link_backoff_reset(&a->reopen);
            if (!a->introduced)
                cf_worker_recv_announce(a, false, "broker is back");
        }
        if (rc == CF_EPROTO) {
            cf_log_debug(S_LOG, "malformed message from the broker dropped");
            continue;
        }
        if (rc != CF_OK)
            break;    //  out of memory: the message is lost, the broker retries
        s_on_message(a, msg);
        cf_proto_msg_destroy(&msg);
    }
}

//  What the worker's actor sends (cf_worker_int.h has the map): READY,
//  FUNCTIONS, STARTED, PROGRESS, RESULT batches, tasks handed back,
//  heartbeats and DISCONNECT; and the prefetch that decides the credit.

#include "cf_worker_int.h"

#include "cf_clock.h"
#include "cf_error.h"
#include "cf_log.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <zmq.h>

#define S_LOG "worker"

//  Prefetch. With credit = threads every task pays a full broker round
//  trip before the next one reaches a free thread: a 2-thread worker at
//  400 us per round trip runs 5,000 tasks/s whatever the tasks cost. So
//  the worker asks for more than its threads, enough that its local queue
//  holds about CF_WORKER_PREFETCH_BUDGET_US of work per thread, measured as a
//  moving mean of run times: no-op tasks give CF_WORKER_PREFETCH_MAX queued, 100 us
//  tasks 20 per thread, tasks of 2 ms or more none (credit = threads, so a
//  long task never waits here while another worker idles). Until a run
//  time is known it asks for threads only. More is asked with CREDIT; less
//  with READY, sent after handing queued tasks back (BUSY), once the
//  broker holds more than twice what we want (see cf_worker_send_adjust_prefetch).
static uint64_t s_target(const cf_worker_actor_t *a)
{
    uint64_t threads = (uint64_t)a->w->threads;
    if (a->mean_run_us < 0)
        return threads;
    double extra = (double)CF_WORKER_PREFETCH_BUDGET_US * (double)threads
                   / (a->mean_run_us > 1.0 ? a->mean_run_us : 1.0);
    return threads + (extra >= CF_WORKER_PREFETCH_MAX ? CF_WORKER_PREFETCH_MAX : (uint64_t)extra);
}

//  Slots free now: what we want to hold minus what is held (each held
//  task's result will return its slot), within what max_tasks still allows.
static uint32_t s_credit(const cf_worker_actor_t *a)
{
    if (!a->accepting)
        return 0;
    uint64_t target = s_target(a);
    uint64_t credit = a->in_hand < target ? target - a->in_hand : 0;
    if (a->w->max_tasks > 0) {
        uint64_t left = (uint64_t)a->w->max_tasks - a->accepted;
        if (left < credit)
            credit = left;
    }
    return (uint32_t)credit;
}

//  After a send: EBUSY waits for POLLOUT; anything else is logged.
void cf_worker_send_sent(cf_worker_actor_t *a, cf_err_t rc, const char *what)
{
    if (rc == CF_OK) {
        a->last_send_ms = cf_clock_now_ms();
        return;
    }
    if (rc == CF_EBUSY) {
        a->blocked = true;
        return;
    }
    cf_log_warn_rated(S_LOG, "cannot send %s: %s (%s)", what, cf_strerror(rc), zmq_strerror(errno));
}

static cf_err_t s_encode_result(cf_worker_actor_t *a, const cf_worker_task_t *t)
{
    const char *host = cf_registry_hostname();
    if (t->out_of_memory)
        return cf_proto_enc_result_error(a->enc, t->id, "MemoryError",
                                         "out of memory running the task", t->function, host,
                                         a->w->pid);
    if (t->outcome.ok)
        return cf_proto_enc_result_ok(a->enc, t->id, t->outcome.value, t->outcome.value_len);
    return cf_proto_enc_result_error(a->enc, t->id, t->outcome.error_type, t->outcome.error_message,
                                     t->function, host, a->w->pid);
}

//  Tells the broker which tasks began since the last call (STARTED), so
//  that it and the client know them running and a CANCEL no longer tries
//  for them. A refused send loses the news, not the task: the broker asks
//  again with CANCEL, and the RESULT says it too.
static void s_announce_begun(cf_worker_actor_t *a)
{
    cf_worker_t *w = a->w;
    pthread_mutex_lock(&w->lock);
    if (cf_queue_empty(&w->begun)) {
        pthread_mutex_unlock(&w->lock);
        return;
    }
    cf_proto_enc_begin(a->enc, CF_MSG_STARTED);
    cf_queue_node_t *node, *next;
    if (!a->budget) {
        while ((node = cf_queue_pop_front(&w->begun)))
            (void)cf_proto_enc_id(a->enc, cf_queue_entry(node, cf_worker_task_t, begun_node)->id);
    }
    else {
        //  Several brokers: each hears of its own tasks only.
        for (node = cf_queue_front(&w->begun); node; node = next) {
            next = cf_queue_next(&w->begun, node);
            cf_worker_task_t *task = cf_queue_entry(node, cf_worker_task_t, begun_node);
            if (task->link != a->link)
                continue;
            cf_queue_remove(&w->begun, node);
            (void)cf_proto_enc_id(a->enc, task->id);
        }
    }
    pthread_mutex_unlock(&w->lock);
    if (cf_proto_enc_count(a->enc) == 0)
        return;
    cf_worker_send_sent(a, cf_proto_enc_send(a->enc, a->sock, NULL, 0), "STARTED");
}

//  Sends PROGRESS with the reports due (cf_worker_progress.h): after
//  STARTED, before RESULT, so a task's last report reaches the broker
//  before its result. A refused send keeps them for the next turn.
static void s_send_progress(cf_worker_actor_t *a)
{
    size_t sent = 0;
    cf_err_t rc = cf_worker_progress_send(a->w->progress[a->link], a->enc, a->sock,
                                          cf_clock_now_ms(), &sent);
    if (sent > 0 || rc != CF_OK)
        cf_worker_send_sent(a, rc, "PROGRESS");
}

//  The functions to announce, as cf_registry_names gives them; NULL (and
//  *count 0) for "every function": when the worker does not announce,
//  when the list is over the protocol's limit (said once), or when out of
//  memory (*failed then says so).
static char **s_functions(cf_worker_actor_t *a, size_t *count, bool *failed)
{
    *count = 0;
    *failed = false;
    if (!a->w->announce_functions || a->list_refused)
        return NULL;
    char **names = cf_registry_names(count, &a->functions_sent);
    if (!names) {
        *failed = true;
        return NULL;
    }
    if (*count > CF_PROTO_MAX_FUNCTIONS) {
        cf_log_warn_rated(S_LOG,
                          "%zu functions are more than READY can name (%d): serving every "
                          "function, so the broker may send tasks of functions this worker lacks",
                          *count, CF_PROTO_MAX_FUNCTIONS);
        free(names);
        *count = 0;
        return NULL;
    }
    return names;
}

//  READY: who we are, what we can take, and the functions we serve.
static cf_err_t s_send_ready(cf_worker_actor_t *a, uint32_t credit)
{
    size_t count;
    bool failed;
    char **names = s_functions(a, &count, &failed);
    if (failed)
        return CF_ENOMEM;
    uint32_t features = CF_PROTO_FEATURE_BEGUN | CF_PROTO_FEATURE_STOP | CF_PROTO_FEATURE_LONE
                        | (a->budget ? CF_PROTO_FEATURE_SHARED : 0);
    cf_proto_enc_ready(a->enc, credit, (uint32_t)a->w->threads, cf_registry_hostname(), a->w->pid,
                       features, (const char *const *)names, count);
    bool listed = names != NULL;
    free(names);
    cf_err_t rc = cf_proto_enc_send(a->enc, a->sock, NULL, 0);
    if (rc == CF_OK) {
        a->functions_due = false;
        a->list_pending = listed;
    }
    return rc;
}

//  FUNCTIONS: more functions were registered since READY.
static void s_send_functions(cf_worker_actor_t *a)
{
    size_t count;
    bool failed;
    char **names = s_functions(a, &count, &failed);
    if (!names) {
        a->functions_due = failed;    //  out of memory: later; else nothing to say
        return;
    }
    cf_proto_enc_functions(a->enc, (const char *const *)names, count);
    free(names);
    cf_err_t rc = cf_proto_enc_send(a->enc, a->sock, NULL, 0);
    cf_worker_send_sent(a, rc, "FUNCTIONS");
    a->functions_due = rc != CF_OK;
}

//  A SHARED READY went: the broker sets our credit there to 0 when it
//  reads it. What it had may still bring tasks sent before (kept apart,
//  as stale, until the WANT that answers the READY); what it asked for is
//  asked again by that WANT.
static void s_shared_announced(cf_worker_actor_t *a)
{
    a->credit_stale += a->credit_out;
    a->credit_out = 0;
    a->wanted = 0;
    if (a->readies_unacked++ == 0)
        a->ready_sent_ms = cf_clock_now_ms();
}

//  Sends READY if due, then STARTED for tasks that began, then pending
//  results in as few RESULT messages as the limits allow. Stops at the
//  first refused send.
void cf_worker_send_flush(cf_worker_actor_t *a)
{
    if (a->blocked)
        return;
    if (a->announce) {
        //  Several brokers: credit 0, and slots by grant only.
        uint32_t credit = a->budget ? 0 : s_credit(a);
        cf_err_t rc = s_send_ready(a, credit);
        cf_worker_send_sent(a, rc, "READY");
        if (rc != CF_OK)
            return;    //  results would reach a broker that does not know us
        a->announce = false;
        if (a->budget)
            s_shared_announced(a);
        a->grant = a->in_hand + credit;
        //  A READY beyond the threads is a prefetch of ours like a CREDIT:
        //  without this, tasks queued by it behind a long task were never
        //  seen as stalled and waited there while another worker idled.
        if (a->grant > (uint64_t)a->w->threads)
            a->prefetching = a->prefetched_once = true;
    }
    if (a->functions_due && !a->blocked)
        s_send_functions(a);
    if (!a->blocked)
        s_announce_begun(a);
    if (!a->blocked)
        s_send_progress(a);
    while (!cf_queue_empty(&a->pending) && !a->blocked) {
        cf_proto_enc_begin(a->enc, CF_MSG_RESULT);
        size_t count = 0;
        for (cf_worker_task_t *t = cf_worker_front(&a->pending); t;
             t = cf_worker_next(&a->pending, t)) {
            cf_err_t rc = s_encode_result(a, t);
            if (rc == CF_OK) {
                count++;
                continue;
            }
            if (rc == CF_ETOOBIG && count > 0)
                break;    //  the batch is full: send it, then the rest
            //  This item cannot be encoded at all: say so instead.
            cf_log_error_rated(S_LOG, "result of task %" PRIu64 " (%s) cannot be encoded: %s",
                               t->id, t->function, cf_strerror(rc));
            rc = cf_proto_enc_result_error(a->enc, t->id, "ProtocolError",
                                           "the worker could not encode the result", t->function,
                                           cf_registry_hostname(), a->w->pid);
            if (rc != CF_OK)
                break;    //  out of memory: try again later
            count++;
        }
        if (count == 0)
            return;
        cf_err_t rc = cf_proto_enc_send(a->enc, a->sock, NULL, 0);
        cf_worker_send_sent(a, rc, "RESULT");
        if (rc != CF_OK)
            return;    //  kept in pending
        for (size_t i = 0; i < count; i++) {
            cf_worker_exec_task_free(cf_worker_pop(&a->pending));
            if (a->orphaned > 0)
                a->orphaned--;
            else
                a->in_hand--;
        }
    }
}

//  Answers every task of list unrun with status (BUSY: handed back;
//  CANCELLED: a CANCEL won) in one RESULT and frees them. A refused send
//  puts them back at the end of the queue, to run after all. CF_OK for an
//  empty list.
cf_err_t cf_worker_send_unrun(cf_worker_actor_t *a, cf_queue_t *list, cf_status_t status)
{
    if (cf_queue_empty(list))
        return CF_OK;
    cf_err_t rc = CF_OK;
    cf_proto_enc_begin(a->enc, CF_MSG_RESULT);
    for (cf_worker_task_t *t = cf_worker_front(list); t && rc == CF_OK; t = cf_worker_next(list, t))
        rc = cf_proto_enc_result_status(a->enc, t->id, status);
    if (rc == CF_OK)
        rc = cf_proto_enc_send(a->enc, a->sock, NULL, 0);
    cf_worker_send_sent(a, rc, "RESULT");
    if (rc != CF_OK) {
        pthread_mutex_lock(&a->w->lock);
        cf_queue_append(&a->w->queue, list);
        pthread_cond_broadcast(&a->w->work);
        pthread_mutex_unlock(&a->w->lock);
        return rc;
    }
    a->in_hand -= cf_worker_exec_clear(list);
    return CF_OK;
}

//  Asks the broker for what s_target wants (see "Prefetch"): more with
//  CREDIT once it is a quarter above what the broker grants; less once the
//  broker grants more than twice the target (and more than threads because
//  we asked), or tasks wait behind stalled threads, by handing the queued tasks
//  beyond it back (BUSY: requeued without using a retry, for whichever
//  worker is free) and announcing again. Tasks the broker sent before it
//  read that READY still come and raise the grant; the next round trims it.
void cf_worker_send_adjust_prefetch(cf_worker_actor_t *a, bool stalled)
{
    cf_worker_t *w = a->w;
    if (a->budget || !a->accepting || a->announce || a->broker_lost || a->blocked)
        return;
    uint64_t target = s_target(a);
    if (w->max_tasks > 0) {
        uint64_t left = (uint64_t)w->max_tasks - a->accepted;
        if (a->in_hand + left < target)
            target = a->in_hand + left;
    }
    if (target > a->grant) {
        uint64_t n = target - a->grant;
        if (n < (a->grant / 4 > 1 ? a->grant / 4 : 1))
            return;
        cf_proto_enc_credit(a->enc, (uint32_t)n);
        cf_err_t rc = cf_proto_enc_send(a->enc, a->sock, NULL, 0);
        cf_worker_send_sent(a, rc, "CREDIT");
        if (rc == CF_OK) {
            a->grant += n;
            a->prefetching = a->prefetched_once = true;
        }
        return;
    }
    //  Only what we asked for is given back: a grant above the threads that
    //  a broker imposed (or a first slow run) is not ours to trim.
    if (!a->prefetching || (a->grant <= 2 * target && !stalled))
        return;
    //  Keep target - running queued; hand the rest back.
    cf_queue_t back;
    cf_queue_init(&back);
    pthread_mutex_lock(&w->lock);
    uint64_t running = (uint64_t)w->running;
    uint64_t keep = target > running ? target - running : 0;
    while (cf_queue_size(&w->queue) > keep) {
        cf_queue_node_t *last = cf_queue_back(&w->queue);
        cf_queue_remove(&w->queue, last);
        cf_queue_push_front(&back, last);
    }
    pthread_mutex_unlock(&w->lock);
    size_t handed_back = cf_queue_size(&back);
    //  Refused: they run after all; trimmed again on a later round.
    if (cf_worker_send_unrun(a, &back, CF_STATUS_BUSY) != CF_OK)
        return;
    cf_log_debug(S_LOG,
                 "tasks take %.0f us: holding %" PRIu64 " instead of %" PRIu64
                 ", %zu queued handed back",
                 a->mean_run_us, target, a->grant, handed_back);
    a->prefetching = false;
    a->announce = true;
    cf_worker_send_flush(a);
}

//  The mean learns a task's length only when it ends: tasks prefetched
//  behind a long one would wait here while another worker idles. So when
//  tasks are queued and no thread took or finished one for CF_WORKER_STALL_MS, the
//  running ones are at least that long: the mean says so, and
//  cf_worker_send_adjust_prefetch hands the queued ones back.
bool cf_worker_send_check_stall(cf_worker_actor_t *a)
{
    if (!a->prefetching)
        return false;
    cf_worker_t *w = a->w;
    int64_t now_us = cf_clock_now_us();
    pthread_mutex_lock(&w->lock);
    bool queued = cf_queue_size(&w->queue) > 0 && w->running >= w->threads;
    int64_t idle_us = now_us - w->progress_us;
    pthread_mutex_unlock(&w->lock);
    if (!queued || idle_us < CF_WORKER_STALL_MS * 1000)
        return false;
    if (a->mean_run_us < (double)idle_us)
        a->mean_run_us = (double)idle_us;
    return true;
}

void cf_worker_send_heartbeat(cf_worker_actor_t *a)
{
    cf_proto_enc_heartbeat(a->enc, 0, 0);
    cf_err_t rc = cf_proto_enc_send(a->enc, a->sock, NULL, 0);
    //  A refused heartbeat is replaced by the next one, not retried now.
    a->last_send_ms = cf_clock_now_ms();
    if (rc != CF_OK && rc != CF_EBUSY)
        cf_log_debug(S_LOG, "heartbeat not sent: %s", cf_strerror(rc));
}

void cf_worker_send_disconnect(cf_worker_actor_t *a, const char *reason)
{
    cf_proto_enc_begin(a->enc, CF_MSG_DISCONNECT);
    cf_proto_enc_text(a->enc, reason, 0);
    cf_err_t rc = cf_proto_enc_send(a->enc, a->sock, NULL, 0);
    if (rc != CF_OK)
        cf_log_debug(S_LOG, "DISCONNECT not sent: %s", cf_strerror(rc));
}

//  Hands a task back unrun (RESULT status BUSY): the broker requeues it
//  without using a retry. Used when a broker sends past our credit.
void cf_worker_send_hand_back(cf_worker_actor_t *a, uint64_t id)
{
    cf_proto_enc_begin(a->enc, CF_MSG_RESULT);
    cf_err_t rc = cf_proto_enc_result_status(a->enc, id, CF_STATUS_BUSY);
    if (rc == CF_OK)
        rc = cf_proto_enc_send(a->enc, a->sock, NULL, 0);
    if (rc != CF_OK)
        cf_log_warn_rated(S_LOG,
                          "task %" PRIu64 " not handed back (%s): the broker gets it back when "
                          "this worker leaves or is lost",
                          id, cf_strerror(rc));
}

// ---------------------------------------------------------------------------
//  Several brokers: one budget of slots (cf_worker.h). The invariant, at
//  every moment: tasks held (taken, result not sent) plus the credit each
//  broker may still use (credit_out, and credit_stale while a READY is on
//  its way) stay within w->limit. A slot is granted only where a WANT
//  asked for it, one at a time in turn, so a result's slot goes to the
//  next broker that wants one, not back where the task came from: two busy
//  brokers alternate, and neither keeps the worker.

//  The slots to fill now: threads, plus prefetch by measured run time (as
//  s_target) within the allowance. Nothing beyond threads until a run time
//  is known, nor once tasks run long: a queued task would wait here
//  while another worker may be free.
static uint64_t s_shared_cap(const cf_worker_budget_t *b)
{
    const cf_worker_t *w = b->links[0].w;
    uint64_t threads = (uint64_t)w->threads;
    if (b->mean_run_us < 0 || w->shared_prefetch == 0)
        return threads;
    double extra = (double)CF_WORKER_PREFETCH_BUDGET_US * (double)threads
                   / (b->mean_run_us > 1.0 ? b->mean_run_us : 1.0);
    return threads + (extra >= (double)w->shared_prefetch ? w->shared_prefetch : (uint64_t)extra);
}

//  True when link may be granted one more slot beyond give.
static bool s_may_grant(const cf_worker_actor_t *a, uint64_t give)
{
    return a->acked && a->readies_unacked == 0 && a->wanted > give && a->accepting && !a->announce
           && !a->broker_lost && !a->blocked && !a->done;
}

void cf_worker_send_grants(cf_worker_budget_t *b)
{
    uint64_t held = 0, used = 0, give[CF_WORKER_MAX_BROKERS] = { 0 };
    for (unsigned i = 0; i < b->count; i++) {
        held += b->links[i].in_hand;
        used += b->links[i].in_hand + b->links[i].credit_out + b->links[i].credit_stale;
    }
    uint64_t cap = s_shared_cap(b);
    uint64_t free_slots = used < cap ? cap - used : 0;
    cf_worker_t *w = b->links[0].w;
    if (w->max_tasks > 0) {
        //  Never grant a task max_tasks would refuse.
        uint64_t granted = used - held, left = (uint64_t)w->max_tasks - b->accepted;
        left = left > granted ? left - granted : 0;
        if (free_slots > left)
            free_slots = left;
    }
    //  One slot per turn of the rotation.
    for (bool any = true; free_slots > 0 && any;) {
        any = false;
        for (unsigned k = 0; k < b->count; k++) {
            unsigned i = (b->next + k) % b->count;
            if (!s_may_grant(&b->links[i], give[i]))
                continue;
            give[i]++;
            free_slots--;
            b->next = (i + 1) % b->count;
            any = true;
            break;
        }
    }
    //  Counted before the CREDIT goes, so whoever sees the grant arrive
    //  also sees it counted; a refused send takes it back.
    pthread_mutex_lock(&w->lock);
    w->held = held;
    for (unsigned i = 0; i < b->count; i++)
        w->granted[i] += give[i];
    pthread_mutex_unlock(&w->lock);
    for (unsigned i = 0; i < b->count; i++) {
        cf_worker_actor_t *a = &b->links[i];
        if (give[i] == 0)
            continue;
        cf_proto_enc_credit(a->enc, (uint32_t)give[i]);
        cf_err_t rc = cf_proto_enc_send(a->enc, a->sock, NULL, 0);
        cf_worker_send_sent(a, rc, "CREDIT");
        if (rc != CF_OK) {
            //  Not granted: free for the next round.
            pthread_mutex_lock(&w->lock);
            w->granted[i] -= give[i];
            pthread_mutex_unlock(&w->lock);
            continue;
        }
        a->credit_out += give[i];
        a->wanted -= give[i];
    }
}

void cf_worker_send_forget_credit(cf_worker_actor_t *a)
{
    if (!a->budget)
        return;
    a->credit_out = a->credit_stale = a->wanted = 0;
    a->readies_unacked = 0;
    a->acked = false;
}

void cf_worker_send_shared_stall(cf_worker_budget_t *b)
{
    cf_worker_t *w = b->links[0].w;
    if (w->shared_prefetch == 0)
        return;    //  never more than threads: nothing queues
    cf_queue_t back[CF_WORKER_MAX_BROKERS];
    for (unsigned i = 0; i < b->count; i++)
        cf_queue_init(&back[i]);
    int64_t now_us = cf_clock_now_us();
    pthread_mutex_lock(&w->lock);
    int64_t idle_us = now_us - w->progress_us;
    bool stalled = !cf_queue_empty(&w->queue) && w->running >= w->threads
                   && idle_us >= CF_WORKER_STALL_MS * 1000;
    cf_worker_task_t *task;
    while (stalled && (task = cf_worker_pop(&w->queue)))
        cf_queue_push_back(&back[task->link], &task->node);
    pthread_mutex_unlock(&w->lock);
    if (!stalled)
        return;
    if (b->mean_run_us < (double)idle_us)
        b->mean_run_us = (double)idle_us;
    //  Refused: they run after all (cf_worker_send_unrun requeues them).
    for (unsigned i = 0; i < b->count; i++)
        (void)cf_worker_send_unrun(&b->links[i], &back[i], CF_STATUS_BUSY);
}

//  The worker's actor thread (cf_worker_int.h has the design and the map):
//  its loop, the socket's life (a fresh one for a lost broker), collecting
//  results from the executors, how long it sleeps and when it ends; and an
//  executor acting for it while it sleeps (cf_worker_actor_deliver).

#include "cf_worker_int.h"

#include "cf_clock.h"
#include "cf_error.h"
#include "cf_log.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <zmq.h>

#define S_LOG             "worker"
//  Run times are averaged over about this many tasks.
#define S_RUN_TIME_WEIGHT 16
//  A destroy waits at least this long for an unreachable broker to take
//  the last results.
#define S_MIN_GIVE_UP_MS  1000

int cf_worker_actor_send_ivl(const cf_worker_actor_t *a)
{
    int ivl = a->w->ivl_ms;
    if (a->broker_ivl_ms && a->broker_ivl_ms < ivl)
        ivl = a->broker_ivl_ms;
    return ivl;
}

//  The broker is judged on its own interval once it announced one.
static int64_t s_expiry_ms(const cf_worker_actor_t *a)
{
    int ivl = a->broker_ivl_ms ? a->broker_ivl_ms : a->w->ivl_ms;
    return (int64_t)a->w->liveness * ivl;
}

static void s_learn_run_time(double *mean_us, const cf_worker_task_t *task)
{
    double us = (double)task->run_us;
    if (*mean_us < 0)
        *mean_us = us;
    else
        *mean_us += (us - *mean_us) / S_RUN_TIME_WEIGHT;
}

//  The link (broker) a task came from.
static cf_worker_actor_t *s_link_of(cf_worker_actor_t *a, const cf_worker_task_t *task)
{
    return a->budget ? &a->budget->links[task->link] : a;
}

//  Destroy: queued tasks never run here (DISCONNECT hands them back), and
//  each leaves its broker's count. Under lock.
static size_t s_drop_queued(cf_worker_actor_t *a)
{
    cf_worker_t *w = a->w;
    if (!a->budget) {
        size_t dropped = cf_worker_exec_clear(&w->queue);
        a->in_hand -= dropped;
        return dropped;
    }
    size_t dropped = 0;
    cf_worker_task_t *task;
    while ((task = cf_worker_pop(&w->queue))) {
        s_link_of(a, task)->in_hand--;
        cf_worker_exec_task_free(task);
        dropped++;
    }
    for (unsigned i = 0; i < a->budget->count; i++) {
        a->budget->links[i].terminating = true;
        a->budget->links[i].accepting = false;
    }
    return dropped;
}

//  Moves finished tasks to their broker's pending; reacts to destroy.
//  Returns the tasks still running or queued.
size_t cf_worker_actor_collect(cf_worker_actor_t *a)
{
    cf_worker_t *w = a->w;
    cf_queue_t done;
    cf_queue_init(&done);
    pthread_mutex_lock(&w->lock);
    cf_queue_append(&done, &w->outbox);
    if (a->term_asked && !a->terminating) {
        a->terminating = true;
        a->accepting = false;
        size_t dropped = s_drop_queued(a);
        w->stopping = true;
        pthread_cond_broadcast(&w->work);
        cf_log_info(S_LOG, "stopping: %d running, %zu queued handed back", w->running, dropped);
    }
    size_t busy = (size_t)w->running + cf_queue_size(&w->queue);
    pthread_mutex_unlock(&w->lock);
    double *mean_us = a->budget ? &a->budget->mean_run_us : &a->mean_run_us;
    if (!a->budget) {
        for (cf_worker_task_t *t = cf_worker_front(&done); t; t = cf_worker_next(&done, t))
            s_learn_run_time(mean_us, t);
        cf_queue_append(&a->pending, &done);
        return busy;
    }
    cf_worker_task_t *task;
    while ((task = cf_worker_pop(&done))) {
        s_learn_run_time(mean_us, task);
        cf_worker_actor_t *link = s_link_of(a, task);
        cf_queue_push_back(&link->pending, &task->node);
        if (link->broker_lost) {
            link->orphaned++;    //  see cf_worker_actor_t
            link->in_hand--;
        }
    }
    return busy;
}

//  Whether the actor's work is over: max_tasks done, or a destroy whose
//  results went out (or could not, for too long).
static void s_check_end(cf_worker_actor_t *a, size_t busy, int64_t now)
{
    if (a->done)
        return;
    bool limit = a->w->max_tasks > 0 && *cf_worker_accepted(a) >= (uint64_t)a->w->max_tasks;
    if (!a->terminating && !limit)
        return;
    if (busy > 0)
        return;
    if (!cf_queue_empty(&a->pending) || a->announce) {
        if (!a->give_up_ms) {
            int64_t wait = s_expiry_ms(a);
            a->give_up_ms = now + (wait > S_MIN_GIVE_UP_MS ? wait : S_MIN_GIVE_UP_MS);
        }
        if (now < a->give_up_ms)
            return;
        cf_log_warn(S_LOG,
                    "broker unreachable: %zu results not delivered (the broker retries "
                    "those tasks elsewhere)",
                    cf_queue_size(&a->pending));
    }
    a->done = true;
    a->end_reason = a->terminating ? CF_OK : CF_ESTOP;
}

//  How long the actor may sleep. While a task is queued or begun
//  unannounced, CF_WORKER_BEGUN_HOLD_MS at most: a begin then never costs a wakeup
//  (a task done sooner needs no STARTED), which on a one-at-a-time round
//  trip cost 40% of the latency.
static int s_poll_timeout(cf_worker_actor_t *a, int64_t now)
{
    int64_t deadline = a->last_send_ms + cf_worker_actor_send_ivl(a);
    if (!a->broker_lost) {
        int64_t expiry = a->last_recv_ms + s_expiry_ms(a) + 1;
        if (expiry < deadline)
            deadline = expiry;
    }
    if (a->give_up_ms && a->give_up_ms < deadline)
        deadline = a->give_up_ms;
    //  Prefetched tasks may be queued behind long ones: look again soon.
    if (a->prefetching && a->in_hand > (uint64_t)a->w->threads + cf_queue_size(&a->pending)
        && now + CF_WORKER_STALL_MS < deadline)
        deadline = now + CF_WORKER_STALL_MS;
    pthread_mutex_lock(&a->w->lock);
    bool soon = !cf_queue_empty(&a->w->begun) || !cf_queue_empty(&a->w->queue);
    pthread_mutex_unlock(&a->w->lock);
    if (soon && now + CF_WORKER_BEGUN_HOLD_MS < deadline)
        deadline = now + CF_WORKER_BEGUN_HOLD_MS;
    if (a->stop_deadline_ms && a->stop_deadline_ms < deadline)
        deadline = a->stop_deadline_ms;
    //  A report held back by the rate limit goes when due.
    int64_t report_due = cf_worker_progress_due_ms(a->w->progress[a->link]);
    if (report_due < deadline)
        deadline = report_due;
    int64_t left = deadline - now;
    return left <= 0 ? 0 : left > INT32_MAX ? INT32_MAX : (int)left;
}

//  An executor put a result into an empty outbox: if the actor sleeps,
//  does its after-result work here (see the design note); wakes it when
//  anything is left for it, or when it is busy.
void cf_worker_actor_deliver(cf_worker_t *w)
{
    cf_worker_actor_t *a = cf_actor_enter(w->actor);
    if (!a) {
        cf_actor_wake(w->actor);
        return;
    }
    bool wake = true;
    if (!a->done && !a->terminating && !a->blocked && !a->announce) {
        cf_worker_actor_collect(a);
        cf_worker_send_flush(a);
        cf_worker_send_adjust_prefetch(a, false);
        wake = !cf_queue_empty(&a->pending) || a->blocked || a->announce || a->terminating
               || !a->accepting || (cf_proto_events(a->sock) & ZMQ_POLLIN);
    }
    cf_actor_leave(w->actor, wake);
}

// ---------------------------------------------------------------------------
//  The socket

//  Opens the DEALER to the broker (again after s_reopen): our identity,
//  with a generation suffix on a fresh socket so that the broker never
//  confuses it with the old connection it may still hold (it treats the old
//  identity as lost and retries what that one held), ZMTP heartbeats, and
//  the caller's setup (CURVE keys). Returns CF_OK or an error with message.
static cf_err_t s_open(cf_worker_actor_t *a, char *message, size_t size)
{
    cf_worker_t *w = a->w;
    //  Each broker's link has an identity of its own ("-b1", ...): two
    //  endpoints that reach one broker (a host under two names) must not
    //  be two connections with one routing id, which a ROUTER refuses.
    char base[sizeof w->identity + 16], identity[sizeof base + 16];
    if (a->link)
        snprintf(base, sizeof base, "%.232s-b%u", w->identity, a->link);
    else
        snprintf(base, sizeof base, "%s", w->identity);
    if (a->generation)
        snprintf(identity, sizeof identity, "%.240s.%u", base,
                 a->generation);    //  ids: 255 bytes at most
    else
        snprintf(identity, sizeof identity, "%s", base);
    a->sock = zmq_socket(w->ctx, ZMQ_DEALER);
    if (!a->sock) {
        snprintf(message, size, "worker: cannot create its socket: %s", zmq_strerror(errno));
        return CF_ESYS;
    }
    if (cf_proto_socket_setup(a->sock, false) != CF_OK
        || cf_link_setup(a->sock, cf_worker_actor_send_ivl(a), w->liveness) != CF_OK
        || zmq_setsockopt(a->sock, ZMQ_ROUTING_ID, identity, strlen(identity)) != 0) {
        snprintf(message, size, "worker: socket options: %s", zmq_strerror(errno));
        return CF_ESYS;
    }
    if (w->socket_setup) {
        cf_err_t rc = w->socket_setup(a->sock, a->endpoint, w->socket_setup_arg);
        if (rc != CF_OK) {
            snprintf(message, size, "worker: socket setup failed: %s",
                     cf_last_err() == rc ? cf_last_error() : cf_strerror(rc));
            return rc;
        }
    }
    if (zmq_connect(a->sock, a->endpoint) != 0) {
        snprintf(message, size, "worker: cannot connect to %s: %s", a->endpoint,
                 zmq_strerror(errno));
        return CF_EINVAL;
    }
    size_t fd_len = sizeof a->sock_fd;
    if (zmq_getsockopt(a->sock, ZMQ_FD, &a->sock_fd, &fd_len) != 0) {
        snprintf(message, size, "worker: socket descriptor: %s", zmq_strerror(errno));
        return CF_ESYS;
    }
    return CF_OK;
}

static void s_close(cf_worker_actor_t *a)
{
    if (!a->sock)
        return;
    zmq_socket_monitor(a->sock, NULL, 0);    //  the setup's, if any
    zmq_close(a->sock);
    a->sock = NULL;
    a->sock_fd = -1;
}

//  The broker is lost and libzmq may never redial by itself (a protocol
//  error ended the connection, or a partition left it half-open): a fresh
//  socket, at most once per backoff step. Results handed to the old socket
//  and not delivered are gone with it; the broker retries those tasks when
//  it loses the old identity. What we hold and have not sent stays.
static void s_reopen(cf_worker_actor_t *a, int64_t now)
{
    if (!cf_link_backoff_take(&a->reopen, now))
        return;
    void *old = a->sock;
    int old_fd = a->sock_fd;
    zmq_socket_monitor(old, NULL, 0);    //  frees the setup's monitor endpoint
    a->generation++;
    char message[256];
    if (s_open(a, message, sizeof message) != CF_OK) {
        //  Keep the old socket (every send needs one) and try later.
        cf_log_warn(S_LOG, "%s (trying again later)", message);
        s_close(a);
        a->sock = old;
        a->sock_fd = old_fd;
        return;
    }
    zmq_close(old);
    cf_log_warn(S_LOG, "broker %s lost: opened a fresh connection (%u)", a->endpoint,
                a->generation);
    a->blocked = false;
    cf_worker_send_forget_credit(a);
    a->boot = 0;    //  the next broker's first HEARTBEAT is not a second sign
    a->announce = false;
    cf_worker_recv_announce(a, false, "fresh connection");
    //  The READY goes into the new socket now, where it waits for whichever
    //  broker answers (its answer is then no reason for another): left to
    //  the loop's next flush, it waited a whole poll (a heartbeat interval)
    //  after a partition healed.
    cf_worker_send_flush(a);
    a->introduced = true;
    a->last_send_ms = now;
}

// ---------------------------------------------------------------------------
//  The loop

//  Sets up link number link (to w->endpoints[link]) and opens its socket.
static cf_err_t s_link_start(cf_worker_actor_t *a, cf_worker_t *w, cf_actor_t *pipe, unsigned link,
                             char *message, size_t size)
{
    *a = (cf_worker_actor_t){
        .w = w,
        .actor = pipe,
        .accepting = true,
        .announce = true,
        .mean_run_us = -1,
        .endpoint = w->endpoints[link],
        .link = link,
        .sock_fd = -1,
    };
    cf_queue_init(&a->pending);
    a->enc = cf_proto_enc_new();
    if (!a->enc) {
        snprintf(message, size, "worker: cannot create its socket: out of memory");
        return CF_ENOMEM;
    }
    //  A lost broker gets a fresh socket at once, then (still silent after
    //  as long again: the new socket's redials were no better) another,
    //  the wait doubling to 4 times that while it stays away.
    cf_link_backoff_init(&a->reopen, w->liveness * w->ivl_ms, 4 * w->liveness * w->ivl_ms);
    cf_err_t rc = s_open(a, message, size);
    a->last_recv_ms = a->last_send_ms = cf_clock_now_ms();
    return rc;
}

//  Leaving: say so (best effort; the broker also notices silence) and
//  free the link.
static void s_link_end(cf_worker_actor_t *a, cf_err_t end_reason)
{
    if (a->sock)
        cf_worker_send_disconnect(a, end_reason == CF_ESTOP ? "max tasks reached"
                                     : end_reason == CF_ETIMEDOUT
                                         ? "a stopped task overran its grace"
                                         : "stopping");
    if (cf_queue_size(&a->pending))
        cf_log_warn(S_LOG, "%zu results not delivered to %s", cf_queue_size(&a->pending),
                    a->endpoint);
    cf_worker_exec_clear(&a->pending);
    if (a->declined)
        cf_log_debug(S_LOG, "%" PRIu64 " tasks not taken, handed back by DISCONNECT", a->declined);
    s_close(a);
    cf_proto_enc_destroy(&a->enc);
}

//  One turn's work on a link after reading: what to send, whether the
//  broker is silent, heartbeats. busy: tasks running or queued.
static void s_link_turn(cf_worker_actor_t *a, size_t busy)
{
    cf_worker_t *w = a->w;
    if (w->announce_functions && !a->announce && cf_registry_generation() != a->functions_sent)
        a->functions_due = true;
    cf_worker_send_flush(a);
    if (!a->budget)
        cf_worker_send_adjust_prefetch(a, cf_worker_send_check_stall(a));
    int64_t now = cf_clock_now_ms();
    if (!a->broker_lost && now - a->last_recv_ms > s_expiry_ms(a)) {
        char why[64];
        snprintf(why, sizeof why, "silent for %" PRId64 " ms", now - a->last_recv_ms);
        cf_worker_recv_broker_gone(a, why);
        if (a->done)
            return;
    }
    //  Silent, not only gone: after a DISCONNECT libzmq redials by
    //  itself, and the broker's successor speaks within an expiry.
    if (a->broker_lost && !a->terminating && now - a->last_recv_ms > s_expiry_ms(a))
        s_reopen(a, now);
    cf_worker_recv_check_stops(a, now);
    if (a->done)
        return;
    s_check_end(a, busy, now);
    if (a->done)
        return;
    if (now - a->last_send_ms >= cf_worker_actor_send_ivl(a))
        cf_worker_send_heartbeat(a);
    //  A broker older than shared workers takes READY (it ignores the
    //  feature bit) but never says WANT: it gets no slot, and says why.
    if (a->budget && a->readies_unacked && !a->ack_warned && !a->broker_lost
        && now - a->ready_sent_ms > 2 * (int64_t)cf_worker_actor_send_ivl(a)) {
        a->ack_warned = true;
        cf_log_warn(S_LOG,
                    "broker %s did not answer READY with WANT (a broker older than shared "
                    "workers?): it gets no tasks from this worker; upgrade it",
                    a->endpoint);
    }
}

//  The worker is over: executors stop, and whoever waits hears why.
static void s_ended(cf_worker_t *w, cf_err_t end_reason)
{
    pthread_mutex_lock(&w->lock);
    w->stopping = true;
    cf_worker_exec_clear(&w->queue);
    pthread_cond_broadcast(&w->work);
    w->ended = true;
    w->end_reason = end_reason;
    pthread_cond_broadcast(&w->state);
    pthread_mutex_unlock(&w->lock);
}

//  What the socket says: it takes sends again, and what it has is read.
static void s_read_socket(cf_worker_actor_t *a)
{
    int events = cf_proto_events(a->sock);
    if (events & ZMQ_POLLOUT)
        a->blocked = false;
    if (events & ZMQ_POLLIN)
        cf_worker_recv_read(a);
}

void cf_worker_actor_tend(cf_worker_t *w)
{
    cf_worker_actor_t *a = cf_actor_enter(w->actor);
    if (!a)
        return;
    if (!a->done)
        s_read_socket(a);
    if (!a->done)
        s_link_turn(a, cf_worker_actor_collect(a));
    //  The worker ends with the actor inside a task (a stopped one that
    //  outran its grace: the process exits, which ends it): whoever waits
    //  hears it now. The actor, if it comes back, finds it done.
    if (a->done) {
        s_link_end(a, a->end_reason);
        s_ended(w, a->end_reason);
    }
    //  Woken, it sees what was decided here (done, a fresh socket) at once.
    cf_actor_leave(w->actor, true);
}

//  One broker.
static void s_main_one(cf_worker_t *w, cf_actor_t *pipe)
{
    cf_worker_actor_t actor;
    cf_worker_actor_t *a = &actor;
    char message[256];
    if (s_link_start(a, w, pipe, 0, message, sizeof message) != CF_OK) {
        s_close(a);
        cf_proto_enc_destroy(&a->enc);
        cf_actor_ready(pipe, CF_ESYS, message);
        return;
    }
    cf_actor_serve(pipe, a);
    cf_worker_send_flush(a);    //  READY
    cf_log_info(S_LOG, "worker %s connecting to %s with %d threads", w->identity, a->endpoint,
                w->threads);
    cf_actor_ready(pipe, CF_OK, NULL);

    bool more = false;    //  short tasks due to run here (cf_worker_exec_inline)
    while (!a->done) {
        int events = cf_proto_events(a->sock);
        bool ready = (events & ZMQ_POLLIN) || (a->blocked && (events & ZMQ_POLLOUT)) || more;
        int timeout = ready ? 0 : s_poll_timeout(a, cf_clock_now_ms());
        struct pollfd fds[1] = { { a->sock_fd, POLLIN, 0 } };
        bool woken = false;
        if (cf_actor_sleep(pipe, fds, 1, timeout, &woken) < 0) {
            cf_log_error(S_LOG, "poll failed: %s", strerror(errno));
            a->done = true;
            a->end_reason = CF_ESHUTDOWN;
            break;
        }
        //  The pipe carries one verb: $TERM, from cf_worker_destroy.
        if (woken && cf_actor_term_received(pipe))
            a->term_asked = true;
        s_read_socket(a);
        if (a->done)
            break;
        more = cf_worker_exec_inline(a);
        if (a->done)
            break;
        s_link_turn(a, cf_worker_actor_collect(a));
    }
    cf_actor_serve(pipe, NULL);
    s_link_end(a, a->end_reason);
    s_ended(w, a->end_reason);
}

//  Several brokers: when every link is done, or one ended the worker (a
//  refused key, the context gone). Sets *reason.
static bool s_all_done(const cf_worker_budget_t *b, cf_err_t *reason)
{
    bool all = true, limit = false;
    for (unsigned i = 0; i < b->count; i++) {
        const cf_worker_actor_t *a = &b->links[i];
        if (a->done && a->end_reason != CF_OK && a->end_reason != CF_ESTOP) {
            *reason = a->end_reason;
            return true;
        }
        all = all && a->done;
        limit = limit || (a->done && a->end_reason == CF_ESTOP);
    }
    *reason = limit ? CF_ESTOP : CF_OK;
    return all;
}

//  Several brokers: the loop of s_main_one over every link, with the
//  shared budget's grants after each turn. No executor acts for this
//  actor (it is not served): a finished task wakes it.
static void s_loop_shared(cf_worker_budget_t *b, cf_actor_t *pipe, cf_err_t *reason)
{
    struct pollfd fds[CF_WORKER_MAX_BROKERS];
    while (!s_all_done(b, reason)) {
        int64_t now = cf_clock_now_ms();
        int timeout = INT32_MAX;
        for (unsigned i = 0; i < b->count; i++) {
            cf_worker_actor_t *a = &b->links[i];
            int events = cf_proto_events(a->sock);
            int t = (events & ZMQ_POLLIN) || (a->blocked && (events & ZMQ_POLLOUT))
                        ? 0
                        : s_poll_timeout(a, now);
            if (t < timeout)
                timeout = t;
            fds[i] = (struct pollfd){ a->sock_fd, POLLIN, 0 };
        }
        bool woken = false;
        if (cf_actor_sleep(pipe, fds, (int)b->count, timeout, &woken) < 0) {
            cf_log_error(S_LOG, "poll failed: %s", strerror(errno));
            *reason = CF_ESHUTDOWN;
            return;
        }
        bool term = woken && cf_actor_term_received(pipe);
        for (unsigned i = 0; i < b->count; i++) {
            cf_worker_actor_t *a = &b->links[i];
            a->term_asked = a->term_asked || term;
            if (!a->done)
                s_read_socket(a);
        }
        if (s_all_done(b, reason))
            return;
        size_t busy = cf_worker_actor_collect(&b->links[0]);
        for (unsigned i = 0; i < b->count; i++)
            if (!b->links[i].done)
                s_link_turn(&b->links[i], busy);
        cf_worker_send_shared_stall(b);
        cf_worker_send_grants(b);
    }
}

static void s_main_shared(cf_worker_t *w, cf_actor_t *pipe)
{
    cf_worker_actor_t links[CF_WORKER_MAX_BROKERS];
    cf_worker_budget_t budget = { .links = links, .count = w->endpoint_count, .mean_run_us = -1 };
    char message[256];
    unsigned started = 0;
    for (; started < w->endpoint_count; started++) {
        cf_worker_actor_t *a = &links[started];
        cf_err_t rc = s_link_start(a, w, pipe, started, message, sizeof message);
        a->budget = &budget;
        if (rc != CF_OK) {
            for (unsigned i = 0; i <= started; i++) {
                s_close(&links[i]);
                cf_proto_enc_destroy(&links[i].enc);
            }
            cf_actor_ready(pipe, CF_ESYS, message);
            return;
        }
    }
    for (unsigned i = 0; i < budget.count; i++) {
        cf_worker_send_flush(&links[i]);    //  READY
        cf_log_info(S_LOG, "worker %s connecting to %s with %d threads, shared with %u brokers",
                    w->identity, links[i].endpoint, w->threads, budget.count);
    }
    cf_actor_ready(pipe, CF_OK, NULL);
    cf_err_t reason = CF_OK;
    s_loop_shared(&budget, pipe, &reason);
    for (unsigned i = 0; i < budget.count; i++)
        s_link_end(&links[i], reason);
    s_ended(w, reason);
}

void cf_worker_actor_main(cf_actor_t *pipe, void *arg)
{
    cf_worker_t *w = arg;
    w->actor = pipe;
    w->actor_thread = pthread_self();
    if (w->endpoint_count > 1)
        s_main_shared(w, pipe);
    else
        s_main_one(w, pipe);
}

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

//  Moves finished tasks to pending; reacts to destroy. Returns the tasks
//  still running or queued.
size_t cf_worker_actor_collect(cf_worker_actor_t *a)
{
    cf_worker_t *w = a->w;
    pthread_mutex_lock(&w->lock);
    cf_worker_task_t *done = cf_worker_front(&w->outbox);
    cf_queue_append(&a->pending, &w->outbox);
    if (a->term_asked && !a->terminating) {
        a->terminating = true;
        a->accepting = false;
        //  Queued tasks never run here: DISCONNECT hands them back.
        size_t dropped = cf_worker_exec_clear(&w->queue);
        a->in_hand -= dropped;
        w->stopping = true;
        pthread_cond_broadcast(&w->work);
        cf_log_info(S_LOG, "stopping: %d running, %zu queued handed back", w->running, dropped);
    }
    size_t busy = (size_t)w->running + cf_queue_size(&w->queue);
    pthread_mutex_unlock(&w->lock);
    for (; done; done = cf_worker_next(&a->pending, done)) {
        double us = (double)done->run_us;
        if (a->mean_run_us < 0)
            a->mean_run_us = us;
        else
            a->mean_run_us += (us - a->mean_run_us) / S_RUN_TIME_WEIGHT;
    }
    return busy;
}

//  Whether the actor's work is over: max_tasks done, or a destroy whose
//  results went out (or could not, for too long).
static void s_check_end(cf_worker_actor_t *a, size_t busy, int64_t now)
{
    if (a->done)
        return;
    bool limit = a->w->max_tasks > 0 && a->accepted >= (uint64_t)a->w->max_tasks;
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
    int64_t report_due = cf_worker_progress_due_ms(a->w->progress);
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
    char identity[sizeof w->identity + 16];
    if (a->generation)
        snprintf(identity, sizeof identity, "%.240s.%u", w->identity,
                 a->generation);    //  ids: 255 bytes at most
    else
        snprintf(identity, sizeof identity, "%s", w->identity);
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
        cf_err_t rc = w->socket_setup(a->sock, w->socket_setup_arg);
        if (rc != CF_OK) {
            snprintf(message, size, "worker: socket setup failed: %s",
                     cf_last_err() == rc ? cf_last_error() : cf_strerror(rc));
            return rc;
        }
    }
    if (zmq_connect(a->sock, w->endpoint) != 0) {
        snprintf(message, size, "worker: cannot connect to %s: %s", w->endpoint,
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
    cf_log_warn(S_LOG, "broker %s lost: opened a fresh connection (%u)", a->w->endpoint,
                a->generation);
    a->blocked = false;
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

void cf_worker_actor_main(cf_actor_t *pipe, void *arg)
{
    cf_worker_t *w = arg;
    w->actor = pipe;
    cf_worker_actor_t actor = {
        .w = w,
        .actor = pipe,
        .accepting = true,
        .announce = true,
        .mean_run_us = -1,
    };
    cf_worker_actor_t *a = &actor;
    cf_queue_init(&a->pending);
    char message[256];
    a->enc = cf_proto_enc_new();
    if (!a->enc) {
        snprintf(message, sizeof message, "worker: cannot create its socket: out of memory");
        goto failed;
    }
    //  A lost broker gets a fresh socket at once, then (still silent after
    //  as long again: the new socket's redials were no better) another,
    //  the wait doubling to 4 times that while it stays away.
    cf_link_backoff_init(&a->reopen, w->liveness * w->ivl_ms, 4 * w->liveness * w->ivl_ms);
    if (s_open(a, message, sizeof message) != CF_OK)
        goto failed;
    int64_t now = cf_clock_now_ms();
    a->last_recv_ms = a->last_send_ms = now;
    cf_actor_serve(pipe, a);
    cf_worker_send_flush(a);    //  READY
    cf_log_info(S_LOG, "worker %s connecting to %s with %d threads", w->identity, w->endpoint,
                w->threads);
    cf_actor_ready(pipe, CF_OK, NULL);

    while (!a->done) {
        int events = cf_proto_events(a->sock);
        bool ready = (events & ZMQ_POLLIN) || (a->blocked && (events & ZMQ_POLLOUT));
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
        events = cf_proto_events(a->sock);
        if (events & ZMQ_POLLOUT)
            a->blocked = false;
        if (events & ZMQ_POLLIN)
            cf_worker_recv_read(a);
        if (a->done)
            break;
        size_t busy = cf_worker_actor_collect(a);
        if (w->announce_functions && !a->announce && cf_registry_generation() != a->functions_sent)
            a->functions_due = true;
        cf_worker_send_flush(a);
        cf_worker_send_adjust_prefetch(a, cf_worker_send_check_stall(a));
        now = cf_clock_now_ms();
        if (!a->broker_lost && now - a->last_recv_ms > s_expiry_ms(a)) {
            char why[64];
            snprintf(why, sizeof why, "silent for %" PRId64 " ms", now - a->last_recv_ms);
            cf_worker_recv_broker_gone(a, why);
            if (a->done)
                break;
        }
        //  Silent, not only gone: after a DISCONNECT libzmq redials by
        //  itself, and the broker's successor speaks within an expiry.
        if (a->broker_lost && !a->terminating && now - a->last_recv_ms > s_expiry_ms(a))
            s_reopen(a, now);
        cf_worker_recv_check_stops(a, now);
        if (a->done)
            break;
        s_check_end(a, busy, now);
        if (a->done)
            break;
        if (now - a->last_send_ms >= cf_worker_actor_send_ivl(a))
            cf_worker_send_heartbeat(a);
    }

    //  Leaving: say so (best effort; the broker also notices silence), and
    //  stop the executors whatever ended us.
    cf_worker_send_disconnect(a, a->end_reason == CF_ESTOP ? "max tasks reached"
                                 : a->end_reason == CF_ETIMEDOUT
                                     ? "a stopped task overran its grace"
                                     : "stopping");
    if (cf_queue_size(&a->pending))
        cf_log_warn(S_LOG, "%zu results not delivered", cf_queue_size(&a->pending));
    cf_worker_exec_clear(&a->pending);
    if (a->declined)
        cf_log_debug(S_LOG, "%" PRIu64 " tasks not taken, handed back by DISCONNECT", a->declined);
    cf_actor_serve(pipe, NULL);
    s_close(a);
    cf_proto_enc_destroy(&a->enc);
    pthread_mutex_lock(&w->lock);
    w->stopping = true;
    cf_worker_exec_clear(&w->queue);
    pthread_cond_broadcast(&w->work);
    w->ended = true;
    w->end_reason = a->end_reason;
    pthread_cond_broadcast(&w->state);
    pthread_mutex_unlock(&w->lock);
    return;

failed:
    s_close(a);
    cf_proto_enc_destroy(&a->enc);
    cf_actor_ready(pipe, CF_ESYS, message);
}

//  The worker actor (see cf_worker.h): one DEALER to the broker, N
//  execution threads.
//
//  Design note. The actor thread owns the socket and everything about the
//  broker (credit, heartbeats, boot id, what is still to send); execution
//  threads own nothing but the task they run. They meet in two lists under
//  one mutex: the queue (actor -> executors, with a condition variable) and
//  the outbox (executors -> actor). An executor that puts a result into an
//  empty outbox wakes the actor (cf_actor_wake: the eventfd it polls next
//  to its socket), or sends the result itself (below), so a burst of
//  finished tasks costs one syscall and becomes one RESULT batch. An inproc
//  PAIR per executor would cost a zmq socket and a message copy per result
//  and make the actor poll N + 1 sockets, for nothing the eventfd does not
//  do. cf_worker_destroy's request comes down the actor's pipe ($TERM).
//
//  One allocation per task: the task record carries its function name and
//  arguments and, once run, its outcome, and moves queue -> executor ->
//  outbox -> actor -> freed once its RESULT was handed to zmq. A refused
//  send (EAGAIN: the broker unreachable at the high-water mark) leaves the
//  records where they are; the actor waits for ZMQ_EVENTS to say POLLOUT
//  and retries.
//
//  Heartbeats come from the actor, so a task computing for minutes never
//  makes the worker look dead; the broker is judged on what it sends.
//
//  Results go out from the executor that made them when it can, and when
//  it is the only one working: an executor finishing the only task in hand
//  acts for the sleeping actor (cf_actor_enter, see cf_actor.h), does its
//  after-result work itself (collect, flush, prefetch) and wakes it only
//  when something is left for it. The actor polls the socket's ZMQ_FD as a
//  plain descriptor, not with zmq_poll (which would use the socket while
//  sleeping), and checks ZMQ_EVENTS first: an executor's send may have
//  consumed the descriptor's signal, so an executor that sent also checks
//  ZMQ_EVENTS and wakes the actor if a message waits.

#include "cf_worker.h"
#include "cf_worker_progress.h"

#include "cf_actor.h"
#include "cf_clock.h"
#include "cf_error.h"
#include "cf_link.h"
#include "cf_log.h"
#include "cf_proto.h"
#include "cf_queue.h"
#include "cf_random.h"
#include "cf_registry.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define S_LOG                "worker"
//  Messages read per wakeup before the actor looks at its other duties.
#define S_READ_BUDGET        256
//  Prefetch (see "Prefetch" below): at most this many tasks held beyond
//  the threads, and about this much work (per thread) queued locally.
#define S_PREFETCH_MAX       256
#define S_PREFETCH_BUDGET_US 2000
//  Tasks queued while every thread ran the same tasks this long: those
//  tasks are long, whatever the mean says (see s_check_stall).
#define S_STALL_MS           10
//  Run times are averaged over about this many tasks.
#define S_RUN_TIME_WEIGHT    16
//  Tasks queued beyond threads + prefetch + this (a broker ignoring credit)
//  are handed back.
#define S_QUEUE_SLACK        64
//  A task's begin is announced (STARTED) within about this long: the actor
//  looks that often while tasks are queued or begun unannounced.
#define S_BEGUN_HOLD_MS      10
//  A result larger than this cannot ride in a RESULT body with its
//  envelope: it becomes an error instead.
#define S_MAX_RESULT         (CF_PROTO_MAX_FRAME - 64 * 1024)
//  A destroy waits at least this long for an unreachable broker to take
//  the last results.
#define S_MIN_GIVE_UP_MS     1000
//  The shortest heartbeat interval a broker may impose.
#define S_MIN_IVL_MS         10

typedef struct s_task {
    cf_queue_node_t node;          //  in the queue, the outbox or pending
    cf_queue_node_t begun_node;    //  in begun from its start until announced or done
    uint64_t id;
    const char *function;    //  NUL-terminated, in data
    size_t function_len;
    const uint8_t *args;    //  in data
    size_t args_len;
    cf_outcome_t outcome;    //  once run
    int64_t run_us;          //  how long it ran
    bool out_of_memory;      //  cf_registry_run could not produce an outcome
    //  Stopping (STOP; see "Stopping" below). stop is lent to the task
    //  (cf_run_ctx_t); run_node and stop_deadline_ms are under lock.
    atomic_bool stop;
    cf_queue_node_t run_node;    //  in runs while its function runs
    int64_t stop_deadline_ms;    //  stop_kills_process: end the process then; 0 none
    uint32_t stop_grace_ms;      //  the grace that set it, for the error
    char data[];
} s_task_t;

struct s_actor;

struct cf_worker {
    //  Set before any thread starts, read-only afterwards.
    char *endpoint;
    char identity[256];
    int threads;
    int ivl_ms;
    int liveness;
    int max_tasks;
    bool exit_on_broker_loss;
    void (*initializer)(void *arg);
    void *initarg;
    cf_err_t (*socket_setup)(void *socket, void *arg);
    void *socket_setup_arg;
    _Atomic uint64_t *running_ids;    //  config's, or NULL
    bool announce_functions;
    bool stop_kills_process;
    atomic_int executor_seq;    //  hands each executor its slot
    void *ctx;
    bool own_ctx;
    int pid;
    pthread_t *executors;
    int executors_started;
    //  Set by the actor's thread before it reports ready and before any
    //  task exists, so an executor never sees it unset; NULL after destroy.
    //  Its io mutex guards the actor's state (s_actor_t); an executor
    //  acting for the actor takes it before lock.
    cf_actor_t *actor;

    pthread_mutex_t lock;
    pthread_cond_t work;     //  executors: a task queued, or stopping
    pthread_cond_t state;    //  ended
    //  Under lock.
    cf_queue_t queue;       //  tasks to run
    cf_queue_t outbox;      //  tasks run, for the actor
    cf_queue_t begun;       //  tasks running whose start the broker was not told
    cf_queue_t runs;        //  tasks whose function runs (run_node): STOP finds them
    int running;            //  tasks being run
    int64_t progress_us;    //  an executor last took or finished a task
    bool stopping;          //  executors leave once the queue is empty
    bool ended;             //  the actor is done
    cf_err_t end_reason;    //  CF_ESTOP, CF_ESHUTDOWN; CF_OK for a destroy

    //  Progress reports of running tasks, under locks of their own
    //  (cf_worker_progress.h).
    cf_worker_progress_t *progress;
};

//  The actor's state, on its stack, under the actor's io mutex.
typedef struct s_actor {
    cf_worker_t *w;
    cf_actor_t *actor;
    void *sock;
    cf_proto_enc_t *enc;
    cf_queue_t pending;    //  results to send, oldest first
    uint64_t in_hand;      //  tasks taken whose result is not sent
    //  What the broker believes we can hold: in_hand plus its credit for
    //  us. READY sets it, CREDIT raises it, results and tasks move slots
    //  between the two without changing it.
    uint64_t grant;
    double mean_run_us;      //  moving mean of run times; < 0 until measured
    bool prefetching;        //  we asked for more than threads (CREDIT)
    bool prefetched_once;    //  ever did: a READY of ours may race tasks
    uint64_t accepted;       //  tasks taken in all (max_tasks)
    uint64_t declined;       //  tasks not taken (handed back by DISCONNECT)
    bool accepting;
    bool term_asked;     //  $TERM came down the pipe
    bool terminating;    //  destroy: finish, send, leave
    bool announce;       //  READY to send
    bool blocked;        //  a send was refused: wait for POLLOUT
    bool broker_lost;
    bool done;
    cf_err_t end_reason;
    uint64_t boot;        //  broker's boot id, 0 until its first heartbeat
    int broker_ivl_ms;    //  what the broker announced, 0 until then
    int64_t last_recv_ms;
    int64_t last_send_ms;
    int64_t give_up_ms;    //  terminating: drop unsent results after this; 0 unset
    //  The socket's life cycle (see s_open, s_reopen).
    int sock_fd;                  //  its ZMQ_FD
    unsigned generation;          //  sockets opened before this one
    cf_link_backoff_t reopen;     //  when a lost broker gets a fresh socket
    int64_t announce_asked_ms;    //  the last sign that set announce
    uint64_t reintroductions;     //  READYs asked for after the first
    bool introduced;              //  a fresh socket announced us since the loss
    uint64_t functions_sent;      //  registry generation the broker was last told
    bool functions_due;           //  more functions registered since: FUNCTIONS to send
    int64_t stop_deadline_ms;     //  the earliest stop deadline armed; 0 none
} s_actor_t;

// ---------------------------------------------------------------------------
//  Lists and tasks

static s_task_t *s_task_of(cf_queue_node_t *node)
{
    return node ? cf_queue_entry(node, s_task_t, node) : NULL;
}

static s_task_t *s_pop(cf_queue_t *list)
{
    return s_task_of(cf_queue_pop_front(list));
}

static s_task_t *s_front(const cf_queue_t *list)
{
    return s_task_of(cf_queue_front(list));
}

static s_task_t *s_next(const cf_queue_t *list, s_task_t *task)
{
    return s_task_of(cf_queue_next(list, &task->node));
}

static void s_task_free(s_task_t *task)
{
    cf_outcome_fini(&task->outcome);
    free(task);
}

//  Frees every task of list; returns how many.
static size_t s_clear(cf_queue_t *list)
{
    size_t n = 0;
    s_task_t *task;
    while ((task = s_pop(list))) {
        s_task_free(task);
        n++;
    }
    return n;
}

static s_task_t *s_task_new(const cf_proto_task_t *src)
{
    size_t size = sizeof(s_task_t) + src->function.len + 1 + src->args_len;
    s_task_t *task = malloc(size);
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
    if (src->args_len)
        memcpy(p, src->args, src->args_len);
    task->args = (const uint8_t *)p;
    task->args_len = src->args_len;
    return task;
}

// ---------------------------------------------------------------------------
//  Execution threads

//  Runs one task; its outcome stays in the record. Its progress reports
//  go to report (cf_worker_progress.h).
static void s_execute(s_task_t *task, cf_worker_progress_run_t *report)
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

static void s_deliver(cf_worker_t *w);

static void *s_executor_main(void *arg)
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
        s_task_t *task = s_pop(&w->queue);
        if (!task)
            break;    //  stopping, nothing queued
        w->running++;
        int64_t start_us = cf_clock_now_us();
        w->progress_us = start_us;
        //  From here a CANCEL cannot find it in the queue: it has begun.
        //  No wakeup: the actor looks at begun within S_BEGUN_HOLD_MS.
        cf_queue_push_back(&w->begun, &task->begun_node);
        cf_queue_push_back(&w->runs, &task->run_node);
        pthread_mutex_unlock(&w->lock);

        //  Stored before the function runs: if it kills the process, the
        //  supervisor reads who did.
        if (running_id)
            atomic_store_explicit(running_id, task->id, memory_order_seq_cst);
        cf_worker_progress_run_t report = { .set = w->progress, .id = task->id };
        s_execute(task, &report);
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
            s_deliver(w);
            pthread_mutex_lock(&w->lock);
        }
        else if (was_empty)
            cf_actor_wake(w->actor);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

// ---------------------------------------------------------------------------
//  The actor: sending

//  Prefetch. With credit = threads every task pays a full broker round
//  trip before the next one reaches a free thread: a 2-thread worker at
//  400 us per round trip runs 5,000 tasks/s whatever the tasks cost. So
//  the worker asks for more than its threads, enough that its local queue
//  holds about S_PREFETCH_BUDGET_US of work per thread, measured as a
//  moving mean of run times: no-op tasks give S_PREFETCH_MAX queued, 100 us
//  tasks 20 per thread, tasks of 2 ms or more none (credit = threads, so a
//  long task never waits here while another worker idles). Until a run
//  time is known it asks for threads only. More is asked with CREDIT; less
//  with READY, sent after handing queued tasks back (BUSY), once the
//  broker holds more than twice what we want (see s_adjust_prefetch).
static uint64_t s_target(const s_actor_t *a)
{
    uint64_t threads = (uint64_t)a->w->threads;
    if (a->mean_run_us < 0)
        return threads;
    double extra = (double)S_PREFETCH_BUDGET_US * (double)threads
                   / (a->mean_run_us > 1.0 ? a->mean_run_us : 1.0);
    return threads + (extra >= S_PREFETCH_MAX ? S_PREFETCH_MAX : (uint64_t)extra);
}

//  Slots free now: what we want to hold minus what is held (each held
//  task's result will return its slot), within what max_tasks still allows.
static uint32_t s_credit(const s_actor_t *a)
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
static void s_sent(s_actor_t *a, cf_err_t rc, const char *what)
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

static cf_err_t s_encode_result(s_actor_t *a, const s_task_t *t)
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
static void s_announce_begun(s_actor_t *a)
{
    cf_worker_t *w = a->w;
    pthread_mutex_lock(&w->lock);
    if (cf_queue_empty(&w->begun)) {
        pthread_mutex_unlock(&w->lock);
        return;
    }
    cf_proto_enc_begin(a->enc, CF_MSG_STARTED);
    cf_queue_node_t *node;
    while ((node = cf_queue_pop_front(&w->begun)))
        (void)cf_proto_enc_id(a->enc, cf_queue_entry(node, s_task_t, begun_node)->id);
    pthread_mutex_unlock(&w->lock);
    s_sent(a, cf_proto_enc_send(a->enc, a->sock, NULL, 0), "STARTED");
}

//  Sends PROGRESS with the reports due (cf_worker_progress.h): after
//  STARTED, before RESULT, so a task's last report reaches the broker
//  before its result. A refused send keeps them for the next turn.
static void s_send_progress(s_actor_t *a)
{
    size_t sent = 0;
    cf_err_t rc = cf_worker_progress_send(a->w->progress, a->enc, a->sock, cf_clock_now_ms(),
                                          &sent);
    if (sent > 0 || rc != CF_OK)
        s_sent(a, rc, "PROGRESS");
}

//  The functions to announce, as cf_registry_names gives them; NULL (and
//  *count 0) for "every function": when the worker does not announce,
//  when the list is over the protocol's limit (said once), or when out of
//  memory (*failed then says so).
static char **s_functions(s_actor_t *a, size_t *count, bool *failed)
{
    *count = 0;
    *failed = false;
    if (!a->w->announce_functions)
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
static cf_err_t s_send_ready(s_actor_t *a, uint32_t credit)
{
    size_t count;
    bool failed;
    char **names = s_functions(a, &count, &failed);
    if (failed)
        return CF_ENOMEM;
    cf_proto_enc_ready(a->enc, credit, (uint32_t)a->w->threads, cf_registry_hostname(), a->w->pid,
                       CF_PROTO_FEATURE_BEGUN | CF_PROTO_FEATURE_STOP, (const char *const *)names,
                       count);
    free(names);
    cf_err_t rc = cf_proto_enc_send(a->enc, a->sock, NULL, 0);
    if (rc == CF_OK)
        a->functions_due = false;
    return rc;
}

//  FUNCTIONS: more functions were registered since READY.
static void s_send_functions(s_actor_t *a)
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
    s_sent(a, rc, "FUNCTIONS");
    a->functions_due = rc != CF_OK;
}

//  Sends READY if due, then STARTED for tasks that began, then pending
//  results in as few RESULT messages as the limits allow. Stops at the
//  first refused send.
static void s_flush(s_actor_t *a)
{
    if (a->blocked)
        return;
    if (a->announce) {
        uint32_t credit = s_credit(a);
        cf_err_t rc = s_send_ready(a, credit);
        s_sent(a, rc, "READY");
        if (rc != CF_OK)
            return;    //  results would reach a broker that does not know us
        a->announce = false;
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
        for (s_task_t *t = s_front(&a->pending); t; t = s_next(&a->pending, t)) {
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
        s_sent(a, rc, "RESULT");
        if (rc != CF_OK)
            return;    //  kept in pending
        for (size_t i = 0; i < count; i++) {
            s_task_free(s_pop(&a->pending));
            a->in_hand--;
        }
    }
}

//  Answers every task of list unrun with status (BUSY: handed back;
//  CANCELLED: a CANCEL won) in one RESULT and frees them. A refused send
//  puts them back at the end of the queue, to run after all. CF_OK for an
//  empty list.
static cf_err_t s_return_unrun(s_actor_t *a, cf_queue_t *list, cf_status_t status)
{
    if (cf_queue_empty(list))
        return CF_OK;
    cf_err_t rc = CF_OK;
    cf_proto_enc_begin(a->enc, CF_MSG_RESULT);
    for (s_task_t *t = s_front(list); t && rc == CF_OK; t = s_next(list, t))
        rc = cf_proto_enc_result_status(a->enc, t->id, status);
    if (rc == CF_OK)
        rc = cf_proto_enc_send(a->enc, a->sock, NULL, 0);
    s_sent(a, rc, "RESULT");
    if (rc != CF_OK) {
        pthread_mutex_lock(&a->w->lock);
        cf_queue_append(&a->w->queue, list);
        pthread_cond_broadcast(&a->w->work);
        pthread_mutex_unlock(&a->w->lock);
        return rc;
    }
    a->in_hand -= s_clear(list);
    return CF_OK;
}

//  Asks the broker for what s_target wants (see "Prefetch"): more with
//  CREDIT once it is a quarter above what the broker grants; less once the
//  broker grants more than twice the target (and more than threads because
//  we asked), or tasks wait behind stalled threads, by handing the queued tasks
//  beyond it back (BUSY: requeued without using a retry, for whichever
//  worker is free) and announcing again. Tasks the broker sent before it
//  read that READY still come and raise the grant; the next round trims it.
static void s_adjust_prefetch(s_actor_t *a, bool stalled)
{
    cf_worker_t *w = a->w;
    if (!a->accepting || a->announce || a->broker_lost || a->blocked)
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
        s_sent(a, rc, "CREDIT");
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
    if (s_return_unrun(a, &back, CF_STATUS_BUSY) != CF_OK)
        return;
    cf_log_debug(S_LOG,
                 "tasks take %.0f us: holding %" PRIu64 " instead of %" PRIu64
                 ", %zu queued handed back",
                 a->mean_run_us, target, a->grant, handed_back);
    a->prefetching = false;
    a->announce = true;
    s_flush(a);
}

//  The mean learns a task's length only when it ends: tasks prefetched
//  behind a long one would wait here while another worker idles. So when
//  tasks are queued and no thread took or finished one for S_STALL_MS, the
//  running ones are at least that long: the mean says so, and
//  s_adjust_prefetch hands the queued ones back.
static bool s_check_stall(s_actor_t *a)
{
    if (!a->prefetching)
        return false;
    cf_worker_t *w = a->w;
    int64_t now_us = cf_clock_now_us();
    pthread_mutex_lock(&w->lock);
    bool queued = cf_queue_size(&w->queue) > 0 && w->running >= w->threads;
    int64_t idle_us = now_us - w->progress_us;
    pthread_mutex_unlock(&w->lock);
    if (!queued || idle_us < S_STALL_MS * 1000)
        return false;
    if (a->mean_run_us < (double)idle_us)
        a->mean_run_us = (double)idle_us;
    return true;
}

static void s_send_heartbeat(s_actor_t *a)
{
    cf_proto_enc_heartbeat(a->enc, 0, 0);
    cf_err_t rc = cf_proto_enc_send(a->enc, a->sock, NULL, 0);
    //  A refused heartbeat is replaced by the next one, not retried now.
    a->last_send_ms = cf_clock_now_ms();
    if (rc != CF_OK && rc != CF_EBUSY)
        cf_log_debug(S_LOG, "heartbeat not sent: %s", cf_strerror(rc));
}

static void s_send_disconnect(s_actor_t *a, const char *reason)
{
    cf_proto_enc_begin(a->enc, CF_MSG_DISCONNECT);
    cf_proto_enc_text(a->enc, reason, 0);
    cf_err_t rc = cf_proto_enc_send(a->enc, a->sock, NULL, 0);
    if (rc != CF_OK)
        cf_log_debug(S_LOG, "DISCONNECT not sent: %s", cf_strerror(rc));
}

//  Hands a task back unrun (RESULT status BUSY): the broker requeues it
//  without using a retry. Used when a broker sends past our credit.
static void s_hand_back(s_actor_t *a, uint64_t id)
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
//  The actor: receiving

//  CANCEL from the broker: a task still queued here is taken out and
//  answered RESULT cancelled (it never runs); any other id is answered
//  STARTED, as its function began (its RESULT follows, or went already).
//  An executor takes tasks from the queue under the same lock, so each
//  task is either cancelled here or begun there, never both.
static void s_cancel_tasks(s_actor_t *a, const cf_proto_msg_t *msg)
{
    cf_worker_t *w = a->w;
    cf_queue_t cancelled;
    cf_queue_init(&cancelled);
    cf_proto_enc_begin(a->enc, CF_MSG_STARTED);
    pthread_mutex_lock(&w->lock);
    for (size_t i = 0; i < msg->count; i++) {
        s_task_t *task = s_front(&w->queue);
        while (task && task->id != msg->ids[i])
            task = s_next(&w->queue, task);
        if (task) {
            cf_queue_remove(&w->queue, &task->node);
            cf_queue_push_back(&cancelled, &task->node);
        }
        else if (!a->terminating)    //  else DISCONNECT hands it back unrun
            (void)cf_proto_enc_id(a->enc, msg->ids[i]);
    }
    pthread_mutex_unlock(&w->lock);
    if (cf_proto_enc_count(a->enc) > 0)
        s_sent(a, cf_proto_enc_send(a->enc, a->sock, NULL, 0), "STARTED");
    //  Refused: they run after all, and their results answer the CANCEL.
    (void)s_return_unrun(a, &cancelled, CF_STATUS_CANCELLED);
}

// ---------------------------------------------------------------------------
//  Stopping (STOP [[id, grace_ms]], docs/protocol.md). A task still queued
//  here is taken out and answered cancelled, as CANCEL does; a running one
//  gets its stop flag (cf_stop_requested says true to it from now on). In
//  a worker process (stop_kills_process) the request also arms a deadline:
//  if the task still runs grace_ms later, s_check_stop_deadlines answers
//  it Interrupted and ends the worker (CF_ETIMEDOUT), and the process that
//  runs it exits, which kills the task; its supervisor replaces it. Ids of
//  tasks that finished (their RESULT went or goes) or that we never had
//  are ignored: their RESULT answers for them.

static size_t s_collect(s_actor_t *a);

static s_task_t *s_running_task(cf_worker_t *w, uint64_t id)
{
    for (cf_queue_node_t *node = cf_queue_front(&w->runs); node;
         node = cf_queue_next(&w->runs, node)) {
        s_task_t *task = cf_queue_entry(node, s_task_t, run_node);
        if (task->id == id)
            return task;
    }
    return NULL;
}

static void s_stop_tasks(s_actor_t *a, const cf_proto_msg_t *msg)
{
    cf_worker_t *w = a->w;
    cf_queue_t cancelled;
    cf_queue_init(&cancelled);
    int64_t now = cf_clock_now_ms();
    pthread_mutex_lock(&w->lock);
    for (size_t i = 0; i < msg->count; i++) {
        const cf_proto_stop_t *stop = &msg->stops[i];
        s_task_t *task = s_front(&w->queue);
        while (task && task->id != stop->id)
            task = s_next(&w->queue, task);
        if (task) {
            cf_queue_remove(&w->queue, &task->node);
            cf_queue_push_back(&cancelled, &task->node);
            //  If the RESULT cannot be sent it runs after all: stopped.
            atomic_store_explicit(&task->stop, true, memory_order_release);
            continue;
        }
        task = s_running_task(w, stop->id);
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
    (void)s_return_unrun(a, &cancelled, CF_STATUS_CANCELLED);
}

//  Encodes RESULT Interrupted for every running task whose stop deadline
//  passed (under lock); returns how many, and sets *next to the earliest
//  deadline still ahead (0: none).
static size_t s_encode_overdue(s_actor_t *a, int64_t now, int64_t *next)
{
    cf_worker_t *w = a->w;
    size_t overdue = 0;
    *next = 0;
    cf_proto_enc_begin(a->enc, CF_MSG_RESULT);
    for (cf_queue_node_t *node = cf_queue_front(&w->runs); node;
         node = cf_queue_next(&w->runs, node)) {
        s_task_t *task = cf_queue_entry(node, s_task_t, run_node);
        if (!task->stop_deadline_ms)
            continue;
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

static void s_check_stop_deadlines(s_actor_t *a, int64_t now)
{
    if (!a->stop_deadline_ms || now < a->stop_deadline_ms)
        return;
    //  What finished before goes out first.
    s_collect(a);
    s_flush(a);
    pthread_mutex_lock(&a->w->lock);
    size_t overdue = s_encode_overdue(a, now, &a->stop_deadline_ms);
    pthread_mutex_unlock(&a->w->lock);
    if (overdue == 0)
        return;    //  they returned in time
    //  Refused: the broker learns it from the process's death instead (a
    //  task it asked to stop whose worker is lost fails with Interrupted).
    s_sent(a, cf_proto_enc_send(a->enc, a->sock, NULL, 0), "RESULT");
    a->done = true;
    a->end_reason = CF_ETIMEDOUT;
}

static void s_take_tasks(s_actor_t *a, const cf_proto_msg_t *msg)
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
        s_task_t *task = NULL;
        if (cf_queue_size(&w->queue) < (size_t)w->threads + S_PREFETCH_MAX + S_QUEUE_SLACK)
            task = s_task_new(src);
        if (!task) {
            pthread_mutex_unlock(&w->lock);
            s_hand_back(a, src->id);
            pthread_mutex_lock(&w->lock);
            continue;
        }
        cf_queue_push_back(&w->queue, &task->node);
        queued++;
        a->accepted++;
        a->in_hand++;
        if (a->in_hand > a->grant) {
            //  A broker past our credit, or tasks sent before it read our
            //  READY: those are ours to trim again.
            a->grant = a->in_hand;
            if (a->prefetched_once)
                a->prefetching = true;
        }
        if (w->max_tasks > 0 && a->accepted >= (uint64_t)w->max_tasks) {
            a->accepting = false;
            cf_log_info(S_LOG, "took its %d tasks (--max-tasks): finishing", w->max_tasks);
        }
    }
    if (queued == 1)
        pthread_cond_signal(&w->work);
    else if (queued > 1)
        pthread_cond_broadcast(&w->work);
    pthread_mutex_unlock(&w->lock);
}

static int s_send_ivl(const s_actor_t *a);

//  One re-introduction per restart (docs/protocol.md section 7): every sign
//  sets the one announce flag that one READY clears. An "unknown worker"
//  that comes within an interval of a READY answers a message sent before
//  it (a heartbeat queued while the broker was away) and is not a new sign:
//  a second READY would only reset our credit while its tasks are on the
//  way. A broker that really missed the READY says so again at our next
//  heartbeat, after the interval.
static void s_announce(s_actor_t *a, bool unknown_worker, const char *why)
{
    int64_t now = cf_clock_now_ms();
    if (a->announce)
        return;
    if (unknown_worker && a->announce_asked_ms && now - a->announce_asked_ms < s_send_ivl(a))
        return;
    cf_log_info(S_LOG, "%s: announcing again", why);
    a->announce = true;
    a->announce_asked_ms = now;
    a->reintroductions++;
}

//  Opens the DEALER to the broker (again after s_reopen): our identity,
//  with a generation suffix on a fresh socket so that the broker never
//  confuses it with the old connection it may still hold (it treats the old
//  identity as lost and retries what that one held), ZMTP heartbeats, and
//  the caller's setup (CURVE keys). Returns CF_OK or an error with message.
static cf_err_t s_open(s_actor_t *a, char *message, size_t size)
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
        || cf_link_setup(a->sock, s_send_ivl(a), w->liveness) != CF_OK
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

static void s_close(s_actor_t *a)
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
static void s_reopen(s_actor_t *a, int64_t now)
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
    s_announce(a, false, "fresh connection");
    //  The READY goes into the new socket now, where it waits for whichever
    //  broker answers (its answer is then no reason for another): left to
    //  the loop's next flush, it waited a whole poll (a heartbeat interval)
    //  after a partition healed.
    s_flush(a);
    a->introduced = true;
    a->last_send_ms = now;
}

//  The broker is gone (silent, or said DISCONNECT).
static void s_broker_gone(s_actor_t *a, const char *why)
{
    if (a->broker_lost)
        return;
    a->broker_lost = true;
    a->introduced = false;
    if (a->w->exit_on_broker_loss) {
        cf_log_warn(S_LOG, "broker %s %s: ending", a->w->endpoint, why);
        a->done = true;
        a->end_reason = CF_ESHUTDOWN;
        return;
    }
    cf_log_warn(S_LOG, "broker %s %s: waiting for it", a->w->endpoint, why);
}

static void s_on_message(s_actor_t *a, const cf_proto_msg_t *msg)
{
    switch (msg->type) {
    case CF_MSG_HEARTBEAT:
        if (msg->boot) {
            if (a->boot && msg->boot != a->boot)
                s_announce(a, false, "broker restarted (new boot id)");
            a->boot = msg->boot;
        }
        if (msg->ivl_ms)
            a->broker_ivl_ms = msg->ivl_ms < S_MIN_IVL_MS ? S_MIN_IVL_MS
                               : msg->ivl_ms > INT32_MAX  ? INT32_MAX
                                                          : (int)msg->ivl_ms;
        break;
    case CF_MSG_TASK:
        s_take_tasks(a, msg);
        break;
    case CF_MSG_CANCEL:
        s_cancel_tasks(a, msg);
        break;
    case CF_MSG_STOP:
        s_stop_tasks(a, msg);
        break;
    case CF_MSG_ERROR:
        if (cf_proto_str_eq(msg->text, CF_PROTO_UNKNOWN_WORKER)) {
            //  It lost track of us (it restarted, or judged us lost).
            s_announce(a, true, "broker does not know this worker");
        }
        else if (cf_proto_str_eq(msg->text, CF_PROTO_KEY_REVOKED)
                 || cf_proto_str_eq(msg->text, CF_PROTO_NOT_ALLOWED)) {
            //  Nothing we send will be taken: stop, and say why.
            cf_log_error(S_LOG, "the broker at %s refused this worker: %.*s", a->w->endpoint,
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
        s_broker_gone(a, "said DISCONNECT");
        //  Whoever answers next has forgotten us: s_read announces when it
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

static void s_read(s_actor_t *a)
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
            cf_link_backoff_reset(&a->reopen);
            if (!a->introduced)
                s_announce(a, false, "broker is back");
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

// ---------------------------------------------------------------------------
//  The actor: the loop

static int s_send_ivl(const s_actor_t *a)
{
    int ivl = a->w->ivl_ms;
    if (a->broker_ivl_ms && a->broker_ivl_ms < ivl)
        ivl = a->broker_ivl_ms;
    return ivl;
}

//  The broker is judged on its own interval once it announced one.
static int64_t s_expiry_ms(const s_actor_t *a)
{
    int ivl = a->broker_ivl_ms ? a->broker_ivl_ms : a->w->ivl_ms;
    return (int64_t)a->w->liveness * ivl;
}

//  Moves finished tasks to pending; reacts to destroy. Returns the tasks
//  still running or queued.
static size_t s_collect(s_actor_t *a)
{
    cf_worker_t *w = a->w;
    pthread_mutex_lock(&w->lock);
    s_task_t *done = s_front(&w->outbox);
    cf_queue_append(&a->pending, &w->outbox);
    if (a->term_asked && !a->terminating) {
        a->terminating = true;
        a->accepting = false;
        //  Queued tasks never run here: DISCONNECT hands them back.
        size_t dropped = s_clear(&w->queue);
        a->in_hand -= dropped;
        w->stopping = true;
        pthread_cond_broadcast(&w->work);
        cf_log_info(S_LOG, "stopping: %d running, %zu queued handed back", w->running, dropped);
    }
    size_t busy = (size_t)w->running + cf_queue_size(&w->queue);
    pthread_mutex_unlock(&w->lock);
    for (; done; done = s_next(&a->pending, done)) {
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
static void s_check_end(s_actor_t *a, size_t busy, int64_t now)
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
//  unannounced, S_BEGUN_HOLD_MS at most: a begin then never costs a wakeup
//  (a task done sooner needs no STARTED), which on a one-at-a-time round
//  trip cost 40% of the latency.
static int s_poll_timeout(s_actor_t *a, int64_t now)
{
    int64_t deadline = a->last_send_ms + s_send_ivl(a);
    if (!a->broker_lost) {
        int64_t expiry = a->last_recv_ms + s_expiry_ms(a) + 1;
        if (expiry < deadline)
            deadline = expiry;
    }
    if (a->give_up_ms && a->give_up_ms < deadline)
        deadline = a->give_up_ms;
    //  Prefetched tasks may be queued behind long ones: look again soon.
    if (a->prefetching && a->in_hand > (uint64_t)a->w->threads + cf_queue_size(&a->pending)
        && now + S_STALL_MS < deadline)
        deadline = now + S_STALL_MS;
    pthread_mutex_lock(&a->w->lock);
    bool soon = !cf_queue_empty(&a->w->begun) || !cf_queue_empty(&a->w->queue);
    pthread_mutex_unlock(&a->w->lock);
    if (soon && now + S_BEGUN_HOLD_MS < deadline)
        deadline = now + S_BEGUN_HOLD_MS;
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
static void s_deliver(cf_worker_t *w)
{
    s_actor_t *a = cf_actor_enter(w->actor);
    if (!a) {
        cf_actor_wake(w->actor);
        return;
    }
    bool wake = true;
    if (!a->done && !a->terminating && !a->blocked && !a->announce) {
        s_collect(a);
        s_flush(a);
        s_adjust_prefetch(a, false);
        wake = !cf_queue_empty(&a->pending) || a->blocked || a->announce || a->terminating
               || !a->accepting || (cf_proto_events(a->sock) & ZMQ_POLLIN);
    }
    cf_actor_leave(w->actor, wake);
}

static void s_actor_main(cf_actor_t *pipe, void *arg)
{
    cf_worker_t *w = arg;
    w->actor = pipe;
    s_actor_t actor = {
        .w = w,
        .actor = pipe,
        .accepting = true,
        .announce = true,
        .mean_run_us = -1,
    };
    s_actor_t *a = &actor;
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
    s_flush(a);    //  READY
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
            s_read(a);
        if (a->done)
            break;
        size_t busy = s_collect(a);
        if (w->announce_functions && !a->announce && cf_registry_generation() != a->functions_sent)
            a->functions_due = true;
        s_flush(a);
        s_adjust_prefetch(a, s_check_stall(a));
        now = cf_clock_now_ms();
        if (!a->broker_lost && now - a->last_recv_ms > s_expiry_ms(a)) {
            char why[64];
            snprintf(why, sizeof why, "silent for %" PRId64 " ms", now - a->last_recv_ms);
            s_broker_gone(a, why);
            if (a->done)
                break;
        }
        //  Silent, not only gone: after a DISCONNECT libzmq redials by
        //  itself, and the broker's successor speaks within an expiry.
        if (a->broker_lost && !a->terminating && now - a->last_recv_ms > s_expiry_ms(a))
            s_reopen(a, now);
        s_check_stop_deadlines(a, now);
        if (a->done)
            break;
        s_check_end(a, busy, now);
        if (a->done)
            break;
        if (now - a->last_send_ms >= s_send_ivl(a))
            s_send_heartbeat(a);
    }

    //  Leaving: say so (best effort; the broker also notices silence), and
    //  stop the executors whatever ended us.
    s_send_disconnect(a, a->end_reason == CF_ESTOP       ? "max tasks reached"
                         : a->end_reason == CF_ETIMEDOUT ? "a stopped task overran its grace"
                                                         : "stopping");
    if (cf_queue_size(&a->pending))
        cf_log_warn(S_LOG, "%zu results not delivered", cf_queue_size(&a->pending));
    s_clear(&a->pending);
    if (a->declined)
        cf_log_debug(S_LOG, "%" PRIu64 " tasks not taken, handed back by DISCONNECT", a->declined);
    cf_actor_serve(pipe, NULL);
    s_close(a);
    cf_proto_enc_destroy(&a->enc);
    pthread_mutex_lock(&w->lock);
    w->stopping = true;
    s_clear(&w->queue);
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

// ---------------------------------------------------------------------------
//  Public

//  A first progress report waits (cf_worker_progress.h): the actor sends it.
static void s_wake_actor(void *arg)
{
    cf_worker_t *w = arg;
    cf_actor_wake(w->actor);
}

//  "w-<host>-<pid>-<random>": readable in broker logs, unique across
//  restarts of the same pid.
static void s_make_identity(char *out, size_t size)
{
    snprintf(out, size, "w-%.64s-%d-%08" PRIx32, cf_registry_hostname(), (int)getpid(),
             (uint32_t)cf_random_u64());
}

//  Stops and joins the executors (running tasks finish first).
static void s_join_executors(cf_worker_t *w)
{
    pthread_mutex_lock(&w->lock);
    w->stopping = true;
    s_clear(&w->queue);
    pthread_cond_broadcast(&w->work);
    pthread_mutex_unlock(&w->lock);
    for (int i = 0; i < w->executors_started; i++)
        pthread_join(w->executors[i], NULL);
    w->executors_started = 0;
}

//  Frees a worker whose actor ended, or a half-built one (cf_worker_new's
//  failures come here): executors still running are stopped and joined.
static void s_free(cf_worker_t *w)
{
    s_join_executors(w);
    if (w->own_ctx && w->ctx) {
        while (zmq_ctx_term(w->ctx) != 0 && errno == EINTR)
            ;
    }
    s_clear(&w->queue);
    s_clear(&w->outbox);
    cf_worker_progress_destroy(&w->progress);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->work);
    pthread_cond_destroy(&w->state);
    free(w->executors);
    free(w->endpoint);
    free(w);
}

cf_worker_t *cf_worker_new(const cf_worker_config_t *config)
{
    if (!config || !config->endpoint || !*config->endpoint) {
        cf_error_set(CF_EINVAL, "worker: a broker endpoint is required");
        return NULL;
    }
    if (config->threads < 1) {
        cf_error_set(CF_EINVAL, "worker: threads must be >= 1, got %d", config->threads);
        return NULL;
    }
    if (config->heartbeat_ivl_ms < 0 || config->heartbeat_liveness < 0 || config->max_tasks < 0) {
        cf_error_set(CF_EINVAL, "worker: heartbeat interval, liveness and max_tasks must be >= 0");
        return NULL;
    }
    if (config->identity && (!config->identity[0] || strlen(config->identity) > 255)) {
        cf_error_set(CF_EINVAL, "worker: an identity is 1 to 255 bytes");
        return NULL;
    }
    cf_worker_t *w = calloc(1, sizeof *w);
    if (!w) {
        cf_error_set(CF_ENOMEM, "out of memory");
        return NULL;
    }
    cf_queue_init(&w->queue);
    cf_queue_init(&w->outbox);
    cf_queue_init(&w->begun);
    cf_queue_init(&w->runs);
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->work, NULL);
    cf_clock_cond_init(&w->state);

    w->endpoint = strdup(config->endpoint);
    w->executors = calloc((size_t)config->threads, sizeof *w->executors);
    w->progress = cf_worker_progress_new(s_wake_actor, w);
    if (!w->endpoint || !w->executors || !w->progress) {
        cf_error_set(CF_ENOMEM, "out of memory");
        goto failed;
    }
    if (config->identity)
        snprintf(w->identity, sizeof w->identity, "%s", config->identity);
    else
        s_make_identity(w->identity, sizeof w->identity);
    w->threads = config->threads;
    w->ivl_ms = config->heartbeat_ivl_ms ? config->heartbeat_ivl_ms : CF_HEARTBEAT_IVL_MS;
    w->liveness = config->heartbeat_liveness ? config->heartbeat_liveness : CF_HEARTBEAT_LIVENESS;
    w->max_tasks = config->max_tasks;
    w->exit_on_broker_loss = config->exit_on_broker_loss;
    w->initializer = config->initializer;
    w->initarg = config->initarg;
    w->socket_setup = config->socket_setup;
    w->socket_setup_arg = config->socket_setup_arg;
    w->running_ids = config->running_ids;
    w->announce_functions = config->announce_functions;
    w->stop_kills_process = config->stop_kills_process;
    w->pid = (int)getpid();

    w->ctx = config->zmq_context;
    if (!w->ctx) {
        w->ctx = zmq_ctx_new();
        w->own_ctx = true;
        if (!w->ctx) {
            cf_error_set(CF_ESYS, "worker: zmq_ctx_new: %s", zmq_strerror(errno));
            goto failed;
        }
    }

    //  Executors first, so the first TASK finds someone waiting.
    for (int i = 0; i < w->threads; i++) {
        int rc = pthread_create(&w->executors[i], NULL, s_executor_main, w);
        if (rc != 0) {
            cf_error_set(CF_ESYS, "worker: cannot start execution thread %d: %s", i + 1,
                         strerror(rc));
            goto failed;
        }
        w->executors_started++;
    }
    //  The actor sets w->actor itself (see the struct).
    if (!cf_actor_new("cf-worker", s_actor_main, w))
        goto failed;
    return w;

failed:
    s_free(w);    //  keeps the error: joining threads and freeing set none
    return NULL;
}

cf_err_t cf_worker_wait(cf_worker_t *w, int timeout_ms)
{
    assert(w);
    struct timespec deadline = cf_clock_deadline(timeout_ms > 0 ? timeout_ms : 0);
    pthread_mutex_lock(&w->lock);
    while (!w->ended && timeout_ms != 0) {
        if (timeout_ms < 0)
            pthread_cond_wait(&w->state, &w->lock);
        else if (pthread_cond_timedwait(&w->state, &w->lock, &deadline) == ETIMEDOUT)
            break;
    }
    bool ended = w->ended;
    pthread_mutex_unlock(&w->lock);
    return ended ? CF_OK : CF_ETIMEDOUT;
}

cf_err_t cf_worker_ended(cf_worker_t *w)
{
    assert(w);
    pthread_mutex_lock(&w->lock);
    cf_err_t reason = w->ended ? w->end_reason : CF_OK;
    pthread_mutex_unlock(&w->lock);
    return reason;
}

//  A helper thread's zmq_ctx_term, waited for with a bound (cf_worker_abandon).
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    void *ctx;
    bool done;
} s_term_t;

static void *s_term_main(void *arg)
{
    s_term_t *t = arg;
    while (zmq_ctx_term(t->ctx) != 0 && errno == EINTR)
        ;
    pthread_mutex_lock(&t->lock);
    t->done = true;
    pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->lock);
    return NULL;
}

void cf_worker_abandon(cf_worker_t *w, int flush_ms)
{
    assert(w);
    pthread_mutex_lock(&w->lock);
    bool ended = w->ended;
    pthread_mutex_unlock(&w->lock);
    if (!w->own_ctx || !ended)
        return;
    //  Leaked on purpose: the process ends next, and a term still waiting
    //  (a socket someone else holds) keeps using it.
    s_term_t *t = calloc(1, sizeof *t);
    if (!t)
        return;
    pthread_mutex_init(&t->lock, NULL);
    cf_clock_cond_init(&t->cond);
    t->ctx = w->ctx;
    pthread_t thread;
    if (pthread_create(&thread, NULL, s_term_main, t) != 0)
        return;
    pthread_detach(thread);
    struct timespec deadline = cf_clock_deadline(flush_ms > 0 ? flush_ms : 0);
    pthread_mutex_lock(&t->lock);
    while (!t->done) {
        if (pthread_cond_timedwait(&t->cond, &t->lock, &deadline) == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&t->lock);
}

const char *cf_worker_identity(cf_worker_t *w)
{
    assert(w);
    return w->identity;
}

void cf_worker_destroy(cf_worker_t **wp)
{
    if (!wp || !*wp)
        return;
    cf_worker_t *w = *wp;
    *wp = NULL;
    //  The actor ends first (it hands back what is queued and sends the
    //  results of what runs); the executors may still wake it meanwhile, so
    //  it is freed only after they are joined.
    cf_actor_send(w->actor, "$TERM", NULL, 0);
    cf_worker_wait(w, -1);
    s_join_executors(w);
    cf_actor_destroy(&w->actor);
    size_t undelivered = cf_queue_size(&w->outbox);
    if (undelivered)
        cf_log_warn(S_LOG, "%zu results finished after the worker ended, not delivered",
                    undelivered);
    s_free(w);
}

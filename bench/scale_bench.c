//  scale_bench: what a cf-broker costs as the cluster grows (issue 11).
//  One process drives a real cf-broker at raw-protocol speed, as
//  bench/routing_bench.c does: C client sockets each keep a window of tasks
//  submitted, W worker sockets each answer every TASK item at once. Only the
//  broker's CPU time (every thread's, from its process CPU clock)
//  and resident memory (/proc/PID/statm) count, so the driver's own cost
//  does not.
//
//  Modes (--only MODE; default all, interleaved round by round):
//    peers   broker CPU per task for W = 1, 10, 100, 1000 worker sockets
//            (1 client) and C = 1, 10, 100 client sockets (100 workers), and
//            the corner W = 1000, C = 100. The window of tasks in flight is
//            the same in every configuration (--window, split evenly over
//            the clients): the offered load does not grow with the peers.
//    queue   a queue of N = 1,000 to 1,000,000 tasks: the broker's CPU per
//            task while a client fills it with no worker attached (submit),
//            then while 10 workers drain it and the client keeps it at N
//            (steady state: each answer is replaced by a new submit), and
//            the broker's RSS per queued task.
//    wire    bytes on the wire per task of each message a task causes
//            (SUBMIT, TASK, RESULT, STARTED), one item a message and 64,
//            from the protocol's own encoder (no broker: computed once)
//    idle    1,000 worker sockets and then 1,000 client sockets connected
//            and idle: broker RSS per worker and per client, heartbeat
//            messages and bytes per second both ways, and the broker's CPU
//            for keeping them alive.
//
//    fdlimit a broker under RLIMIT_NOFILE 64 (set before exec) with 10
//            workers and a client, then 200 connections more than it can
//            accept: its CPU per task and idle, below and over its limit
//
//  Workers say READY with cf-worker's features (BEGUN, STOP), so the broker
//  sends their clients no STARTED for these no-ops, as with cf-worker.
//  Peers heartbeat as cf-worker does (an app-level HEARTBEAT every interval,
//  ZeroMQ's ZMTP PINGs at the same interval, core/cf_link.c). The broker
//  runs with --liveness 30 so that setting up 2,000 sockets never loses a
//  peer; heartbeats still go out every interval.
//
//  Output: one line per figure, "scale.NAME VALUE min MIN max MAX UNIT",
//  the median of --rounds rounds then their min and max. --quick runs tiny
//  sizes (the bench-smoke test): it checks that every figure comes out,
//  never how fast.

#include "bench_broker.h"
#include "cf_proto.h"

#include <errno.h>
#include <dirent.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define S_MAX_BATCH 500     //  tasks per SUBMIT at most
#define S_IVL_MS    1000    //  heartbeat interval (the default)
#define S_MAX_ROUND 32

static int s_credit = 64;    //  per worker socket (--credit)

static void s_die(const char *what)
{
    fprintf(stderr, "scale_bench: %s: %s\n", what, errno ? strerror(errno) : "failed");
    exit(1);
}

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t s_cpu_us(pid_t pid)
{
    int64_t us = bench_broker_cpu_us(pid);
    if (us < 0)
        s_die("cannot read the broker's CPU clock");
    return us;
}

//  The broker's threads' CPU ticks, to tell its ZeroMQ I/O thread's share
//  (ZMQbg/IO/0) from the actor's: the busier one sets a broker's ceiling.
typedef struct {
    int64_t io, all;
} s_split_t;

static s_split_t s_thread_ticks(pid_t pid)
{
    s_split_t split = { 0, 0 };
    char path[320], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *dir = opendir(path);
    if (!dir)
        return split;
    for (struct dirent *e; (e = readdir(dir));) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/proc/%d/task/%s/stat", (int)pid, e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        if (fgets(buf, sizeof buf, f)) {
            const char *p = strrchr(buf, ')');
            unsigned long long utime = 0, stime = 0;
            if (p
                && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime,
                          &stime)
                       == 2) {
                split.all += (int64_t)(utime + stime);
                if (strstr(buf, "(ZMQbg/IO"))
                    split.io += (int64_t)(utime + stime);
            }
        }
        fclose(f);
    }
    closedir(dir);
    return split;
}

//  Resident set of pid in bytes.
static int64_t s_rss(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/statm", (int)pid);
    FILE *f = fopen(path, "r");
    long long size = 0, resident = 0;
    if (!f || fscanf(f, "%lld %lld", &size, &resident) != 2)
        s_die("cannot read the broker's /proc statm");
    fclose(f);
    return resident * (int64_t)sysconf(_SC_PAGESIZE);
}

// ---------------------------------------------------------------------------
//  The broker

static int s_broker_fd_limit;    //  RLIMIT_NOFILE of the next broker; 0: ours

//  --liveness 30, so that setting up 2,000 sockets never loses a peer;
//  SCALE_BENCH_BROKER_LOG: the brokers' logs appended there.
static void s_broker_start(const char *bin, bench_broker_t *b)
{
    bench_broker_opts_t opts = { .log = getenv("SCALE_BENCH_BROKER_LOG"),
                                 .fd_limit = s_broker_fd_limit,
                                 .liveness = 30 };
    if (!bench_broker_start(bin, &opts, b))
        s_die("the broker did not say ready");
}

// ---------------------------------------------------------------------------
//  The rig: the client and worker sockets, and what they saw

typedef struct {
    void *sock;
    bool worker;
    bool known;           //  the broker knows it (READY sent, or a first SUBMIT)
    int64_t submitted;    //  clients: tasks sent
    int64_t answered;     //  clients: results received
} s_peer_t;

typedef struct {
    void *ctx;
    cf_proto_enc_t *enc;
    bench_broker_t *broker;
    s_peer_t *peers;    //  workers first, then clients
    zmq_pollitem_t *items;
    int count, workers, clients;
    uint64_t next_id;
    int64_t next_hb_ms;
    //  Seen by the workers / clients.
    int64_t task_msgs, task_items, answered, result_msgs, submit_msgs;
    //  HEARTBEAT from the broker, and ours to it (messages, ZMTP bytes).
    int64_t hb_in, hb_in_bytes, hb_out, hb_out_bytes;
    bool count_raw;    //  idle mode: read raw frames to count bytes
    int stats_pending;
    uint64_t stat_value;
    const char *stat_name;
} s_rig_t;

static void *s_dealer(s_rig_t *r, const char *endpoint)
{
    void *sock = zmq_socket(r->ctx, ZMQ_DEALER);
    //  As core/cf_link.c: ZMTP heartbeats at the interval.
    int ivl = S_IVL_MS, timeout = 3 * S_IVL_MS, ttl = 4 * S_IVL_MS;
    if (!sock || cf_proto_socket_setup(sock, false) != CF_OK
        || zmq_setsockopt(sock, ZMQ_HEARTBEAT_IVL, &ivl, sizeof ivl) != 0
        || zmq_setsockopt(sock, ZMQ_HEARTBEAT_TIMEOUT, &timeout, sizeof timeout) != 0
        || zmq_setsockopt(sock, ZMQ_HEARTBEAT_TTL, &ttl, sizeof ttl) != 0
        || zmq_connect(sock, endpoint) != 0)
        s_die("socket (raise ulimit -n?)");
    return sock;
}

static void s_rig_init(s_rig_t *r, bench_broker_t *broker, int max_peers)
{
    memset(r, 0, sizeof *r);
    r->broker = broker;
    r->ctx = zmq_ctx_new();
    r->enc = cf_proto_enc_new();
    r->peers = calloc((size_t)max_peers, sizeof *r->peers);
    r->items = calloc((size_t)max_peers, sizeof *r->items);
    if (!r->ctx || !r->enc || !r->peers || !r->items
        || zmq_ctx_set(r->ctx, ZMQ_MAX_SOCKETS, max_peers + 16) != 0)
        s_die("rig");
    r->next_id = 1;
    r->next_hb_ms = s_now_ms() + S_IVL_MS;
}

//  Bytes a message of these frames takes in ZMTP 3 (short frames: a flags
//  and a size byte each).
static int64_t s_zmtp_bytes(const size_t *sizes, int n)
{
    int64_t bytes = 0;
    for (int i = 0; i < n; i++)
        bytes += (int64_t)sizes[i] + (sizes[i] > 255 ? 9 : 2);
    return bytes;
}

//  Features as cf-worker says them: BEGUN (it says STARTED itself, and
//  only for a task still running after a while, so never for these
//  no-ops) and STOP. A cf/1 worker without BEGUN costs every task a
//  STARTED from the broker to its client (--cf1-workers).
static bool s_cf1_workers;

static void s_send_ready(s_rig_t *r, s_peer_t *p, int pid)
{
    uint32_t features = s_cf1_workers ? 0 : CF_PROTO_FEATURE_BEGUN | CF_PROTO_FEATURE_STOP;
    cf_proto_enc_ready(r->enc, s_credit, s_credit, "bench", pid, features, NULL, 0);
    if (cf_proto_enc_send(r->enc, p->sock, NULL, 0) != CF_OK)
        s_die("READY");
    p->known = true;
}

static void s_add_workers(s_rig_t *r, int n)
{
    for (int i = 0; i < n; i++) {
        s_peer_t *p = &r->peers[r->count];
        p->sock = s_dealer(r, r->broker->workers);
        p->worker = true;
        r->items[r->count] = (zmq_pollitem_t){ p->sock, 0, ZMQ_POLLIN, 0 };
        s_send_ready(r, p, ++r->workers);
        r->count++;
    }
}

static void s_add_clients(s_rig_t *r, int n)
{
    for (int i = 0; i < n; i++) {
        s_peer_t *p = &r->peers[r->count];
        p->sock = s_dealer(r, r->broker->clients);
        r->items[r->count] = (zmq_pollitem_t){ p->sock, 0, ZMQ_POLLIN, 0 };
        r->count++;
        r->clients++;
    }
}

static void s_pump(s_rig_t *r, int timeout_ms);

static void s_submit(s_rig_t *r, s_peer_t *p, int n)
{
    //  A queue filled faster than the broker reads reaches the socket's
    //  high-water mark: wait for room.
    while (true) {
        int events = 0;
        size_t len = sizeof events;
        if (zmq_getsockopt(p->sock, ZMQ_EVENTS, &events, &len) != 0)
            s_die("ZMQ_EVENTS");
        if (events & ZMQ_POLLOUT)
            break;
        s_pump(r, 1);
    }
    cf_proto_enc_begin(r->enc, CF_MSG_SUBMIT);
    for (int k = 0; k < n; k++)
        if (cf_proto_enc_task(r->enc, r->next_id++, "noop", 4, "\x90", 1, 0, 0, 0) != CF_OK)
            s_die("SUBMIT item");
    if (cf_proto_enc_send(r->enc, p->sock, NULL, 0) != CF_OK)
        s_die("SUBMIT");
    p->submitted += n;
    p->known = true;
    r->submit_msgs++;
}

//  Every known peer says HEARTBEAT [0, 0] once an interval.
static void s_heartbeats(s_rig_t *r)
{
    int64_t now = s_now_ms();
    if (now < r->next_hb_ms)
        return;
    r->next_hb_ms = now + S_IVL_MS;
    static const size_t sizes[] = { 4, 9, 3 };    //  cf/1, HEARTBEAT, [0, 0]
    for (int i = 0; i < r->count; i++) {
        if (!r->peers[i].known)
            continue;
        cf_proto_enc_heartbeat(r->enc, 0, 0);
        if (cf_proto_enc_send(r->enc, r->peers[i].sock, NULL, 0) == CF_OK) {
            r->hb_out++;
            r->hb_out_bytes += s_zmtp_bytes(sizes, 3);
        }
    }
}

//  Idle mode: reads one message as raw frames: -1 when none is there, 1
//  for a HEARTBEAT (its ZMTP bytes added to *bytes), 0 for anything else.
static int s_recv_raw(void *sock, int64_t *bytes)
{
    size_t sizes[8];
    int n = 0, more = 1;
    bool heartbeat = false;
    while (more) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, sock, n == 0 ? ZMQ_DONTWAIT : 0) < 0) {
            zmq_msg_close(&part);
            return -1;
        }
        if (n == 1 && zmq_msg_size(&part) == 9 && !memcmp(zmq_msg_data(&part), "HEARTBEAT", 9))
            heartbeat = true;
        if (n < 8)
            sizes[n++] = zmq_msg_size(&part);
        more = zmq_msg_more(&part);
        zmq_msg_close(&part);
    }
    if (heartbeat)
        *bytes += s_zmtp_bytes(sizes, n);
    return heartbeat ? 1 : 0;
}

//  One poll over every socket: workers answer every TASK item at once,
//  clients count results, everybody counts heartbeats.
static void s_pump(s_rig_t *r, int timeout_ms)
{
    s_heartbeats(r);
    int rc = zmq_poll(r->items, r->count, timeout_ms);
    if (rc < 0 && errno != EINTR)
        s_die("poll");
    for (int i = 0; i < r->count && rc > 0; i++) {
        if (!(r->items[i].revents & ZMQ_POLLIN))
            continue;
        s_peer_t *p = &r->peers[i];
        if (r->count_raw) {
            int got;
            while ((got = s_recv_raw(p->sock, &r->hb_in_bytes)) >= 0)
                r->hb_in += got;
            continue;
        }
        cf_proto_msg_t *msg;
        while (cf_proto_recv(p->sock, false, NULL, &msg) == CF_OK) {
            if (msg->type == CF_MSG_HEARTBEAT)
                r->hb_in++;
            else if (p->worker && msg->type == CF_MSG_TASK) {
                r->task_msgs++;
                r->task_items += (int64_t)msg->count;
                cf_proto_enc_begin(r->enc, CF_MSG_RESULT);
                for (size_t k = 0; k < msg->count; k++)
                    cf_proto_enc_result_ok(r->enc, msg->tasks[k].id, "\xc0", 1);
                if (cf_proto_enc_send(r->enc, p->sock, NULL, 0) != CF_OK)
                    s_die("RESULT");
            }
            else if (!p->worker && msg->type == CF_MSG_RESULT) {
                p->answered += (int64_t)msg->count;
                r->result_msgs++;
                r->answered += (int64_t)msg->count;
            }
            else if (!p->worker && msg->type == CF_MSG_STATS && r->stats_pending > 0) {
                r->stats_pending--;
                for (size_t k = 0; k < msg->count; k++)
                    if (msg->stats[k].name.len == strlen(r->stat_name)
                        && !memcmp(msg->stats[k].name.ptr, r->stat_name, msg->stats[k].name.len))
                        r->stat_value = msg->stats[k].value;
            }
            cf_proto_msg_destroy(&msg);
        }
    }
}

//  A broker counter, asked on every client socket (so that it answers after
//  everything each client sent before), or on a socket of its own when the
//  rig has no client yet.
static uint64_t s_stat(s_rig_t *r, const char *name)
{
    bool own = r->clients == 0;
    if (own)
        s_add_clients(r, 1);
    r->stat_name = name;
    r->stats_pending = 0;
    for (int i = 0; i < r->count; i++) {
        if (r->peers[i].worker)
            continue;
        cf_proto_enc_begin(r->enc, CF_MSG_STATS);
        if (cf_proto_enc_send(r->enc, r->peers[i].sock, NULL, 0) != CF_OK)
            s_die("STATS");
        r->stats_pending++;
    }
    int64_t deadline = s_now_ms() + 60000;
    while (r->stats_pending > 0) {
        if (s_now_ms() > deadline)
            s_die("no STATS reply in 60 s");
        s_pump(r, 100);
    }
    if (own) {
        r->count--;
        r->clients--;
        zmq_close(r->peers[r->count].sock);
        memset(&r->peers[r->count], 0, sizeof r->peers[r->count]);
    }
    return r->stat_value;
}

static void s_wait_stat(s_rig_t *r, const char *name, uint64_t want)
{
    int64_t deadline = s_now_ms() + 120000;
    while (s_stat(r, name) != want) {
        if (s_now_ms() > deadline)
            s_die("the broker's count did not reach what was connected");
        s_pump(r, 20);
    }
}

static void s_rig_destroy(s_rig_t *r)
{
    int linger = 0;
    for (int i = 0; i < r->count; i++) {
        zmq_setsockopt(r->peers[i].sock, ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(r->peers[i].sock);
    }
    cf_proto_enc_destroy(&r->enc);
    zmq_ctx_term(r->ctx);
    free(r->peers);
    free(r->items);
}

//  Keeps each client's window of tasks submitted and not answered full
//  until `tasks` more are answered. Returns the broker's CPU µs per task.
static double s_drive(s_rig_t *r, int64_t window, int64_t tasks)
{
    int64_t per_client = window / r->clients;
    if (per_client < 1)
        per_client = 1;
    int batch = (int)(per_client / 4 > S_MAX_BATCH ? S_MAX_BATCH : per_client / 4);
    if (batch < 1)
        batch = 1;
    int64_t goal = r->answered + tasks;
    int64_t cpu0 = s_cpu_us(r->broker->pid);
    int64_t last_progress = s_now_ms(), last_answered = r->answered;
    while (r->answered < goal) {
        for (int i = 0; i < r->count; i++) {
            s_peer_t *p = &r->peers[i];
            while (!p->worker && p->submitted - p->answered + batch <= per_client)
                s_submit(r, p, batch);
        }
        s_pump(r, 1000);
        if (r->answered != last_answered) {
            last_answered = r->answered;
            last_progress = s_now_ms();
        }
        else if (s_now_ms() - last_progress > 10000)
            s_die("no progress for 10 s");
    }
    return (double)(s_cpu_us(r->broker->pid) - cpu0) / (double)tasks;
}

// ---------------------------------------------------------------------------
//  The modes. Each round of a configuration fills one slot of its figures.

typedef struct {
    char name[64];
    const char *unit;
    double v[S_MAX_ROUND];
    int n;
} s_fig_t;

static s_fig_t s_figs[128];
static int s_nfigs;

static void s_record(const char *unit, double value, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void s_record(const char *unit, double value, const char *fmt, ...)
{
    char name[64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    s_fig_t *f = NULL;
    for (int i = 0; i < s_nfigs && !f; i++)
        if (!strcmp(s_figs[i].name, name))
            f = &s_figs[i];
    if (!f) {
        if (s_nfigs == (int)(sizeof s_figs / sizeof s_figs[0]))
            s_die("too many figures");
        f = &s_figs[s_nfigs++];
        snprintf(f->name, sizeof f->name, "%s", name);
        f->unit = unit;
    }
    if (f->n < S_MAX_ROUND)
        f->v[f->n++] = value;
    fprintf(stderr, "  %s %.3f %s\n", name, value, unit);
}

static bool s_verbose_rounds = true;

//  client_window > 0: every client keeps that many in flight (the window
//  grows with the clients, as with real clients, each a cf_map of its own
//  window); figures named peers.wW.cC.own_window.*. Else the window is
//  split over the clients (the offered load stays the same).
static void s_peers_round(const char *bin, int workers, int clients, int64_t window,
                          int64_t client_window, int64_t tasks)
{
    char tag[64];
    if (client_window > 0) {
        window = client_window * clients;
        snprintf(tag, sizeof tag, "peers.w%d.c%d.own_window", workers, clients);
    }
    else
        snprintf(tag, sizeof tag, "peers.w%d.c%d", workers, clients);
    bench_broker_t broker;
    s_broker_start(bin, &broker);
    s_rig_t r;
    s_rig_init(&r, &broker, workers + clients + 1);
    s_add_workers(&r, workers);
    s_add_clients(&r, clients);
    s_wait_stat(&r, "workers", (uint64_t)workers);
    //  A warm-up: every client known, every worker reached once.
    s_drive(&r, window, tasks / 10 > 1000 ? tasks / 10 : 1000);
    int64_t msgs0 = r.task_msgs, items0 = r.task_items, answered0 = r.answered;
    int64_t results0 = r.result_msgs, submits0 = r.submit_msgs;
    s_split_t split0 = s_thread_ticks(broker.pid);
    double us = s_drive(&r, window, tasks);
    s_split_t split1 = s_thread_ticks(broker.pid);
    if (split1.all > split0.all)
        s_record("share", (double)(split1.io - split0.io) / (double)(split1.all - split0.all),
                 "%s.io_thread_share", tag);
    s_record("us/task", us, "%s.broker_cpu", tag);
    s_record("tasks/msg", (double)(r.task_items - items0) / (double)(r.task_msgs - msgs0),
             "%s.tasks_per_TASK", tag);
    s_record("tasks/msg", (double)(r.answered - answered0) / (double)(r.result_msgs - results0),
             "%s.tasks_per_client_RESULT", tag);
    s_record("tasks/msg", (double)(r.answered - answered0) / (double)(r.submit_msgs - submits0),
             "%s.tasks_per_SUBMIT", tag);
    s_rig_destroy(&r);
    bench_broker_stop(&broker);
}

static void s_queue_round(const char *bin, int64_t depth, int64_t tasks)
{
    enum { WORKERS = 10 };
    bench_broker_t broker;
    s_broker_start(bin, &broker);
    s_rig_t r;
    s_rig_init(&r, &broker, WORKERS + 2);
    s_add_clients(&r, 1);
    s_peer_t *client = &r.peers[0];
    //  Known first (one task no worker takes yet), so that the fill
    //  measures queueing, not the client's arrival.
    s_submit(&r, client, 1);
    s_stat(&r, "queued");
    int64_t rss0 = s_rss(broker.pid), cpu0 = s_cpu_us(broker.pid);
    for (int64_t left = depth - 1; left > 0;) {
        int n = left > S_MAX_BATCH ? S_MAX_BATCH : (int)left;
        s_submit(&r, client, n);
        left -= n;
        if (left % 20000 < S_MAX_BATCH)
            s_pump(&r, 0);    //  answer heartbeats, keep the pipe moving
    }
    if (s_stat(&r, "queued") != (uint64_t)depth)
        s_die("the queue did not fill");
    double submit_us = (double)(s_cpu_us(broker.pid) - cpu0) / (double)(depth - 1);
    double bytes = (double)(s_rss(broker.pid) - rss0) / (double)(depth - 1);
    s_record("us/task", submit_us, "queue.n%" PRId64 ".submit_cpu", depth);
    s_record("B/task", bytes, "queue.n%" PRId64 ".rss_per_task", depth);
    //  Steady state: the workers drain it, the client keeps it at depth.
    s_add_workers(&r, WORKERS);
    int64_t window = depth + WORKERS * s_credit;
    s_drive(&r, window, tasks / 10 > 1000 ? tasks / 10 : 1000);
    double us = s_drive(&r, window, tasks);
    s_record("us/task", us, "queue.n%" PRId64 ".steady_cpu", depth);
    s_rig_destroy(&r);
    bench_broker_stop(&broker);
}

static void s_idle_round(const char *bin, int peers, int seconds)
{
    bench_broker_t broker;
    s_broker_start(bin, &broker);
    s_rig_t r;
    s_rig_init(&r, &broker, 2 * peers + 2);
    s_stat(&r, "workers");
    int64_t rss0 = s_rss(broker.pid);
    s_add_workers(&r, peers);
    s_wait_stat(&r, "workers", (uint64_t)peers);
    //  Let the connections settle (their first heartbeats, buffers).
    int64_t until = s_now_ms() + 1500;
    while (s_now_ms() < until)
        s_pump(&r, 100);
    int64_t rss1 = s_rss(broker.pid);
    s_record("B/peer", (double)(rss1 - rss0) / peers, "idle.rss_per_worker");

    //  Heartbeats over whole intervals, counted raw.
    r.count_raw = true;
    r.hb_in = r.hb_in_bytes = r.hb_out = r.hb_out_bytes = 0;
    int64_t cpu0 = s_cpu_us(broker.pid), t0 = s_now_ms();
    until = t0 + seconds * 1000;
    while (s_now_ms() < until)
        s_pump(&r, 50);
    double secs = (double)(s_now_ms() - t0) / 1000.0;
    double cpu_ms = (double)(s_cpu_us(broker.pid) - cpu0) / 1000.0 / secs;
    r.count_raw = false;
    //  ZMTP PING from each peer and PONG from the broker every interval:
    //  9 and 7 bytes (flags, size, name length, name, TTL).
    double pings = (double)peers * secs * 1000.0 / S_IVL_MS;
    s_record("msg/s", (double)r.hb_in / secs, "idle.w%d.heartbeats_from_broker", peers);
    s_record("msg/s", (double)r.hb_out / secs, "idle.w%d.heartbeats_to_broker", peers);
    s_record("B/s", (double)(r.hb_in_bytes + r.hb_out_bytes) / secs + pings * (9 + 7) / secs,
             "idle.w%d.heartbeat_bytes_both_ways", peers);
    s_record("ms/s", cpu_ms, "idle.w%d.broker_cpu", peers);

    //  Clients: each submits one task (what makes a client known), the
    //  workers answer it; then idle.
    s_add_clients(&r, peers);
    for (int i = 0; i < r.count; i++)
        if (!r.peers[i].worker)
            s_submit(&r, &r.peers[i], 1);
    int64_t deadline = s_now_ms() + 60000;
    while (r.answered < peers && s_now_ms() < deadline)
        s_pump(&r, 100);
    s_wait_stat(&r, "clients", (uint64_t)peers);
    until = s_now_ms() + 1500;
    while (s_now_ms() < until)
        s_pump(&r, 100);
    int64_t rss2 = s_rss(broker.pid);
    s_record("B/peer", (double)(rss2 - rss1) / peers, "idle.rss_per_client");
    s_rig_destroy(&r);
    bench_broker_stop(&broker);
}

//  Bytes on the wire per task of each message a task causes, in batches of
//  `batch` items, function "noop", empty args ([]) and a nil result: what a
//  task costs beyond its own payload (arguments count twice, in SUBMIT and
//  TASK; a result twice, in both RESULTs). ZMTP framing included, TCP/IP
//  headers not. Computed, not measured: the encoder is the broker's.
static void s_wire_figures(int batch)
{
    cf_proto_enc_t *enc = cf_proto_enc_new();
    if (!enc)
        s_die("encoder");
    static const char *const names[] = { "SUBMIT", "TASK", "RESULT", "STARTED" };
    static const cf_msg_type_t types[] = { CF_MSG_SUBMIT, CF_MSG_TASK, CF_MSG_RESULT,
                                           CF_MSG_STARTED };
    uint64_t broker_id = 0x9e3779b97f4a7c15ULL;    //  broker ids start at random
    for (int t = 0; t < 4; t++) {
        cf_proto_enc_begin(enc, types[t]);
        for (int k = 0; k < batch; k++) {
            uint64_t client_id = 1000000 + (uint64_t)k;
            cf_err_t rc;
            if (types[t] == CF_MSG_SUBMIT)
                rc = cf_proto_enc_task(enc, client_id, "noop", 4, "\x90", 1, 0, 0, 0);
            else if (types[t] == CF_MSG_TASK)
                rc = cf_proto_enc_task(enc, broker_id + (uint64_t)k, "noop", 4, "\x90", 1, 0, 0, 0);
            else if (types[t] == CF_MSG_RESULT)
                rc = cf_proto_enc_result_ok(enc, broker_id + (uint64_t)k, "\xc0", 1);
            else
                rc = cf_proto_enc_id(enc, client_id);
            if (rc != CF_OK)
                s_die("encoding");
        }
        size_t sizes[] = { 4, strlen(names[t]), cf_proto_enc_size(enc) };
        s_record("B/task", (double)s_zmtp_bytes(sizes, 3) / batch, "wire.b%d.%s_bytes", batch,
                 names[t]);
    }
    cf_proto_enc_destroy(&enc);
}

//  A broker at its file-descriptor limit: 10 workers and a client within
//  it, then `extra` more connections than it can accept. libzmq's I/O
//  thread retries the accept at once each time round (the pending
//  connection keeps its listener readable): what that costs the broker,
//  idle and per task, against the same broker below its limit.
static void s_fdlimit_round(const char *bin, int extra, int64_t tasks, int seconds)
{
    s_broker_fd_limit = 64;
    bench_broker_t broker;
    s_broker_start(bin, &broker);
    s_broker_fd_limit = 0;
    s_rig_t r;
    s_rig_init(&r, &broker, 16 + extra);
    s_add_workers(&r, 10);
    s_add_clients(&r, 1);
    s_wait_stat(&r, "workers", 10);
    for (int over = 0; over < 2; over++) {
        const char *when = over ? "over" : "below";
        s_drive(&r, 20000, tasks / 10 > 1000 ? tasks / 10 : 1000);
        s_record("us/task", s_drive(&r, 20000, tasks), "fdlimit.%s.broker_cpu", when);
        int64_t cpu0 = s_cpu_us(broker.pid), t0 = s_now_ms();
        while (s_now_ms() < t0 + seconds * 1000)
            s_pump(&r, 50);
        s_record("ms/s", (double)(s_cpu_us(broker.pid) - cpu0) / (double)(s_now_ms() - t0),
                 "fdlimit.%s.idle_broker_cpu", when);
        if (over)
            break;
        //  Connections it cannot take, kept out of the pump (they never
        //  speak); it reports them (cf_broker_state_monitor_read).
        for (int i = 0; i < extra; i++) {
            void *sock = s_dealer(&r, broker.workers);
            r.peers[r.count + i].sock = sock;
        }
        int64_t until = s_now_ms() + 1000;
        while (s_now_ms() < until)
            s_pump(&r, 50);
    }
    for (int i = 0; i < extra; i++) {
        int linger = 0;
        zmq_setsockopt(r.peers[r.count + i].sock, ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(r.peers[r.count + i].sock);
    }
    s_rig_destroy(&r);
    bench_broker_stop(&broker);
}

static int s_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void s_raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int main(int argc, char **argv)
{
    const char *bin = getenv("CF_BROKER_BIN");
    int64_t tasks = 200000, window = 20000;
    int64_t client_window = 0;    //  --client-window N: with --peers, each client's own
    int rounds = 3, idle_seconds = 5;
    bool quick = false;
    const char *only = NULL;
    int one_config[2] = { 0, 0 };    //  --peers W,C: that configuration alone
    int64_t one_depth = 0;           //  --depth N: that queue alone
    int fd_seconds = 2;              //  fdlimit: idle seconds measured each side
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--broker") && i + 1 < argc)
            bin = argv[++i];
        else if (!strcmp(argv[i], "--tasks") && i + 1 < argc)
            tasks = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--window") && i + 1 < argc)
            window = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else if (!strcmp(argv[i], "--peers") && i + 1 < argc) {
            if (sscanf(argv[++i], "%d,%d", &one_config[0], &one_config[1]) != 2)
                one_config[0] = 0;
        }
        else if (!strcmp(argv[i], "--fdlimit-seconds") && i + 1 < argc)
            fd_seconds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--depth") && i + 1 < argc)
            one_depth = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--credit") && i + 1 < argc)
            s_credit = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--client-window") && i + 1 < argc)
            client_window = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--cf1-workers"))
            s_cf1_workers = true;
        else if (!strcmp(argv[i], "--quick"))
            quick = true;
        else {
            fprintf(stderr,
                    "usage: scale_bench --broker PATH [--only peers|queue|idle|wire|fdlimit] "
                    "[--peers W,C] [--depth N] [--credit N] [--cf1-workers] [--fdlimit-seconds N] "
                    "[--tasks N] [--window N] [--client-window N] "
                    "[--rounds R] [--quick]\n");
            return 2;
        }
    }
    if (!bin || s_credit <= 0 || tasks <= 0 || window <= 0 || client_window < 0 || rounds <= 0
        || rounds > S_MAX_ROUND) {
        fprintf(stderr, "scale_bench: give --broker PATH (or CF_BROKER_BIN)\n");
        return 2;
    }
    s_raise_fd_limit();
    static const int peer_configs[][2] = { { 1, 1 },    { 10, 1 },    { 100, 1 },   { 1000, 1 },
                                           { 100, 10 }, { 100, 100 }, { 1000, 100 } };
    static const int64_t depths[] = { 1000, 10000, 100000, 1000000 };
    //  The clients axis again with every client keeping its own window of
    //  cf_map's default through a broker (1,024), as real clients do.
    static const int own_clients[] = { 1, 10, 100 };
    int64_t own_window = 1024;
    int npeer = 7, nown = 3, ndepth = 4, peers = 1000;
    if (quick) {
        tasks = 2000;
        window = 2000;
        rounds = 1;
        idle_seconds = 1;
        npeer = 2;
        nown = 1;
        own_window = 1000;
        ndepth = 2;
        peers = 20;
    }
    if (!only || !strcmp(only, "wire")) {
        s_wire_figures(1);
        s_wire_figures(64);
    }
    for (int round = 0; round < rounds; round++) {
        if (s_verbose_rounds)
            fprintf(stderr, "round %d\n", round + 1);
        if (one_config[0] > 0 && one_config[1] > 0)
            s_peers_round(bin, one_config[0], one_config[1], window, client_window, tasks);
        if ((!only || !strcmp(only, "peers")) && !one_config[0]) {
            for (int i = 0; i < npeer; i++)
                s_peers_round(bin, peer_configs[i][0], peer_configs[i][1], window, 0, tasks);
            for (int i = 0; i < nown; i++)
                s_peers_round(bin, 100, own_clients[i], window, own_window, tasks);
        }
        if (one_depth > 0)
            s_queue_round(bin, one_depth, tasks);
        if ((!only || !strcmp(only, "queue")) && !one_depth)
            for (int i = 0; i < ndepth; i++)
                s_queue_round(bin, depths[i], tasks);
        if (!only || !strcmp(only, "idle"))
            s_idle_round(bin, peers, idle_seconds);
        if (!only || !strcmp(only, "fdlimit"))
            s_fdlimit_round(bin, quick ? 60 : 200, tasks, quick ? 1 : fd_seconds);
    }
    for (int i = 0; i < s_nfigs; i++) {
        s_fig_t *f = &s_figs[i];
        qsort(f->v, (size_t)f->n, sizeof f->v[0], s_cmp);
        printf("scale.%s %.3f min %.3f max %.3f %s\n", f->name, f->v[f->n / 2], f->v[0],
               f->v[f->n - 1], f->unit);
    }
    return 0;
}

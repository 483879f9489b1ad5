//  routing_bench: what routing by function costs a cf-broker (issue 10).
//  One process drives a real cf-broker at raw-protocol speed: a client
//  socket keeps a window of tasks submitted, W worker sockets each answer
//  every TASK item at once. The tasks use F distinct function names in
//  turn. Only the broker's CPU time is measured (from /proc/PID/stat), per
//  task, so the driver's own cost does not count.
//
//  Two layouts of who serves what:
//    all     every worker announces every function (one class of worker;
//            the common case, where a pick is the first lane)
//    split   worker i serves function i mod F (W >= F), or the functions f
//            with f mod W = i (W < F): each function has its own workers,
//            so most lanes a worker meets are not its own
//    legacy  workers announce no list (cf/1: they serve everything), the
//            figure before routing existed
//
//  --only LAYOUT runs one layout: "legacy" also runs against a broker
//  older than routing (its READY has no list), the figure before.
//
//  Output: one line per configuration, "routing.LAYOUT.fF.wW us_per_task
//  VALUE", the median of --rounds rounds, then its min and max. --quick
//  runs tiny sizes (the bench-smoke test).

#include "bench_broker.h"
#include "cf_proto.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#define S_MAX_WORKERS   256
#define S_MAX_FUNCTIONS 128
#define S_CREDIT        64       //  per worker socket
#define S_BATCH         500      //  tasks per SUBMIT
#define S_WINDOW        20000    //  tasks submitted and not answered

typedef enum { S_ALL, S_SPLIT, S_LEGACY } s_layout_t;
static const char *const s_layout_names[] = { "all", "split", "legacy" };

static void s_die(const char *what)
{
    fprintf(stderr, "routing_bench: %s: %s\n", what, errno ? strerror(errno) : "failed");
    exit(1);
}

//  utime + stime of pid in µs.
static int64_t s_cpu_us(pid_t pid)
{
    int64_t us = bench_broker_cpu_us(pid);
    if (us < 0)
        s_die("cannot read the broker's CPU clock");
    return us;
}

static char s_names[S_MAX_FUNCTIONS][32];

//  The functions worker i serves in layout (NULL: every one, no list).
static size_t s_worker_functions(s_layout_t layout, int i, int functions, int workers,
                                 const char **out)
{
    size_t n = 0;
    for (int f = 0; f < functions; f++) {
        bool mine = layout == S_ALL
                    || (workers >= functions ? i % functions == f : f % workers == i);
        if (mine)
            out[n++] = s_names[f];
    }
    return n;
}

//  One round: tasks through a fresh broker; returns broker CPU µs per task.
static double s_round(const char *bin, s_layout_t layout, int functions, int workers, int tasks)
{
    bench_broker_t broker;
    if (!bench_broker_start(bin, NULL, &broker))
        s_die("the broker did not say ready");
    void *ctx = zmq_ctx_new();
    cf_proto_enc_t *enc = cf_proto_enc_new();
    void *client = zmq_socket(ctx, ZMQ_DEALER);
    void *socks[S_MAX_WORKERS];
    if (!ctx || !enc || !client || cf_proto_socket_setup(client, false) != CF_OK
        || zmq_connect(client, broker.clients) != 0)
        s_die("client socket");
    for (int i = 0; i < workers; i++) {
        socks[i] = zmq_socket(ctx, ZMQ_DEALER);
        if (!socks[i] || cf_proto_socket_setup(socks[i], false) != CF_OK
            || zmq_connect(socks[i], broker.workers) != 0)
            s_die("worker socket");
        const char *list[S_MAX_FUNCTIONS];
        size_t n = s_worker_functions(layout, i, functions, workers, list);
        cf_proto_enc_ready(enc, S_CREDIT, S_CREDIT, "bench", i + 1, 0,
                           layout == S_LEGACY ? NULL : list, n);
        if (cf_proto_enc_send(enc, socks[i], NULL, 0) != CF_OK)
            s_die("READY");
    }
    zmq_pollitem_t *items = calloc((size_t)workers + 1, sizeof *items);
    if (!items)
        s_die("memory");
    for (int i = 0; i < workers; i++)
        items[i] = (zmq_pollitem_t){ socks[i], 0, ZMQ_POLLIN, 0 };
    items[workers] = (zmq_pollitem_t){ client, 0, ZMQ_POLLIN, 0 };

    int64_t cpu0 = s_cpu_us(broker.pid);
    int submitted = 0, answered = 0;
    uint64_t next_id = 1;
    while (answered < tasks) {
        while (submitted < tasks && submitted - answered < S_WINDOW) {
            cf_proto_enc_begin(enc, CF_MSG_SUBMIT);
            for (int k = 0; k < S_BATCH && submitted < tasks; k++, submitted++) {
                const char *fn = s_names[submitted % functions];
                if (cf_proto_enc_task(enc, next_id++, fn, strlen(fn), "\x90", 1, 0, 0, 0) != CF_OK)
                    s_die("SUBMIT item");
            }
            if (cf_proto_enc_send(enc, client, NULL, 0) != CF_OK)
                s_die("SUBMIT");
        }
        if (zmq_poll(items, workers + 1, 5000) <= 0)
            s_die("no progress for 5 s");
        for (int i = 0; i <= workers; i++) {
            if (!(items[i].revents & ZMQ_POLLIN))
                continue;
            cf_proto_msg_t *msg;
            while (cf_proto_recv(items[i].socket, false, NULL, &msg) == CF_OK) {
                if (i == workers && msg->type == CF_MSG_RESULT)
                    answered += (int)msg->count;
                if (i < workers && msg->type == CF_MSG_TASK) {
                    cf_proto_enc_begin(enc, CF_MSG_RESULT);
                    for (size_t k = 0; k < msg->count; k++)
                        cf_proto_enc_result_ok(enc, msg->tasks[k].id, "\xc0", 1);
                    if (cf_proto_enc_send(enc, socks[i], NULL, 0) != CF_OK)
                        s_die("RESULT");
                }
                cf_proto_msg_destroy(&msg);
            }
        }
    }
    double per_task = (double)(s_cpu_us(broker.pid) - cpu0) / tasks;
    free(items);
    for (int i = 0; i < workers; i++) {
        int linger = 0;
        zmq_setsockopt(socks[i], ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(socks[i]);
    }
    int linger = 0;
    zmq_setsockopt(client, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(client);
    cf_proto_enc_destroy(&enc);
    zmq_ctx_term(ctx);
    bench_broker_stop(&broker);
    return per_task;
}

static int s_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    const char *bin = getenv("CF_BROKER_BIN");
    int tasks = 200000, rounds = 5;
    bool quick = false;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--broker") && i + 1 < argc)
            bin = argv[++i];
        else if (!strcmp(argv[i], "--tasks") && i + 1 < argc)
            tasks = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick"))
            quick = true;
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else {
            fprintf(stderr,
                    "usage: routing_bench --broker PATH [--tasks N] [--rounds R] [--quick]\n");
            return 2;
        }
    }
    if (!bin || tasks <= 0 || rounds <= 0 || rounds > 64) {
        fprintf(stderr, "routing_bench: give --broker PATH (or CF_BROKER_BIN)\n");
        return 2;
    }
    if (quick) {
        tasks = 2000;
        rounds = 1;
    }
    for (int f = 0; f < S_MAX_FUNCTIONS; f++)
        snprintf(s_names[f], sizeof s_names[f], "fn_%03d", f);
    static const int function_counts[] = { 1, 10, 100 };
    static const int worker_counts[] = { 1, 10, 50, 200 };
    static const s_layout_t layouts[] = { S_LEGACY, S_ALL, S_SPLIT };
    //  Configurations interleaved round by round, so drift on a shared
    //  machine spreads over all of them.
    enum { CONFIGS = 3 * 3 * 4 };
    double results[CONFIGS][64];
    bool used[CONFIGS] = { false };
    for (int r = 0; r < rounds; r++) {
        int c = 0;
        for (size_t l = 0; l < 3; l++)
            for (size_t fi = 0; fi < 3; fi++)
                for (size_t wi = 0; wi < 4; wi++, c++) {
                    int fns = function_counts[fi], ws = worker_counts[wi];
                    if ((layouts[l] == S_SPLIT && (fns == 1 || ws == 1)) || (quick && ws > 10)
                        || (only && strcmp(only, s_layout_names[layouts[l]]) != 0))
                        continue;
                    results[c][r] = s_round(bin, layouts[l], fns, ws, tasks);
                    used[c] = true;
                }
    }
    int c = 0;
    for (size_t l = 0; l < 3; l++)
        for (size_t fi = 0; fi < 3; fi++)
            for (size_t wi = 0; wi < 4; wi++, c++) {
                if (!used[c])
                    continue;
                qsort(results[c], (size_t)rounds, sizeof results[c][0], s_cmp);
                printf("routing.%s.f%d.w%d us_per_task %.3f min %.3f max %.3f\n",
                       s_layout_names[layouts[l]], function_counts[fi], worker_counts[wi],
                       results[c][rounds / 2], results[c][0], results[c][rounds - 1]);
            }
    return 0;
}

//  cf_bench: the measuring instrument of cfutures. Runs the benchmark's
//  workloads on each executor kind and prints one machine-readable line per
//  figure, `name value unit`, then a human table. bench/run.sh sets these
//  lines beside py_futures.py (concurrent.futures) and zmq_relay (raw
//  libzmq) and computes the ratios the targets talk about.
//
//  Workloads (py_futures.py does the same work in Python):
//    1. no-op throughput: N tasks returning x*2 via submit + as_completed,
//       and via map with chunksize 1 and 1000          KIND.noop.*   tasks/s
//    2. round-trip latency: one task submitted and awaited, R times in a
//       row                                            KIND.latency.p50/p99 us
//       and again with waiters never spinning   KIND.latency_nospin.p50/p99 us
//    3. CPU scaling: trial-division prime checks, sequential in this thread
//       vs 2 workers                                   KIND.prime.*
//    4. I/O fan-out: 200 tasks sleeping 10 ms on 20 threads  threads.io.wall ms
//    5. memory: a cf-broker's RSS per queued task with 1M queued and no
//       worker (broker.mem.*), and this client's peak RSS while mapping 10M
//       inputs with a bounded window (client.map.*)
//    6. payloads (remote): arguments of 1 KiB, 64 KiB and 1 MiB echoed back
//       as results, map with chunksize 1, the same windows and counts as
//       zmq_relay's payload figures    remote.payload.SIZE.throughput MiB/s
//    7. under load (remote): the round trip of one task at a time while
//       another client process keeps 1,000 tasks in flight through the same
//       broker and worker                       remote.load.p50/p99 us
//       and while it keeps 100 tasks of 1 ms in flight (a batch job of
//       real tasks beside an interactive client)
//                                               remote.load_1ms.p50/p99 us
//  KIND is threads, processes or remote (a cf-broker and a cf-worker this
//  program starts on loopback, reading their ready lines).
//
//  Each group runs in a child process (this program re-executed with
//  --child GROUP): a fresh process per group keeps peak-RSS figures clean,
//  and a group that hangs or crashes on an unfinished library is killed
//  after its deadline and reported, without taking the other groups down.
//  The parent checks that every expected figure came back and exits 1 when
//  one is missing: `--quick` (tiny sizes) is the bench-smoke test, which
//  asserts that the bench runs and reports, never how fast.
//
//  cf-broker, cf-worker and the task library come from --broker, --worker
//  and --tasks-lib, or CF_BROKER_BIN, CF_WORKER_BIN and CF_BENCH_TASKS_LIB.
//  --samples DIR writes every latency measurement's samples (µs, sorted) to
//  DIR/NAME.txt for bench/run.sh's latency CDF plots. --load ENDPOINT is the
//  loading client of workload 7 (this program re-executed).

#define _GNU_SOURCE    //  pipe2

#include "bench_tasks.h"

#include "cfutures.h"
#include "cf_proto.h"    //  only to ask a cf-broker for its STATS

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

// ---------------------------------------------------------------------------
//  Options

//  18-digit primes: about 0.2 s each here, so the sequential run of the 16
//  takes a few seconds (py_futures.py uses 15-digit primes: the same few
//  seconds in CPython). An even count keeps 2 workers evenly loaded.
static const uint64_t s_primes[] = {
    100000000000000003ULL, 100000000000000013ULL, 100000000000000019ULL, 100000000000000021ULL,
    100000000000000049ULL, 100000000000000081ULL, 100000000000000099ULL, 100000000000000141ULL,
    100000000000000181ULL, 100000000000000337ULL, 100000000000000339ULL, 100000000000000369ULL,
    100000000000000379ULL, 100000000000000423ULL, 100000000000000519ULL, 100000000000000543ULL,
};
static const uint64_t s_quick_primes[] = { 1000003, 1000033, 1000037, 1000039 };

enum {
    GROUP_THREADS = 1 << 0,
    GROUP_PROCESSES = 1 << 1,
    GROUP_REMOTE = 1 << 2,
    GROUP_BROKER_MEM = 1 << 3,
    GROUP_MAP_MEM = 1 << 4,
};

static const struct {
    const char *name;
    unsigned bit;
    int timeout_s;    //  the whole group, full size
} s_groups[] = {
    { "threads", GROUP_THREADS, 180 }, { "processes", GROUP_PROCESSES, 180 },
    { "remote", GROUP_REMOTE, 180 },   { "broker-mem", GROUP_BROKER_MEM, 240 },
    { "map-mem", GROUP_MAP_MEM, 240 },
};
#define GROUP_COUNT (sizeof s_groups / sizeof s_groups[0])

typedef struct {
    bool quick;
    unsigned groups;    //  GROUP_* to run
    long tasks;         //  no-op tasks (workload 1)
    //  No-op tasks sent one per message on processes and remote (submit,
    //  map chunksize 1): fewer keeps a slow back end within the time budget.
    long message_tasks;
    long window;      //  map's window (0: the library's default)
    long rounds;      //  round trips (workload 2)
    long io_tasks;    //  workload 4
    int io_threads;
    int io_ms;
    long queued;    //  tasks queued on the broker (workload 5)
    //  --max-client-bookkeeping: fail when the client keeps more bytes per
    //  outstanding task than this (0: report only). A memory bound, not a
    //  speed: CTest's client_memory_bound checks issue 9's 256.
    long max_client_bookkeeping;
    long map_inputs;    //  inputs mapped (workload 5)
    cf_kind_t map_kind;
    long map_chunksize;
    const uint64_t *primes;
    size_t prime_count;
    int timeout_ms;    //  bound on any single wait inside a group
    const char *broker_bin;
    const char *worker_bin;
    const char *tasks_lib;
    const char *child;          //  --child GROUP: run that group here
    const char *samples_dir;    //  --samples DIR: latency samples go there
    const char *load;           //  --load ENDPOINT: be workload 7's loader
    long load_ms;               //  --load-ms N: its tasks sleep N ms (0: no-op)
    const char *rtt;            //  --rtt ENDPOINT: round trips only (profile)
} bench_opts_t;

// ---------------------------------------------------------------------------
//  Figures

#define FIGURES_MAX 128

typedef struct {
    char name[64];
    double value;
    char unit[16];
} figure_t;

static figure_t s_figures[FIGURES_MAX];
static size_t s_figure_count;
static bool s_failed;

static void s_record(const char *name, double value, const char *unit)
{
    if (s_figure_count == FIGURES_MAX)
        return;
    figure_t *f = &s_figures[s_figure_count++];
    snprintf(f->name, sizeof f->name, "%s", name);
    f->value = value;
    snprintf(f->unit, sizeof f->unit, "%s", unit);
}

//  Prints one figure line and keeps it for the table.
static void s_emit(const char *name, double value, const char *unit)
{
    if (fabs(value) >= 1e5)
        printf("%s %.0f %s\n", name, value, unit);
    else
        printf("%s %.6g %s\n", name, value, unit);
    fflush(stdout);
    s_record(name, value, unit);
}

static void s_emitf(double value, const char *unit, const char *fmt, ...) CF_PRINTF(3, 4);
static void s_emitf(double value, const char *unit, const char *fmt, ...)
{
    char name[64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    s_emit(name, value, unit);
}

static const figure_t *s_figure(const char *name)
{
    for (size_t i = 0; i < s_figure_count; i++) {
        if (!strcmp(s_figures[i].name, name))
            return &s_figures[i];
    }
    return NULL;
}

//  A workload that could not run says why on stdout (a comment line run.sh
//  keeps) and marks the run failed.
static bool s_fail(const char *what, ...) CF_PRINTF(1, 2);
static bool s_fail(const char *what, ...)
{
    va_list ap;
    va_start(ap, what);
    printf("# FAILED: ");
    vprintf(what, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    s_failed = true;
    return false;
}

// ---------------------------------------------------------------------------
//  Small tools

static double s_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void s_nap_ms(int ms)
{
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static int s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

//  The sample at quantile q of sorted samples (nearest rank, as py_futures).
static double s_quantile(const double *sorted, size_t count, double q)
{
    size_t i = (size_t)((double)count * q);
    return sorted[i < count ? i : count - 1];
}

//  A "Vm...:" field of /proc/<pid>/status in KiB, or -1.
static long s_status_kib(pid_t pid, const char *field)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/status", (long)pid);
    FILE *file = fopen(path, "r");
    if (!file)
        return -1;
    char line[256];
    long kib = -1;
    size_t len = strlen(field);
    while (fgets(line, sizeof line, file)) {
        if (!strncmp(line, field, len)) {
            kib = strtol(line + len, NULL, 10);
            break;
        }
    }
    fclose(file);
    return kib;
}

//  Bytes of msgpack for the signed integer x (as msgpack-c packs an int64).
static size_t s_mp_int_size(int64_t x)
{
    if (x >= -32 && x <= 127)
        return 1;
    if (x >= 0) {
        if (x <= 0xff)
            return 2;
        if (x <= 0xffff)
            return 3;
        if (x <= 0xffffffffLL)
            return 5;
        return 9;
    }
    if (x >= -128)
        return 2;
    if (x >= -32768)
        return 3;
    if (x >= -2147483648LL)
        return 5;
    return 9;
}

// ---------------------------------------------------------------------------
//  Daemons: cf-broker and cf-worker on loopback

#define LINE_MAX_BYTES 1024

typedef struct {
    pid_t pid;
    int out_fd;                  //  the daemon's stdout
    char buf[LINE_MAX_BYTES];    //  unread stdout bytes
    size_t have;
    char line[LINE_MAX_BYTES];    //  the ready line
} daemon_t;

//  Starts argv[0] with stdout on a pipe (stderr inherited: daemons only
//  write there when something is wrong) and waits up to timeout_ms for a
//  line starting with "ready". The daemon dies with this process.
static bool s_daemon_start(daemon_t *d, char *const argv[], int timeout_ms)
{
    memset(d, 0, sizeof *d);
    d->pid = -1;
    d->out_fd = -1;
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0)
        return s_fail("pipe: %s", strerror(errno));
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return s_fail("fork: %s", strerror(errno));
    }
    if (pid == 0) {
        //  Only async-signal-safe calls between fork and exec: the parent
        //  may run threads.
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        dup2(fds[1], STDOUT_FILENO);
        execv(argv[0], argv);
        _exit(127);
    }
    close(fds[1]);
    d->pid = pid;
    d->out_fd = fds[0];

    double deadline = s_now_s() + timeout_ms / 1000.0;
    while (true) {
        char *nl = memchr(d->buf, '\n', d->have);
        while (nl) {
            size_t len = (size_t)(nl - d->buf);
            bool ready = len >= 5 && !memcmp(d->buf, "ready", 5);
            if (ready) {
                memcpy(d->line, d->buf, len);
                d->line[len] = '\0';
            }
            d->have -= len + 1;
            memmove(d->buf, nl + 1, d->have);
            if (ready)
                return true;
            nl = memchr(d->buf, '\n', d->have);
        }
        if (d->have == sizeof d->buf)
            d->have = 0;    //  an absurd line: drop it
        int left_ms = (int)((deadline - s_now_s()) * 1000);
        if (left_ms <= 0)
            return s_fail("%s printed no ready line within %d ms", argv[0], timeout_ms);
        struct pollfd item = { .fd = d->out_fd, .events = POLLIN };
        int rc = poll(&item, 1, left_ms);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            continue;
        ssize_t n = read(d->out_fd, d->buf + d->have, sizeof d->buf - d->have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return s_fail("%s exited before its ready line", argv[0]);
        d->have += (size_t)n;
    }
}

//  The value of key=value in the daemon's ready line, copied to out.
static bool s_daemon_field(const daemon_t *d, const char *key, char *out, size_t size)
{
    size_t key_len = strlen(key);
    const char *p = d->line;
    while ((p = strstr(p, key))) {
        bool starts = p == d->line || p[-1] == ' ';
        if (starts && p[key_len] == '=') {
            const char *value = p + key_len + 1;
            size_t len = strcspn(value, " \t");
            if (len == 0 || len >= size)
                return false;
            memcpy(out, value, len);
            out[len] = '\0';
            return true;
        }
        p += key_len;
    }
    return false;
}

//  SIGTERM, up to 10 s to exit, then SIGKILL; reaps it.
static void s_daemon_stop(daemon_t *d)
{
    if (d->pid > 0) {
        kill(d->pid, SIGTERM);
        bool gone = false;
        for (int i = 0; i < 1000 && !gone; i++) {
            pid_t rc = waitpid(d->pid, NULL, WNOHANG);
            gone = rc == d->pid || (rc < 0 && errno == ECHILD);
            if (!gone)
                s_nap_ms(10);
        }
        if (!gone) {
            printf("# %ld did not stop within 10 s of SIGTERM: killed\n", (long)d->pid);
            kill(d->pid, SIGKILL);
            waitpid(d->pid, NULL, 0);
        }
        d->pid = -1;
    }
    if (d->out_fd >= 0)
        close(d->out_fd);
    d->out_fd = -1;
}

static bool s_start_broker(const bench_opts_t *opts, daemon_t *broker, const char *max_queued,
                           char *clients, char *workers, size_t size)
{
    char *argv[] = { (char *)opts->broker_bin, "--clients",
                     "tcp://127.0.0.1:*",      "--workers",
                     "tcp://127.0.0.1:*",      max_queued ? "--max-queued" : NULL,
                     (char *)max_queued,       NULL };
    if (!s_daemon_start(broker, argv, 30000))
        return false;
    if (!s_daemon_field(broker, "clients", clients, size)
        || !s_daemon_field(broker, "workers", workers, size))
        return s_fail("unexpected broker ready line: '%s'", broker->line);
    return true;
}

//  A cf-broker's counter, asked with a STATS request on its client
//  endpoint (the public API has no call for a remote broker's counters).
static bool s_broker_stat(const char *clients, const char *name, int timeout_ms, uint64_t *value)
{
    bool found = false;
    void *ctx = zmq_ctx_new();
    void *socket = ctx ? zmq_socket(ctx, ZMQ_DEALER) : NULL;
    cf_proto_enc_t *enc = cf_proto_enc_new();
    if (socket && enc && cf_proto_socket_setup(socket, false) == CF_OK
        && zmq_connect(socket, clients) == 0) {
        cf_proto_enc_begin(enc, CF_MSG_STATS);
        double deadline = s_now_s() + timeout_ms / 1000.0;
        if (cf_proto_enc_send(enc, socket, NULL, 0) == CF_OK) {
            while (true) {
                int left_ms = (int)((deadline - s_now_s()) * 1000);
                if (left_ms <= 0)
                    break;
                zmq_pollitem_t item = { .socket = socket, .events = ZMQ_POLLIN };
                int rc = zmq_poll(&item, 1, left_ms);
                if (rc < 0 && errno == EINTR)
                    continue;
                if (rc <= 0)
                    break;
                cf_proto_msg_t *msg = NULL;
                if (cf_proto_recv(socket, false, NULL, &msg) != CF_OK)
                    continue;
                //  Heartbeats may come first; only the STATS reply counts.
                bool is_stats = msg->type == CF_MSG_STATS;
                for (size_t i = 0; is_stats && i < msg->count; i++) {
                    const cf_proto_stat_t *stat = &msg->stats[i];
                    if (stat->name.len == strlen(name)
                        && !memcmp(stat->name.ptr, name, stat->name.len)) {
                        *value = stat->value;
                        found = true;
                    }
                }
                cf_proto_msg_destroy(&msg);
                if (is_stats)
                    break;
            }
        }
    }
    cf_proto_enc_destroy(&enc);
    if (socket)
        zmq_close(socket);
    if (ctx)
        zmq_ctx_term(ctx);
    return found;
}

// ---------------------------------------------------------------------------
//  Workload 1: no-op throughput

typedef struct {
    long count;
} range_source_t;

//  map's source: input i is the single int argument i.
static int s_range_source(void *state, size_t index, cf_args_t *args)
{
    range_source_t *range = state;
    if (index >= (size_t)range->count)
        return 0;
    return cf_args_add_int(args, (int64_t)index) == CF_OK ? 1 : -1;
}

//  How many no-op tasks to run on kind with chunksize.
static long s_noop_count(const char *kind, const bench_opts_t *opts, size_t chunksize)
{
    return chunksize <= 1 && strcmp(kind, "threads") ? opts->message_tasks : opts->tasks;
}

static bool s_noop_submit(cf_executor_t *ex, const char *kind, const bench_opts_t *opts)
{
    long n = s_noop_count(kind, opts, 1);
    cf_future_t **futures = calloc((size_t)n, sizeof *futures);
    if (!futures)
        return s_fail("%s.noop.submit: out of memory", kind);
    bool ok = true;
    int64_t sum = 0;
    double start = s_now_s();
    for (long i = 0; i < n && ok; i++) {
        futures[i] = cf_submit(ex, "bench_double", "L", (int64_t)i);
        if (!futures[i])
            ok = s_fail("%s.noop.submit: cf_submit: %s", kind, cf_last_error());
    }
    cf_as_completed_t *it = ok ? cf_as_completed_new(futures, (size_t)n, opts->timeout_ms) : NULL;
    if (ok && !it)
        ok = s_fail("%s.noop.submit: cf_as_completed_new: %s", kind, cf_last_error());
    long yielded = 0;
    while (ok) {
        cf_future_t *f = NULL;
        cf_err_t rc = cf_as_completed_next(it, &f);
        if (rc == CF_ESTOP)
            break;
        int64_t value = 0;
        if (rc == CF_OK)
            rc = cf_future_int(f, 0, &value);
        if (rc != CF_OK)
            ok = s_fail("%s.noop.submit: result %ld: %s", kind, yielded, cf_strerror(rc));
        sum += value;
        yielded++;
    }
    double elapsed = s_now_s() - start;
    cf_as_completed_destroy(&it);
    for (long i = 0; i < n; i++)
        cf_future_release(&futures[i]);
    free(futures);
    if (ok && (yielded != n || sum != (int64_t)n * (n - 1)))
        ok = s_fail("%s.noop.submit: wrong results (%ld yielded)", kind, yielded);
    if (ok)
        s_emitf((double)n / elapsed, "tasks/s", "%s.noop.submit", kind);
    return ok;
}

static bool s_noop_map(cf_executor_t *ex, const char *kind, const bench_opts_t *opts,
                       size_t chunksize)
{
    long n = s_noop_count(kind, opts, chunksize);
    range_source_t range = { .count = n };
    cf_map_opts_t map_opts = { .chunksize = chunksize,
                               .window = (size_t)opts->window,
                               .timeout_ms = opts->timeout_ms };
    double start = s_now_s();
    cf_map_t *map = cf_map_new(ex, "bench_double", s_range_source, &range, &map_opts);
    if (!map)
        return s_fail("%s.noop.map%zu: cf_map_new: %s", kind, chunksize, cf_last_error());
    bool ok = true;
    int64_t sum = 0;
    long count = 0;
    while (ok) {
        const cf_value_t *value = NULL;
        cf_err_t rc = cf_map_next(map, &value);
        if (rc == CF_ESTOP)
            break;
        int64_t x = 0;
        if (rc == CF_OK)
            rc = cf_value_get_int(value, &x);
        if (rc != CF_OK)
            ok = s_fail("%s.noop.map%zu: input %zu: %s", kind, chunksize, cf_map_index(map),
                        cf_strerror(rc));
        else if (x != 2 * (int64_t)count)
            ok = s_fail("%s.noop.map%zu: input %ld out of order", kind, chunksize, count);
        sum += x;
        count++;
    }
    double elapsed = s_now_s() - start;
    cf_map_destroy(&map);
    if (ok && count != n)
        ok = s_fail("%s.noop.map%zu: %ld results for %ld inputs", kind, chunksize, count, n);
    if (ok)
        s_emitf((double)n / elapsed, "tasks/s", "%s.noop.map%zu", kind, chunksize);
    return ok;
}

// ---------------------------------------------------------------------------
//  Workload 2: round-trip latency

//  With --samples DIR: the sorted samples to DIR/KIND.NAME.txt.
static void s_write_samples(const bench_opts_t *opts, const char *kind, const char *name,
                            const double *sorted, size_t count)
{
    if (!opts->samples_dir)
        return;
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.%s.txt", opts->samples_dir, kind, name);
    FILE *file = fopen(path, "w");
    if (!file) {
        printf("# cannot write %s: %s\n", path, strerror(errno));
        return;
    }
    for (size_t i = 0; i < count; i++)
        fprintf(file, "%.2f\n", sorted[i]);
    fclose(file);
}

//  name: "latency", or "latency_nospin" run with cf_set_wait_spin(0), so
//  that the effect of the waiter's spin is measured in the same run.
static bool s_latency(cf_executor_t *ex, const char *kind, const char *name,
                      const bench_opts_t *opts)
{
    long rounds = opts->rounds;
    double *samples = calloc((size_t)rounds, sizeof *samples);
    if (!samples)
        return s_fail("%s.latency: out of memory", kind);
    bool ok = true;
    long warmup = rounds < 100 ? rounds : 100;    //  every worker busy once
    for (long i = -warmup; i < rounds && ok; i++) {
        double start = s_now_s();
        cf_future_t *f = cf_submit(ex, "bench_double", "L", (int64_t)i);
        int64_t value = 0;
        cf_err_t rc = f ? cf_future_int(f, opts->timeout_ms, &value) : cf_last_err();
        double elapsed = s_now_s() - start;
        cf_future_release(&f);
        if (rc != CF_OK || value != 2 * i)
            ok = s_fail("%s.latency: round %ld: %s", kind, i, cf_strerror(rc));
        else if (i >= 0)
            samples[i] = elapsed * 1e6;
    }
    if (ok) {
        qsort(samples, (size_t)rounds, sizeof *samples, s_cmp_double);
        s_emitf(s_quantile(samples, (size_t)rounds, 0.50), "us", "%s.%s.p50", kind, name);
        s_emitf(s_quantile(samples, (size_t)rounds, 0.99), "us", "%s.%s.p99", kind, name);
        s_write_samples(opts, kind, name, samples, (size_t)rounds);
    }
    free(samples);
    return ok;
}

// ---------------------------------------------------------------------------
//  Workload 3: CPU scaling

static bool s_prime_scaling(cf_kind_t kind_id, const char *kind, const bench_opts_t *opts)
{
    size_t count = opts->prime_count;
    bool expected[sizeof s_primes / sizeof s_primes[0]];
    double start = s_now_s();
    for (size_t i = 0; i < count; i++)
        expected[i] = bench_is_prime_u64(opts->primes[i]);
    double sequential = s_now_s() - start;

    cf_executor_t *ex = cf_executor_new(kind_id, &(cf_options_t){ .max_workers = 2 });
    if (!ex)
        return s_fail("%s.prime: cf_executor_new: %s", kind, cf_last_error());
    bool ok = true;
    //  Workers up and warm before the clock starts, as in py_futures.
    for (int i = 0; i < 4 && ok; i++) {
        cf_future_t *f = cf_submit(ex, "bench_double", "i", i);
        if (!f || cf_future_wait(f, opts->timeout_ms) != CF_OK)
            ok = s_fail("%s.prime: warm-up failed", kind);
        cf_future_release(&f);
    }
    cf_future_t *futures[sizeof s_primes / sizeof s_primes[0]] = { NULL };
    start = s_now_s();
    for (size_t i = 0; i < count && ok; i++) {
        futures[i] = cf_submit(ex, "bench_is_prime", "U", opts->primes[i]);
        if (!futures[i])
            ok = s_fail("%s.prime: cf_submit: %s", kind, cf_last_error());
    }
    for (size_t i = 0; i < count && ok; i++) {
        bool prime = false;
        cf_err_t rc = cf_future_bool(futures[i], opts->timeout_ms, &prime);
        if (rc != CF_OK || prime != expected[i])
            ok = s_fail("%s.prime: check %zu: %s", kind, i, cf_strerror(rc));
    }
    double parallel = s_now_s() - start;
    for (size_t i = 0; i < count; i++)
        cf_future_release(&futures[i]);
    cf_executor_destroy(&ex);
    if (ok) {
        s_emitf(sequential, "s", "%s.prime.sequential", kind);
        s_emitf(parallel, "s", "%s.prime.parallel", kind);
        s_emitf(sequential / parallel, "x", "%s.prime.speedup", kind);
    }
    return ok;
}

// ---------------------------------------------------------------------------
//  Workload 4: I/O fan-out

static bool s_io_fanout(const bench_opts_t *opts)
{
    cf_executor_t *ex = cf_executor_new(CF_THREADS,
                                        &(cf_options_t){ .max_workers = opts->io_threads });
    if (!ex)
        return s_fail("threads.io: cf_executor_new: %s", cf_last_error());
    bool ok = true;
    size_t n = (size_t)opts->io_tasks;
    cf_future_t **futures = calloc(n, sizeof *futures);
    if (!futures)
        ok = s_fail("threads.io: out of memory");
    //  Every thread up before the clock starts, as in py_futures.
    for (int i = 0; i < opts->io_threads && ok; i++) {
        cf_future_t *f = cf_submit(ex, "bench_double", "i", i);
        if (!f || cf_future_wait(f, opts->timeout_ms) != CF_OK)
            ok = s_fail("threads.io: warm-up failed");
        cf_future_release(&f);
    }
    double start = s_now_s();
    for (size_t i = 0; i < n && ok; i++) {
        futures[i] = cf_submit(ex, "bench_sleep_ms", "i", opts->io_ms);
        if (!futures[i])
            ok = s_fail("threads.io: cf_submit: %s", cf_last_error());
    }
    size_t n_done = 0;
    if (ok
        && (cf_wait(futures, n, opts->timeout_ms, CF_ALL_COMPLETED, NULL, &n_done, NULL, NULL)
                != CF_OK
            || n_done != n))
        ok = s_fail("threads.io: cf_wait: %zu of %zu done", n_done, n);
    double wall = s_now_s() - start;
    for (size_t i = 0; futures && i < n; i++) {
        if (ok && cf_future_result(futures[i], 0, NULL) != CF_OK)
            ok = s_fail("threads.io: task %zu failed", i);
        cf_future_release(&futures[i]);
    }
    free(futures);
    cf_executor_destroy(&ex);
    if (ok)
        s_emit("threads.io.wall", wall * 1000.0, "ms");
    return ok;
}

// ---------------------------------------------------------------------------
//  Workload 6: payloads

typedef struct {
    long count;
    const uint8_t *bytes;
    size_t size;
} bytes_source_t;

//  map's source: every input is the one bytes argument.
static int s_bytes_source(void *state, size_t index, cf_args_t *args)
{
    bytes_source_t *src = state;
    if (index >= (size_t)src->count)
        return 0;
    return cf_args_add_bytes(args, src->bytes, src->size) == CF_OK ? 1 : -1;
}

//  Arguments of size bytes through bench_echo. The window (about 16 MiB in
//  flight, 4 to 1,000 tasks) and the count (256 MiB of arguments, 4 MiB
//  with --quick; 2 windows to 20,000 tasks) are zmq_relay's, so that both
//  move the same bytes the same way.
static bool s_payload(cf_executor_t *ex, const char *kind, size_t size, const char *label,
                      const bench_opts_t *opts)
{
    long window = (long)((16u << 20) / size);
    window = window > 1000 ? 1000 : window < 4 ? 4 : window;
    long tasks = (long)((opts->quick ? 4u << 20 : 256u << 20) / size);
    tasks = tasks > 20000 ? 20000 : tasks < 2 * window ? 2 * window : tasks;
    uint8_t *bytes = malloc(size);
    if (!bytes)
        return s_fail("%s.payload: out of memory", kind);
    for (size_t i = 0; i < size; i++)
        bytes[i] = (uint8_t)(i * 7 + 1);
    bytes_source_t src = { .count = tasks, .bytes = bytes, .size = size };
    cf_map_opts_t map_opts = { .chunksize = 1,
                               .window = (size_t)window,
                               .timeout_ms = opts->timeout_ms };
    double start = s_now_s();
    cf_map_t *map = cf_map_new(ex, "bench_echo", s_bytes_source, &src, &map_opts);
    bool ok = map || s_fail("%s.payload.%s: cf_map_new: %s", kind, label, cf_last_error());
    long count = 0;
    while (ok) {
        const cf_value_t *value = NULL;
        cf_err_t rc = cf_map_next(map, &value);
        if (rc == CF_ESTOP)
            break;
        size_t len = 0;
        const uint8_t *got = rc == CF_OK ? cf_value_bin(value, &len) : NULL;
        //  The same check as zmq_relay's client: length, first and last byte.
        if (!got || len != size || got[0] != bytes[0] || got[size - 1] != bytes[size - 1])
            ok = s_fail("%s.payload.%s: input %ld: %s", kind, label, count,
                        rc == CF_OK ? "wrong bytes" : cf_strerror(rc));
        count++;
    }
    double elapsed = s_now_s() - start;
    cf_map_destroy(&map);
    free(bytes);
    if (ok && count != tasks)
        ok = s_fail("%s.payload.%s: %ld results for %ld inputs", kind, label, count, tasks);
    if (ok)
        s_emitf((double)tasks * (double)size / elapsed / (1024.0 * 1024.0), "MiB/s",
                "%s.payload.%s.throughput", kind, label);
    return ok;
}

// ---------------------------------------------------------------------------
//  Workload 7: under load

//  map's source without end.
static int s_endless_source(void *state, size_t index, cf_args_t *args)
{
    (void)state;
    return cf_args_add_int(args, (int64_t)(index & 0xffffff)) == CF_OK ? 1 : -1;
}

//  The same, every input *state (milliseconds for bench_sleep_ms).
static int s_endless_ms(void *state, size_t index, cf_args_t *args)
{
    (void)index;
    return cf_args_add_int(args, *(const long *)state) == CF_OK ? 1 : -1;
}

static volatile sig_atomic_t s_loader_stop;

static void s_loader_on_term(int sig)
{
    (void)sig;
    s_loader_stop = 1;
}

//  --load ENDPOINT: keeps 1,000 no-op tasks in flight through the broker at
//  ENDPOINT until SIGTERM; prints "ready" once as many came back, and at
//  SIGTERM how many tasks it did at what rate (on stderr: a profile of a
//  saturated broker uses it, docs/benchmarks.md). With --load-ms N: 100
//  tasks sleeping N ms instead.
static int s_loader(const char *endpoint, long ms)
{
    signal(SIGTERM, s_loader_on_term);
    cf_executor_t *ex = cf_executor_connect(endpoint, NULL);
    if (!ex) {
        fprintf(stderr, "cf_bench: loader: %s\n", cf_last_error());
        return 1;
    }
    long window = ms > 0 ? 100 : 1000;
    cf_map_opts_t map_opts = { .chunksize = 1, .window = (size_t)window };
    cf_map_t *map = ms > 0 ? cf_map_new(ex, "bench_sleep_ms", s_endless_ms, &ms, &map_opts)
                           : cf_map_new(ex, "bench_double", s_endless_source, NULL, &map_opts);
    if (!map) {
        fprintf(stderr, "cf_bench: loader: %s\n", cf_last_error());
        return 1;
    }
    double start = 0;
    long count = 0;
    while (!s_loader_stop) {
        const cf_value_t *value = NULL;
        cf_err_t rc = cf_map_next(map, &value);
        if (rc != CF_OK) {
            fprintf(stderr, "cf_bench: loader: %s\n", cf_strerror(rc));
            return 1;
        }
        if (++count == window) {
            start = s_now_s();
            printf("ready\n");
            fflush(stdout);
        }
    }
    double elapsed = s_now_s() - start;
    fprintf(stderr, "loader: %ld tasks after ready in %.3f s: %.0f tasks/s\n", count - window,
            elapsed, (double)(count - window) / elapsed);
    //  Quick exit: the tasks in flight die with the process.
    _exit(0);
}

//  --rtt ENDPOINT: --rounds round trips of one task at a time through the
//  broker at ENDPOINT (after 100 to warm up), then their p50 and p99: the
//  client of bench/profile.sh's round-trip profile (CF_WAIT_SPIN_US=0 turns
//  the waiter's spin off).
static int s_rtt(const char *endpoint, const bench_opts_t *opts)
{
    cf_executor_t *ex = cf_executor_connect(endpoint, NULL);
    if (!ex) {
        fprintf(stderr, "cf_bench: rtt: %s\n", cf_last_error());
        return 1;
    }
    bool ok = s_latency(ex, "rtt", "latency", opts);
    cf_executor_destroy(&ex);
    return ok ? 0 : 1;
}

//  The round trip of one task at a time (default waiter) while a loader
//  process saturates the broker at clients with no-op tasks (ms 0), or
//  keeps its worker busy with tasks of ms milliseconds: remote.NAME.*.
static bool s_under_load(cf_executor_t *ex, const char *clients, const bench_opts_t *opts,
                         long ms, const char *name)
{
    char ms_arg[24];
    snprintf(ms_arg, sizeof ms_arg, "%ld", ms);
    char *argv[] = { "/proc/self/exe", "--load", (char *)clients, "--load-ms", ms_arg, NULL };
    //  Round trips of a few ms each: fewer of them.
    bench_opts_t mine = *opts;
    if (ms > 0 && mine.rounds > 500)
        mine.rounds = 500;
    daemon_t loader;
    bool ok = s_daemon_start(&loader, argv, 30000);
    if (ok)
        ok = s_latency(ex, "remote", name, &mine);
    s_daemon_stop(&loader);
    return ok;
}

// ---------------------------------------------------------------------------
//  Groups 1-3: one executor kind

static void s_kind_workloads(cf_executor_t *ex, const char *kind, const bench_opts_t *opts)
{
    printf("# %s: %d workers\n", kind, cf_executor_max_workers(ex));
    fflush(stdout);
    //  Workers up and connected before the clock starts, as in py_futures.
    for (int i = 0; i < 64; i++) {
        cf_future_t *f = cf_submit(ex, "bench_double", "i", i);
        cf_err_t rc = f ? cf_future_wait(f, opts->timeout_ms) : cf_last_err();
        cf_future_release(&f);
        if (rc != CF_OK) {
            s_fail("%s: warm-up: %s", kind, cf_strerror(rc));
            return;
        }
    }
    s_noop_submit(ex, kind, opts);
    s_noop_map(ex, kind, opts, 1);
    s_noop_map(ex, kind, opts, 1000);
    s_latency(ex, kind, "latency", opts);
    cf_set_wait_spin(0);
    s_latency(ex, kind, "latency_nospin", opts);
    cf_set_wait_spin(-1);
}

static void s_group_local(cf_kind_t kind_id, const bench_opts_t *opts)
{
    const char *kind = cf_kind_name(kind_id);
    //  Default worker counts, as py_futures: threads min(32, cores + 4),
    //  processes = cores.
    cf_executor_t *ex = cf_executor_new(kind_id, NULL);
    if (!ex) {
        s_fail("%s: cf_executor_new: %s", kind, cf_last_error());
        return;
    }
    s_kind_workloads(ex, kind, opts);
    cf_executor_destroy(&ex);
    //  The order of py_futures: the I/O fan-out before the prime checks,
    //  whose seconds of both cores busy left this VM's timer wake-ups late
    //  for a while (io.wall 103 to 116 ms right after them, 102 to 103 ms
    //  before).
    if (kind_id == CF_THREADS)
        s_io_fanout(opts);
    s_prime_scaling(kind_id, kind, opts);
}

static void s_group_remote(const bench_opts_t *opts)
{
    char clients[256], workers[256];
    daemon_t broker, worker;
    if (!s_start_broker(opts, &broker, NULL, clients, workers, sizeof clients)) {
        s_daemon_stop(&broker);
        return;
    }
    //  One cf-worker with one execution thread per core: the same capacity
    //  as the processes executor.
    char threads[16];
    snprintf(threads, sizeof threads, "%ld", sysconf(_SC_NPROCESSORS_ONLN));
    char *argv[] = { (char *)opts->worker_bin, "--broker",  workers, "--tasks",
                     (char *)opts->tasks_lib,  "--threads", threads, NULL };
    if (s_daemon_start(&worker, argv, 30000)) {
        printf("# remote: broker %s, worker %s\n", clients, worker.line);
        cf_executor_t *ex = cf_executor_connect(clients, NULL);
        if (ex) {
            s_kind_workloads(ex, "remote", opts);
            s_payload(ex, "remote", 1024, "1KiB", opts);
            s_payload(ex, "remote", 64 * 1024, "64KiB", opts);
            s_payload(ex, "remote", 1024 * 1024, "1MiB", opts);
            s_under_load(ex, clients, opts, 0, "load");
            s_under_load(ex, clients, opts, 1, "load_1ms");
            cf_executor_destroy(&ex);
        }
        else
            s_fail("remote: cf_executor_connect: %s", cf_last_error());
    }
    s_daemon_stop(&worker);
    s_daemon_stop(&broker);
}

// ---------------------------------------------------------------------------
//  Workload 5: memory

static void s_group_broker_mem(const bench_opts_t *opts)
{
    long n = opts->queued;
    char max_queued[32], clients[256], workers[256];
    snprintf(max_queued, sizeof max_queued, "%ld", n + 1000);
    daemon_t broker;
    if (!s_start_broker(opts, &broker, max_queued, clients, workers, sizeof clients)) {
        s_daemon_stop(&broker);
        return;
    }
    cf_future_t **futures = calloc((size_t)n, sizeof *futures);
    cf_executor_t *ex = futures ? cf_executor_connect(clients, NULL) : NULL;
    if (!ex) {
        s_fail("broker.mem: cf_executor_connect: %s", futures ? cf_last_error() : "no memory");
        free(futures);
        s_daemon_stop(&broker);
        return;
    }
    //  One STATS round trip first: the client is connected and the broker
    //  has seen it before the baseline is taken.
    uint64_t queued = 0;
    s_broker_stat(clients, "queued", 5000, &queued);
    long before_kib = s_status_kib(broker.pid, "VmRSS:");
    long client_before_kib = s_status_kib(getpid(), "VmRSS:");
    bool ok = true;
    double payload = 0;
    double start = s_now_s();
    for (long i = 0; i < n && ok; i++) {
        futures[i] = cf_submit(ex, "bench_double", "L", (int64_t)i);
        if (!futures[i])
            ok = s_fail("broker.mem: cf_submit %ld: %s", i, cf_last_error());
        //  The payload the broker must keep: the function name and the
        //  arguments ([i]: an array header and the integer).
        payload += (double)(strlen("bench_double") + 1 + s_mp_int_size(i));
    }
    double deadline = start + opts->timeout_ms / 1000.0;
    while (ok) {
        if (s_broker_stat(clients, "queued", 5000, &queued) && queued >= (uint64_t)n)
            break;
        if (s_now_s() > deadline)
            ok = s_fail("broker.mem: %" PRIu64 " of %ld queued after %d ms", queued, n,
                        opts->timeout_ms);
        s_nap_ms(50);
    }
    double elapsed = s_now_s() - start;
    long after_kib = s_status_kib(broker.pid, "VmRSS:");
    long client_after_kib = s_status_kib(getpid(), "VmRSS:");
    if (ok && (before_kib < 0 || after_kib < 0))
        ok = s_fail("broker.mem: cannot read /proc/%ld/status", (long)broker.pid);
    if (ok) {
        double per_task = (double)(after_kib - before_kib) * 1024.0 / (double)n;
        printf("# broker.mem: %ld queued in %.2f s, VmRSS %ld -> %ld KiB\n", n, elapsed, before_kib,
               after_kib);
        s_emit("broker.mem.per_task", per_task, "bytes/task");
        s_emit("broker.mem.payload", payload / (double)n, "bytes/task");
        s_emit("broker.mem.bookkeeping", per_task - payload / (double)n, "bytes/task");
        //  The client holds every task until its answer: its future, the
        //  task with its function and arguments (kept for a resubmission),
        //  and its entries in the client's maps. Less the payload and this
        //  program's own array of future pointers (8 bytes a task).
        double client = (double)(client_after_kib - client_before_kib) * 1024.0 / (double)n;
        printf("# client.mem: VmRSS %ld -> %ld KiB\n", client_before_kib, client_after_kib);
        s_emit("client.mem.per_task", client, "bytes/task");
        double bookkeeping = client - payload / (double)n - 8.0;
        s_emit("client.mem.bookkeeping", bookkeeping, "bytes/task");
        if (opts->max_client_bookkeeping > 0 && bookkeeping > (double)opts->max_client_bookkeeping)
            s_fail("client.mem.bookkeeping: %.1f bytes a task, over the bound of %ld", bookkeeping,
                   opts->max_client_bookkeeping);
    }
    //  No worker will ever run these: cancel them, then go.
    cf_executor_shutdown(ex, false, true);
    for (long i = 0; i < n; i++)
        cf_future_release(&futures[i]);
    free(futures);
    cf_executor_destroy(&ex);
    s_daemon_stop(&broker);
}

static void s_group_map_mem(const bench_opts_t *opts)
{
    const char *kind = cf_kind_name(opts->map_kind);
    daemon_t broker, worker;
    memset(&broker, 0, sizeof broker);
    memset(&worker, 0, sizeof worker);
    broker.pid = worker.pid = -1;
    broker.out_fd = worker.out_fd = -1;
    char clients[256] = "", workers[256] = "";
    if (opts->map_kind == CF_REMOTE) {
        char threads[16];
        snprintf(threads, sizeof threads, "%ld", sysconf(_SC_NPROCESSORS_ONLN));
        char *argv[] = { (char *)opts->worker_bin, "--broker",  workers, "--tasks",
                         (char *)opts->tasks_lib,  "--threads", threads, NULL };
        if (!s_start_broker(opts, &broker, NULL, clients, workers, sizeof clients)
            || !s_daemon_start(&worker, argv, 30000)) {
            s_daemon_stop(&worker);
            s_daemon_stop(&broker);
            return;
        }
    }
    long start_kib = s_status_kib(getpid(), "VmRSS:");
    cf_executor_t *ex = opts->map_kind == CF_REMOTE ? cf_executor_connect(clients, NULL)
                                                    : cf_executor_new(opts->map_kind, NULL);
    if (!ex) {
        s_fail("client.map: cf_executor_new: %s", cf_last_error());
        s_daemon_stop(&worker);
        s_daemon_stop(&broker);
        return;
    }
    long base_kib = s_status_kib(getpid(), "VmRSS:");
    range_source_t range = { .count = opts->map_inputs };
    cf_map_opts_t map_opts = { .chunksize = (size_t)opts->map_chunksize,
                               .timeout_ms = opts->timeout_ms };
    double start = s_now_s();
    cf_map_t *map = cf_map_new(ex, "bench_double", s_range_source, &range, &map_opts);
    bool ok = map || s_fail("client.map: cf_map_new: %s", cf_last_error());
    long count = 0;
    while (ok) {
        const cf_value_t *value = NULL;
        cf_err_t rc = cf_map_next(map, &value);
        if (rc == CF_ESTOP)
            break;
        int64_t x = 0;
        if (rc == CF_OK)
            rc = cf_value_get_int(value, &x);
        if (rc != CF_OK || x != 2 * (int64_t)count)
            ok = s_fail("client.map: input %ld: %s", count, cf_strerror(rc));
        count++;
    }
    double elapsed = s_now_s() - start;
    long peak_kib = s_status_kib(getpid(), "VmHWM:");
    cf_map_destroy(&map);
    cf_executor_destroy(&ex);
    s_daemon_stop(&worker);
    s_daemon_stop(&broker);
    if (ok && count != opts->map_inputs)
        ok = s_fail("client.map: %ld results for %ld inputs", count, opts->map_inputs);
    if (ok) {
        printf("# client.map: %ld inputs on %s, chunksize %ld, in %.2f s; VmRSS %ld KiB at "
               "start, %ld KiB with the executor, VmHWM %ld KiB\n",
               count, kind, opts->map_chunksize, elapsed, start_kib, base_kib, peak_kib);
        s_emit("client.map.peak_rss", (double)peak_kib / 1024.0, "MiB");
        s_emit("client.map.growth", (double)(peak_kib - base_kib) / 1024.0, "MiB");
        s_emit("client.map.rate", (double)count / elapsed, "inputs/s");
    }
}

// ---------------------------------------------------------------------------
//  The parent: one child per group

//  Figures each group must report (the smoke test's check).
static const char *const s_expected_kind[] = { "noop.submit",        "noop.map1",
                                               "noop.map1000",       "latency.p50",
                                               "latency.p99",        "latency_nospin.p50",
                                               "latency_nospin.p99", NULL };
static const char *const s_expected_prime[] = { "prime.sequential", "prime.parallel",
                                                "prime.speedup", NULL };

static size_t s_expected(unsigned group, char names[][64], size_t max)
{
    size_t n = 0;
    const char *kind = group == GROUP_THREADS     ? "threads"
                       : group == GROUP_PROCESSES ? "processes"
                       : group == GROUP_REMOTE    ? "remote"
                                                  : NULL;
    if (kind) {
        for (size_t i = 0; s_expected_kind[i] && n < max; i++)
            snprintf(names[n++], 64, "%s.%s", kind, s_expected_kind[i]);
    }
    if (group == GROUP_THREADS || group == GROUP_PROCESSES) {
        for (size_t i = 0; s_expected_prime[i] && n < max; i++)
            snprintf(names[n++], 64, "%s.%s", kind, s_expected_prime[i]);
    }
    if (group == GROUP_THREADS && n < max)
        snprintf(names[n++], 64, "threads.io.wall");
    if (group == GROUP_REMOTE) {
        static const char *const remote_only[] = { "remote.payload.1KiB.throughput",
                                                   "remote.payload.64KiB.throughput",
                                                   "remote.payload.1MiB.throughput",
                                                   "remote.load.p50", "remote.load.p99",
                                                   "remote.load_1ms.p50",
                                                   "remote.load_1ms.p99" };
        for (size_t i = 0; i < sizeof remote_only / sizeof remote_only[0] && n < max; i++)
            snprintf(names[n++], 64, "%s", remote_only[i]);
    }
    if (group == GROUP_BROKER_MEM) {
        snprintf(names[n++], 64, "broker.mem.per_task");
        snprintf(names[n++], 64, "broker.mem.bookkeeping");
        snprintf(names[n++], 64, "client.mem.per_task");
        snprintf(names[n++], 64, "client.mem.bookkeeping");
    }
    if (group == GROUP_MAP_MEM) {
        snprintf(names[n++], 64, "client.map.peak_rss");
        snprintf(names[n++], 64, "client.map.rate");
    }
    return n;
}

//  Parses a child's line: a figure ("name value unit") is re-emitted, any
//  other line passed through.
static void s_child_line(const char *line)
{
    char name[64], unit[16];
    double value;
    char extra;
    if (line[0] != '#' && sscanf(line, "%63s %lf %15s %c", name, &value, unit, &extra) == 3)
        s_emit(name, value, unit);
    else {
        printf("%s\n", line);
        fflush(stdout);
    }
}

//  Runs this program again with --child group, forwarding its figures;
//  kills it after timeout_s.
static void s_run_group(int argc, char **argv, const char *group, int timeout_s)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0) {
        s_fail("%s: pipe: %s", group, strerror(errno));
        return;
    }
    char **child_argv = calloc((size_t)argc + 3, sizeof *child_argv);
    if (!child_argv) {
        s_fail("%s: out of memory", group);
        return;
    }
    child_argv[0] = argv[0];
    for (int i = 1; i < argc; i++)
        child_argv[i] = argv[i];
    child_argv[argc] = "--child";
    child_argv[argc + 1] = (char *)group;
    fflush(stdout);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        dup2(fds[1], STDOUT_FILENO);
        execv("/proc/self/exe", child_argv);
        _exit(127);
    }
    close(fds[1]);
    free(child_argv);
    if (pid < 0) {
        close(fds[0]);
        s_fail("%s: fork: %s", group, strerror(errno));
        return;
    }
    char buf[4096];
    size_t have = 0;
    double deadline = s_now_s() + timeout_s;
    bool timed_out = false;
    while (true) {
        int left_ms = (int)((deadline - s_now_s()) * 1000);
        if (left_ms <= 0) {
            timed_out = true;
            break;
        }
        struct pollfd item = { .fd = fds[0], .events = POLLIN };
        int rc = poll(&item, 1, left_ms);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            continue;
        ssize_t n = read(fds[0], buf + have, sizeof buf - 1 - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        have += (size_t)n;
        buf[have] = '\0';
        char *line = buf, *nl;
        while ((nl = strchr(line, '\n'))) {
            *nl = '\0';
            s_child_line(line);
            line = nl + 1;
        }
        have -= (size_t)(line - buf);
        memmove(buf, line, have);
        if (have == sizeof buf - 1)
            have = 0;    //  an absurd line: drop it
    }
    close(fds[0]);
    if (timed_out) {
        kill(pid, SIGKILL);
        s_fail("%s: still running after %d s: killed", group, timeout_s);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (!timed_out && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
        if (WIFSIGNALED(status))
            s_fail("%s: killed by signal %d", group, WTERMSIG(status));
        else
            s_fail("%s: exited with %d", group, WEXITSTATUS(status));
    }
}

//  The human table. Its lines start with "| " so that nothing reading the
//  figure lines (run.sh) takes a row for a figure.
static void s_print_table(void)
{
    static const char *const rows[] = { "noop.submit",  "noop.map1",   "noop.map1000",
                                        "latency.p50",  "latency.p99", "latency_nospin.p50",
                                        "prime.speedup" };
    static const char *const kinds[] = { "threads", "processes", "remote" };
    printf("\n| %-16s %14s %14s %14s\n", "cfutures", "threads", "processes", "remote");
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
        printf("| %-16s", rows[r]);
        const char *unit = "";
        for (size_t k = 0; k < 3; k++) {
            char name[64];
            snprintf(name, sizeof name, "%s.%s", kinds[k], rows[r]);
            const figure_t *f = s_figure(name);
            if (f) {
                printf(" %14.6g", f->value);
                unit = f->unit;
            }
            else
                printf(" %14s", "-");
        }
        printf("  %s\n", unit);
    }
    for (size_t i = 0; i < s_figure_count; i++) {
        const figure_t *f = &s_figures[i];
        if (!strncmp(f->name, "threads.io", 10) || !strncmp(f->name, "broker.", 7)
            || !strncmp(f->name, "client.", 7))
            printf("| %-31s %14.6g  %s\n", f->name, f->value, f->unit);
    }
    fflush(stdout);
}

// ---------------------------------------------------------------------------
//  main

static void s_usage(FILE *out)
{
    fprintf(out, "usage: cf_bench [--quick] [--only GROUPS] [--tasks N] [--message-tasks N]\n"
                 "                [--window N] [--rounds N]\n"
                 "                [--queued N] [--map-inputs N] [--map-kind KIND]\n"
                 "                [--map-chunksize N] [--broker PATH] [--worker PATH]\n"
                 "                [--tasks-lib PATH] [--samples DIR]\n"
                 "                [--max-client-bookkeeping BYTES]\n"
                 "GROUPS: comma-separated threads,processes,remote,broker-mem,map-mem\n"
                 "        (mem = broker-mem,map-mem; default all)\n"
                 "Binaries default to $CF_BROKER_BIN, $CF_WORKER_BIN, $CF_BENCH_TASKS_LIB.\n");
}

static long s_parse_long(const char *flag, const char *text)
{
    char *end = NULL;
    errno = 0;
    long value = text ? strtol(text, &end, 10) : 0;
    if (!text || errno || *end || value <= 0) {
        fprintf(stderr, "cf_bench: %s needs a positive number\n", flag);
        exit(2);
    }
    return value;
}

static unsigned s_parse_groups(const char *text)
{
    unsigned groups = 0;
    char copy[256];
    snprintf(copy, sizeof copy, "%s", text);
    char *save = NULL;
    for (char *name = strtok_r(copy, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
        unsigned bit = 0;
        for (size_t i = 0; i < GROUP_COUNT; i++) {
            if (!strcmp(name, s_groups[i].name))
                bit = s_groups[i].bit;
        }
        if (!strcmp(name, "mem"))
            bit = GROUP_BROKER_MEM | GROUP_MAP_MEM;
        if (!bit) {
            fprintf(stderr, "cf_bench: unknown group '%s'\n", name);
            exit(2);
        }
        groups |= bit;
    }
    return groups;
}

int main(int argc, char **argv)
{
    bench_opts_t opts = {
        .groups = GROUP_THREADS | GROUP_PROCESSES | GROUP_REMOTE | GROUP_BROKER_MEM | GROUP_MAP_MEM,
        .io_tasks = 200,
        .io_threads = 20,
        .io_ms = 10,
        .map_kind = CF_PROCESSES,
        .map_chunksize = 1000,
        .broker_bin = getenv("CF_BROKER_BIN"),
        .worker_bin = getenv("CF_WORKER_BIN"),
        .tasks_lib = getenv("CF_BENCH_TASKS_LIB"),
    };
    long tasks = 0, message_tasks = 0, rounds = 0, queued = 0, map_inputs = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(arg, "--quick"))
            opts.quick = true;
        else if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            s_usage(stdout);
            return 0;
        }
        else if (!strcmp(arg, "--only") && next)
            opts.groups = s_parse_groups(next), i++;
        else if (!strcmp(arg, "--child") && next)
            opts.child = next, i++;
        else if (!strcmp(arg, "--tasks"))
            tasks = s_parse_long(arg, next), i++;
        else if (!strcmp(arg, "--message-tasks"))
            message_tasks = s_parse_long(arg, next), i++;
        else if (!strcmp(arg, "--window"))
            opts.window = s_parse_long(arg, next), i++;
        else if (!strcmp(arg, "--rounds"))
            rounds = s_parse_long(arg, next), i++;
        else if (!strcmp(arg, "--queued"))
            queued = s_parse_long(arg, next), i++;
        else if (!strcmp(arg, "--max-client-bookkeeping"))
            opts.max_client_bookkeeping = s_parse_long(arg, next), i++;
        else if (!strcmp(arg, "--map-inputs"))
            map_inputs = s_parse_long(arg, next), i++;
        else if (!strcmp(arg, "--map-chunksize"))
            opts.map_chunksize = s_parse_long(arg, next), i++;
        else if (!strcmp(arg, "--map-kind") && next) {
            i++;
            if (!strcmp(next, "threads"))
                opts.map_kind = CF_THREADS;
            else if (!strcmp(next, "processes"))
                opts.map_kind = CF_PROCESSES;
            else if (!strcmp(next, "remote"))
                opts.map_kind = CF_REMOTE;
            else {
                fprintf(stderr, "cf_bench: --map-kind is threads, processes or remote\n");
                return 2;
            }
        }
        else if (!strcmp(arg, "--broker") && next)
            opts.broker_bin = next, i++;
        else if (!strcmp(arg, "--worker") && next)
            opts.worker_bin = next, i++;
        else if (!strcmp(arg, "--tasks-lib") && next)
            opts.tasks_lib = next, i++;
        else if (!strcmp(arg, "--samples") && next)
            opts.samples_dir = next, i++;
        else if (!strcmp(arg, "--load") && next)
            opts.load = next, i++;
        else if (!strcmp(arg, "--load-ms") && next)
            opts.load_ms = atol(next), i++;
        else if (!strcmp(arg, "--rtt") && next)
            opts.rtt = next, i++;
        else {
            s_usage(stderr);
            return 2;
        }
    }
    opts.tasks = tasks ? tasks : opts.quick ? 2000 : 100000;
    opts.message_tasks = message_tasks ? message_tasks : opts.tasks;
    opts.rounds = rounds ? rounds : opts.quick ? 200 : 2000;
    opts.queued = queued ? queued : opts.quick ? 20000 : 1000000;
    opts.map_inputs = map_inputs ? map_inputs : opts.quick ? 100000 : 10000000;
    if (opts.quick) {
        opts.io_tasks = 40;
        opts.primes = s_quick_primes;
        opts.prime_count = sizeof s_quick_primes / sizeof s_quick_primes[0];
    }
    else {
        opts.primes = s_primes;
        opts.prime_count = sizeof s_primes / sizeof s_primes[0];
    }
    opts.timeout_ms = opts.quick ? 60000 : 180000;

    if (opts.load) {
        signal(SIGPIPE, SIG_IGN);
        return s_loader(opts.load, opts.load_ms);
    }
    if (opts.rtt)
        return s_rtt(opts.rtt, &opts);
    if (opts.child)
        opts.groups = s_parse_groups(opts.child);
    bool needs_daemons = opts.groups & (GROUP_REMOTE | GROUP_BROKER_MEM)
                         || (opts.groups & GROUP_MAP_MEM && opts.map_kind == CF_REMOTE);
    if (needs_daemons && (!opts.broker_bin || !opts.worker_bin || !opts.tasks_lib)) {
        fprintf(stderr, "cf_bench: the remote and broker-mem groups need cf-broker, cf-worker "
                        "and libbench_tasks.so (--broker, --worker, --tasks-lib)\n");
        return 2;
    }

    //  A daemon or child that dies must not kill us through a write.
    signal(SIGPIPE, SIG_IGN);
    if (opts.samples_dir && !opts.child)
        mkdir(opts.samples_dir, 0777);

    if (opts.child) {
        unsigned group = opts.groups;
        if (group == GROUP_THREADS)
            s_group_local(CF_THREADS, &opts);
        else if (group == GROUP_PROCESSES)
            s_group_local(CF_PROCESSES, &opts);
        else if (group == GROUP_REMOTE)
            s_group_remote(&opts);
        else if (group == GROUP_BROKER_MEM)
            s_group_broker_mem(&opts);
        else if (group == GROUP_MAP_MEM)
            s_group_map_mem(&opts);
        return s_failed ? 1 : 0;
    }

    printf("# cf_bench %s: cores %ld, tasks %ld (%ld one per message on processes and "
           "remote), rounds %ld, queued %ld, map inputs %ld\n",
           opts.quick ? "quick" : "full", sysconf(_SC_NPROCESSORS_ONLN), opts.tasks,
           opts.message_tasks, opts.rounds, opts.queued, opts.map_inputs);
    fflush(stdout);
    size_t missing = 0;
    for (size_t g = 0; g < GROUP_COUNT; g++) {
        if (!(opts.groups & s_groups[g].bit))
            continue;
        s_run_group(argc, argv, s_groups[g].name, opts.quick ? 90 : s_groups[g].timeout_s);
        char names[24][64];
        size_t count = s_expected(s_groups[g].bit, names, 24);
        for (size_t i = 0; i < count; i++) {
            if (!s_figure(names[i])) {
                printf("# MISSING: %s\n", names[i]);
                missing++;
            }
        }
    }
    s_print_table();
    if (missing || s_failed) {
        printf("# cf_bench: %zu figures missing%s\n", missing, s_failed ? ", failures above" : "");
        return 1;
    }
    return 0;
}

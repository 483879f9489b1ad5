//  Multi-host, proved (issue 10, section 5): a small cluster in Linux
//  network namespaces, so that links behave like a network and not like
//  loopback. A real cf-broker in one namespace, a real cf-worker (2 threads,
//  the example task library) in each of two others, and a client (this
//  program run again with --client) in a fourth. The broker's namespace
//  holds a bridge, 198.51.100.1/24, with a veth pair to each of the three
//  others (.11 and .12 the workers, .21 the client): TEST-NET-2, no default
//  route, no IPv6, nothing routed anywhere. A probe (this program with
//  --probe, in the broker's namespace, so no cut reaches it) asks the
//  broker for STATS every 50 ms and prints a line, with the monotonic time
//  (one clock for every namespace), whenever workers, clients or
//  lost_workers change: that is what the detection and rejoin times below
//  are measured with.
//
//  1. Tasks flow across the links: a batch of slow_double (a result that
//     names its input) and fail (a ValueError that names it) comes back
//     right.
//  2. Under load (16 tasks in flight: slow_double, fail, and sleep_pid,
//     whose result says which cf-worker ran it), worker 1's link is cut (an
//     nftables drop-everything table in its namespace; `ip link set down`
//     when nft is missing). The broker must notice within the documented
//     time (heartbeat x liveness after the worker's last message, checked on
//     its once-per-interval tick: between liveness - 1 and liveness + 1
//     intervals after the cut), requeue what the worker held, and every
//     task submitted before the cut must resolve while the link is still
//     cut, so on worker 2. Then the link heals and worker 1 must rejoin (the
//     broker counts two workers again) and run tasks again.
//  3. The client's link is cut until the broker drops the client, then
//     heals: every future pending at the cut must resolve (the client
//     resubmits what the broker forgot), none may hang.
//  At the end the client stops submitting, drains and reports: a done
//  callback counts completions per task, so a future lost (never resolved)
//  or resolved twice fails the test, as does a wrong result or an error
//  other than the task's own. CF_NETNS_CLUSTER_INJECT=lost or =double
//  makes the client drop or double one task's callback, to see the test
//  fail as it must; CF_NETNS_CLUSTER_CUT=link cuts with `ip link set down`
//  even where nft is installed; CF_NETNS_CLUSTER_VERBOSE=1 logs debug lines.
//
//  The measured times are printed (docs/reliability.md, "Multi-host in
//  network namespaces", records them). No fixed sleeps: every wait polls a
//  condition with a deadline. Needs root and iproute2; skipped (exit 77)
//  otherwise or where namespaces are forbidden. It creates and removes its
//  own namespaces, named after its pid (and removes those a killed run of
//  it left behind). Normal build only (tests/CMakeLists.txt), never under
//  sanitizers.

#include "cf_testkit.h"

#include "cf_proto.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define S_HB_MS      1000
#define S_HB_TEXT    "1000"
#define S_LIVENESS   3
#define S_LIVE_TEXT  "3"
#define S_BROKER_IP  "198.51.100.1"
#define S_CLIENTS_EP "tcp://" S_BROKER_IP ":5555"
#define S_WORKERS_EP "tcp://" S_BROKER_IP ":5556"
#define S_NS_PREFIX  "cfclu-"
//  The client: tasks in flight under load, the first batch, the most tasks
//  it submits in all, how often it reports.
#define S_WINDOW     16
#define S_BATCH      40
#define S_MAX_TASKS  65536
#define S_STATUS_MS  200
#define S_PROBE_MS   50
//  Slack over the documented detection bound: the probe's period and a
//  busy two-core machine.
#define S_SLACK_MS   500

// ---------------------------------------------------------------------------
//  The network

enum { S_BROKER, S_WORKER1, S_WORKER2, S_CLIENT, S_HOSTS };

static const char *const s_host_ip[S_HOSTS] = { S_BROKER_IP, "198.51.100.11", "198.51.100.12",
                                                "198.51.100.21" };
static const char *const s_host_tag[S_HOSTS] = { "b", "w1", "w2", "c" };
//  The broker's end of each peer's veth pair (the peer's end is eth0).
static const char *const s_port[S_HOSTS] = { NULL, "pw1", "pw2", "pc" };
static char s_ns[S_HOSTS][48];
static const char *s_ip = NULL;
static bool s_have_nft = false;
static char s_self[4096];

static int s_run(const char *fmt, ...) CF_PRINTF(1, 2);
static int s_run(const char *fmt, ...)
{
    char command[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(command, sizeof command, fmt, ap);
    va_end(ap);
    int rc = system(command);
    if (rc != 0)
        fprintf(stderr, "netns_cluster: `%s` failed (%d)\n", command, rc);
    return rc;
}

static const char *s_find(const char *const *paths)
{
    for (; *paths; paths++) {
        if (access(*paths, X_OK) == 0)
            return *paths;
    }
    return NULL;
}

static void s_remove_network(void)
{
    //  Deleting a namespace deletes the interfaces in it, and their veth
    //  peers; the bridge goes with the broker's.
    for (int h = 0; h < S_HOSTS; h++) {
        if (!s_ns[h][0])
            continue;
        char command[256];
        snprintf(command, sizeof command, "%s netns del %s 2>/dev/null", s_ip, s_ns[h]);
        if (system(command) != 0) {
            //  Not there (never made, or half a setup): fine.
        }
    }
}

//  Namespaces of runs that were killed (a CTest timeout sends SIGKILL, and
//  no teardown runs): cfclu-<tag>-<pid> with no such process any more.
static void s_remove_leftovers(void)
{
    DIR *dir = opendir("/run/netns");
    if (!dir)
        return;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (strncmp(entry->d_name, S_NS_PREFIX, strlen(S_NS_PREFIX)) != 0)
            continue;
        const char *dash = strrchr(entry->d_name, '-');
        char *end = NULL;
        long pid = dash ? strtol(dash + 1, &end, 10) : 0;
        if (pid <= 0 || !end || *end)
            continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;    //  a run still going
        fprintf(stderr, "netns_cluster: removing %s, left by a run that died\n", entry->d_name);
        if (s_run("%s netns del %s", s_ip, entry->d_name) != 0) {
            //  Reported; it does not stop this run.
        }
    }
    closedir(dir);
}

static bool s_make_network(void)
{
    for (int h = 0; h < S_HOSTS; h++) {
        snprintf(s_ns[h], sizeof s_ns[h], S_NS_PREFIX "%s-%d", s_host_tag[h], (int)getpid());
        if (s_run("%s netns add %s", s_ip, s_ns[h]) != 0
            || s_run("%s -n %s link set lo up", s_ip, s_ns[h]) != 0)
            return false;
        //  IPv4 in 198.51.100.0/24 only: no IPv6 link-local addresses on
        //  the interfaces made below (best effort: a kernel without IPv6
        //  has none anyway).
        char command[512];
        snprintf(command, sizeof command,
                 "%s netns exec %s sh -c 'echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6 "
                 "&& echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6' 2>/dev/null",
                 s_ip, s_ns[h]);
        if (system(command) != 0) {
            //  No IPv6 in this kernel: nothing to disable.
        }
    }
    const char *broker = s_ns[S_BROKER];
    if (s_run("%s -n %s link add br0 type bridge", s_ip, broker) != 0
        || s_run("%s -n %s addr add %s/24 dev br0", s_ip, broker, S_BROKER_IP) != 0
        || s_run("%s -n %s link set br0 up", s_ip, broker) != 0)
        return false;
    for (int h = S_WORKER1; h < S_HOSTS; h++) {
        //  Made in place: the names never exist in the caller's namespace,
        //  so runs side by side (and netns_partition) never collide.
        if (s_run("%s link add %s netns %s type veth peer name eth0 netns %s", s_ip, s_port[h],
                  broker, s_ns[h])
                != 0
            || s_run("%s -n %s link set %s master br0", s_ip, broker, s_port[h]) != 0
            || s_run("%s -n %s link set %s up", s_ip, broker, s_port[h]) != 0
            || s_run("%s -n %s addr add %s/24 dev eth0", s_ip, s_ns[h], s_host_ip[h]) != 0
            || s_run("%s -n %s link set eth0 up", s_ip, s_ns[h]) != 0)
            return false;
    }
    return true;
}

//  Every packet in or out of the host's namespace dropped, loopback
//  spared; or, without nft, its end of the link down.
static int s_cut(int host)
{
    if (s_have_nft)
        return s_run("%s netns exec %s nft 'add table inet cfcut; add chain inet cfcut in { type "
                     "filter hook input priority 0; policy drop; }; add rule inet cfcut in iif lo "
                     "accept; add chain inet cfcut out { type filter hook output priority 0; "
                     "policy drop; }; add rule inet cfcut out oif lo accept'",
                     s_ip, s_ns[host]);
    return s_run("%s -n %s link set eth0 down", s_ip, s_ns[host]);
}

static int s_heal(int host)
{
    if (s_have_nft)
        return s_run("%s netns exec %s nft delete table inet cfcut", s_ip, s_ns[host]);
    return s_run("%s -n %s link set eth0 up", s_ip, s_ns[host]);
}

// ---------------------------------------------------------------------------
//  The probe: this program with --probe, in the broker's namespace. A line
//  whenever one of the watched counters changes.

static const char *const s_watched[] = { "workers", "clients", "lost_workers" };
#define S_WATCHED (sizeof s_watched / sizeof s_watched[0])

//  One STATS round trip: true with the watched counters when the reply came
//  within timeout_ms.
static bool s_probe_ask(void *socket, cf_proto_enc_t *enc, int timeout_ms, uint64_t *values)
{
    cf_proto_enc_begin(enc, CF_MSG_STATS);
    if (cf_proto_enc_send(enc, socket, NULL, 0) != CF_OK)
        return false;
    int64_t deadline = cf_testkit_now_ms() + timeout_ms;
    for (;;) {
        int64_t left = deadline - cf_testkit_now_ms();
        if (left <= 0)
            return false;
        zmq_pollitem_t item = { .socket = socket, .events = ZMQ_POLLIN };
        int rc = zmq_poll(&item, 1, (long)left);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            return false;
        cf_proto_msg_t *msg = NULL;
        if (cf_proto_recv(socket, false, NULL, &msg) != CF_OK)
            continue;
        //  The broker may say HEARTBEAT to a peer it does not know first.
        if (msg->type != CF_MSG_STATS) {
            cf_proto_msg_destroy(&msg);
            continue;
        }
        size_t found = 0;
        for (size_t i = 0; i < msg->count; i++) {
            for (size_t k = 0; k < S_WATCHED; k++) {
                const cf_proto_stat_t *stat = &msg->stats[i];
                if (stat->name.len == strlen(s_watched[k])
                    && memcmp(stat->name.ptr, s_watched[k], stat->name.len) == 0) {
                    values[k] = stat->value;
                    found++;
                }
            }
        }
        cf_proto_msg_destroy(&msg);
        return found == S_WATCHED;
    }
}

static int s_probe(const char *endpoint)
{
    void *ctx = zmq_ctx_new();
    void *socket = ctx ? zmq_socket(ctx, ZMQ_DEALER) : NULL;
    cf_proto_enc_t *enc = cf_proto_enc_new();
    int linger = 0;
    if (!socket || !enc || zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger) != 0
        || zmq_connect(socket, endpoint) != 0) {
        printf("failed %s\n", zmq_strerror(errno));
        return 1;
    }
    uint64_t last[S_WATCHED] = { 0 };
    bool ready = false;
    for (;;) {
        int64_t asked_at = cf_testkit_now_ms();
        uint64_t values[S_WATCHED];
        if (s_probe_ask(socket, enc, 1000, values)) {
            int64_t at = cf_testkit_now_ms();
            bool first = !ready;
            if (first) {
                printf("ready\n");
                ready = true;
            }
            if (first || memcmp(values, last, sizeof last) != 0) {
                //  The time of the reply: the broker's state is at most
                //  the round trip older than that.
                printf("stats t=%" PRId64 " rtt=%" PRId64 " workers=%" PRIu64 " clients=%" PRIu64
                       " lost_workers=%" PRIu64 "\n",
                       at, at - asked_at, values[0], values[1], values[2]);
                memcpy(last, values, sizeof last);
            }
            fflush(stdout);
        }
        int64_t next = asked_at + S_PROBE_MS;
        while (cf_testkit_now_ms() < next)
            cf_testkit_nap_ms((int)(next - cf_testkit_now_ms()));
    }
}

// ---------------------------------------------------------------------------
//  The client: this program with --client, in its own namespace. A batch
//  first, then a window of S_WINDOW tasks kept in flight until SIGUSR1,
//  then it drains and reports.

typedef enum { S_SLOW, S_FAIL, S_PID } s_kind_t;

//  Completions per task, counted by a done callback.
static atomic_int s_calls[S_MAX_TASKS];

typedef struct {
    uint64_t submitted, resolved, ok, errors, wrong, clear;
    int pids[4];
    uint64_t per_pid[4];
    int npids;
} s_tally_t;

static s_kind_t s_kind_of(uint64_t i)
{
    return i % 10 == 7 ? S_FAIL : i % 10 == 3 ? S_PID : S_SLOW;
}

static int s_on_done(cf_future_t *f, void *arg)
{
    (void)f;
    atomic_fetch_add((atomic_int *)arg, 1);
    return 0;
}

static cf_future_t *s_submit(cf_executor_t *ex, uint64_t i)
{
    cf_future_t *f = NULL;
    char text[32];
    switch (s_kind_of(i)) {
    case S_SLOW:
        f = cf_submit(ex, "slow_double", "L", (int64_t)i);
        break;
    case S_FAIL:
        snprintf(text, sizeof text, "boom-%" PRIu64, i);
        f = cf_submit(ex, "fail", "s", text);
        break;
    case S_PID:
        f = cf_submit(ex, "sleep_pid", "i", 50);
        break;
    }
    if (!f) {
        fprintf(stderr, "netns_cluster client: task %" PRIu64 " not submitted: %s\n", i,
                cf_last_error());
        return NULL;
    }
    const char *inject = getenv("CF_NETNS_CLUSTER_INJECT");
    int callbacks = 1;
    if (inject && i == S_BATCH + 5)
        callbacks = strcmp(inject, "lost") == 0 ? 0 : strcmp(inject, "double") == 0 ? 2 : 1;
    for (int k = 0; k < callbacks; k++) {
        cf_err_t rc = cf_future_add_done_callback(f, s_on_done, &s_calls[i]);
        if (rc != CF_OK) {
            fprintf(stderr, "netns_cluster client: no callback on task %" PRIu64 ": %s\n", i,
                    cf_strerror(rc));
            cf_future_release(&f);
            return NULL;
        }
    }
    return f;
}

//  A done future of task i, judged.
static void s_judge(s_tally_t *tally, cf_future_t *f, uint64_t i)
{
    tally->resolved++;
    int64_t value = 0;
    cf_err_t rc;
    char expected[32];
    switch (s_kind_of(i)) {
    case S_SLOW:
        rc = cf_future_int(f, 0, &value);
        if (rc == CF_OK && value == 2 * (int64_t)i) {
            tally->ok++;
            return;
        }
        break;
    case S_FAIL: {
        rc = cf_future_result(f, 0, NULL);
        snprintf(expected, sizeof expected, "boom-%" PRIu64, i);
        const cf_task_error_t *raised = cf_future_error(f);
        if (rc == CF_ETASK && raised && strcmp(raised->type, "ValueError") == 0
            && strcmp(raised->message, expected) == 0) {
            tally->errors++;
            return;
        }
        break;
    }
    case S_PID:
        rc = cf_future_int(f, 0, &value);
        if (rc == CF_OK && value > 0) {
            tally->ok++;
            int k = 0;
            while (k < tally->npids && k < 4 && tally->pids[k] != (int)value)
                k++;
            if (k == tally->npids)
                tally->npids++;
            if (k < 4) {
                tally->pids[k] = (int)value;
                tally->per_pid[k]++;
            }
            return;
        }
        break;
    default:
        rc = CF_EINVAL;
        break;
    }
    const cf_task_error_t *error = cf_future_error(f);
    //  A lost worker or broker said plainly is a clear error, not a wrong
    //  result; the test still wants none (retries and resubmission cover
    //  both), but tells them apart.
    bool clear = error
                 && (strcmp(error->type, "WorkerLost") == 0
                     || strcmp(error->type, "BrokerLost") == 0);
    if (clear)
        tally->clear++;
    else
        tally->wrong++;
    fprintf(stderr,
            "netns_cluster client: task %" PRIu64 " (%s) ended rc=%d value=%" PRId64
            " error=%s: %s\n",
            i, cf_future_function(f), (int)rc, value, error ? error->type : "-",
            error ? error->message : "-");
}

static void s_status(const char *what, const s_tally_t *t, uint64_t oldest, uint64_t extra)
{
    printf("%s t=%" PRId64 " submitted=%" PRIu64 " resolved=%" PRIu64 " oldest=%" PRIu64
           " ok=%" PRIu64 " errors=%" PRIu64 " wrong=%" PRIu64 " clear=%" PRIu64
           " unresolved=%" PRIu64 " npids=%d",
           what, cf_testkit_now_ms(), t->submitted, t->resolved, oldest, t->ok, t->errors, t->wrong,
           t->clear, extra, t->npids);
    for (int k = 0; k < 4; k++)
        printf(" pid%d=%d n%d=%" PRIu64, k, k < t->npids ? t->pids[k] : 0, k,
               k < t->npids ? t->per_pid[k] : 0);
    printf("\n");
    fflush(stdout);
}

static int s_client(const char *endpoint)
{
    cf_log_set_handler(cf_log_to_stderr, NULL,
                       getenv("CF_NETNS_CLUSTER_VERBOSE") ? CF_LOG_DEBUG : CF_LOG_INFO);
    //  SIGUSR1 (stop submitting) is taken with sigtimedwait, never
    //  delivered: blocked here, so in every thread the executor starts.
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    if (pthread_sigmask(SIG_BLOCK, &usr1, NULL) != 0) {
        printf("failed sigmask\n");
        return 1;
    }
    cf_executor_t *ex = cf_executor_connect(endpoint, &(cf_options_t){
                                                          .heartbeat_ivl_ms = S_HB_MS,
                                                          .connect_timeout_ms = 10000,
                                                          .retries = 10,
                                                      });
    if (!ex) {
        printf("failed %s\n", cf_last_error());
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    s_tally_t tally = { 0 };

    //  1. A batch across the links.
    cf_future_t *batch[S_BATCH];
    uint64_t next = 0;
    for (; next < S_BATCH; next++) {
        batch[next] = s_submit(ex, next);
        if (!batch[next])
            return 1;
        tally.submitted++;
    }
    uint64_t unresolved = 0;
    int64_t until = cf_testkit_now_ms() + CF_TESTKIT_DEADLINE_MS;
    for (uint64_t i = 0; i < S_BATCH; i++) {
        int64_t left = until - cf_testkit_now_ms();
        if (cf_future_wait(batch[i], left > 0 ? (int)left : 0) == CF_OK)
            s_judge(&tally, batch[i], i);
        else
            unresolved++;
        cf_future_release(&batch[i]);
    }
    s_status("batch", &tally, next, unresolved);
    if (unresolved)
        return 1;

    //  2. and 3. The window, until SIGUSR1; then the drain.
    cf_future_t *window[S_WINDOW] = { NULL };
    uint64_t index[S_WINDOW] = { 0 };
    bool stopping = false;
    int64_t next_status = 0, drain_until = 0;
    size_t in_flight;
    for (;;) {
        const struct timespec zero = { 0, 0 };
        if (!stopping && sigtimedwait(&usr1, NULL, &zero) == SIGUSR1) {
            stopping = true;
            drain_until = cf_testkit_now_ms() + CF_TESTKIT_DEADLINE_MS;
        }
        in_flight = 0;
        uint64_t oldest = next;
        size_t oldest_slot = 0;
        for (size_t k = 0; k < S_WINDOW; k++) {
            if (window[k] && cf_future_done(window[k])) {
                s_judge(&tally, window[k], index[k]);
                cf_future_release(&window[k]);
            }
            if (!window[k] && !stopping && next < S_MAX_TASKS) {
                window[k] = s_submit(ex, next);
                if (!window[k])
                    return 1;
                index[k] = next++;
                tally.submitted++;
            }
            if (window[k]) {
                in_flight++;
                if (index[k] < oldest) {
                    oldest = index[k];
                    oldest_slot = k;
                }
            }
        }
        int64_t now = cf_testkit_now_ms();
        if (now >= next_status) {
            s_status("status", &tally, oldest, 0);
            next_status = now + S_STATUS_MS;
        }
        if (stopping && (in_flight == 0 || now >= drain_until))
            break;
        if (in_flight)
            (void)cf_future_wait(window[oldest_slot], 10);
    }
    //  Destroying the executor runs every callback still due: the counts
    //  are final after it.
    for (size_t k = 0; k < S_WINDOW; k++)
        cf_future_release(&window[k]);
    cf_executor_destroy(&ex);
    uint64_t never = 0, twice = 0;
    for (uint64_t i = 0; i < next; i++) {
        int calls = atomic_load(&s_calls[i]);
        if (calls == 0)
            never++;
        else if (calls > 1)
            twice++;
    }
    printf("final never=%" PRIu64 " twice=%" PRIu64 " ", never, twice);
    s_status("totals", &tally, next, in_flight);
    return 0;
}

// ---------------------------------------------------------------------------
//  The test's side

static cf_testkit_proc_t *s_spawn_in(cf_testkit_t *kit, const char *label, int host,
                                     const char *const *argv)
{
    const char *full[32] = { s_ip, "netns", "exec", s_ns[host] };
    size_t n = 4;
    for (; *argv && n < 31; argv++)
        full[n++] = *argv;
    full[n] = NULL;
    cf_testkit_proc_t *proc = cf_testkit_spawn(kit, label, full);
    assert_non_null(proc);
    if (!cf_testkit_wait_line(proc, "ready", CF_TESTKIT_READY_MS)) {
        cf_testkit_dump_logs(kit);
        fail_msg("%s did not get ready", label);
    }
    return proc;
}

static int64_t s_num(cf_testkit_proc_t *proc, const char *key)
{
    //  A field lives until the next one is read: parsed at once.
    const char *text = cf_testkit_field(proc, key);
    if (!text)
        fail_msg("no %s= in a line of %s", key, cf_testkit_label(proc));
    char *end = NULL;
    long long value = strtoll(text, &end, 10);
    if (end == text || *end)
        fail_msg("%s=%s in a line of %s is not a number", key, text, cf_testkit_label(proc));
    return value;
}

//  What the probe said last.
typedef struct {
    cf_testkit_proc_t *proc;
    int64_t t, workers, clients, lost_workers;
} s_probe_t;

//  The time at which the broker's counter `what` became value, reading the
//  probe's lines in order (now, if it already is); fails the test when it
//  does not within timeout_ms.
static int64_t s_probe_until(cf_testkit_t *kit, s_probe_t *p, const int64_t *counter, int64_t value,
                             const char *what, int timeout_ms)
{
    int64_t until = cf_testkit_now_ms() + timeout_ms;
    while (*counter != value) {
        int64_t left = until - cf_testkit_now_ms();
        if (left <= 0 || !cf_testkit_wait_line(p->proc, "stats", (int)left)) {
            cf_testkit_dump_logs(kit);
            fail_msg("the broker's %s did not become %" PRId64 " within %d ms (it is %" PRId64 ")",
                     what, value, timeout_ms, *counter);
        }
        p->t = s_num(p->proc, "t");
        p->workers = s_num(p->proc, "workers");
        p->clients = s_num(p->proc, "clients");
        p->lost_workers = s_num(p->proc, "lost_workers");
    }
    return p->t;
}

//  A client status line.
typedef struct {
    int64_t t, submitted, resolved, oldest, ok, errors, wrong, clear, npids;
    int64_t pid[4], n[4];
} s_status_t;

static bool s_read_status(cf_testkit_proc_t *client, const char *prefix, int timeout_ms,
                          s_status_t *s)
{
    if (!cf_testkit_wait_line(client, prefix, timeout_ms))
        return false;
    s->t = s_num(client, "t");
    s->submitted = s_num(client, "submitted");
    s->resolved = s_num(client, "resolved");
    s->oldest = s_num(client, "oldest");
    s->ok = s_num(client, "ok");
    s->errors = s_num(client, "errors");
    s->wrong = s_num(client, "wrong");
    s->clear = s_num(client, "clear");
    s->npids = s_num(client, "npids");
    for (int k = 0; k < 4; k++) {
        char key[8];
        snprintf(key, sizeof key, "pid%d", k);
        s->pid[k] = s_num(client, key);
        snprintf(key, sizeof key, "n%d", k);
        s->n[k] = s_num(client, key);
    }
    return true;
}

//  Tasks sleep_pid reported run by pid.
static int64_t s_ran_on(const s_status_t *s, int64_t pid)
{
    for (int k = 0; k < 4; k++) {
        if (s->pid[k] == pid)
            return s->n[k];
    }
    return 0;
}

typedef enum { S_AFTER, S_OLDEST_PAST, S_BOTH_RAN, S_RAN_MORE } s_until_t;

//  Reads status lines until the condition holds for one: after (a time),
//  oldest past (every task below arg resolved), both ran (sleep_pid tasks
//  ran on both workers, and arg tasks resolved), ran more (worker arg ran
//  more sleep_pid tasks than arg2). Fails the test on a wrong result and
//  when the condition does not come within timeout_ms.
static void s_status_until(cf_testkit_t *kit, cf_testkit_proc_t *client, s_status_t *s,
                           s_until_t cond, int64_t arg, int64_t arg2, int timeout_ms)
{
    int64_t until = cf_testkit_now_ms() + timeout_ms;
    for (;;) {
        int64_t left = until - cf_testkit_now_ms();
        if (left <= 0 || !s_read_status(client, "status", (int)left, s)) {
            cf_testkit_dump_logs(kit);
            fail_msg("the client's status did not come to pass (condition %d, %" PRId64 ", %" PRId64
                     ") within %d ms",
                     (int)cond, arg, arg2, timeout_ms);
        }
        if (s->wrong || s->clear) {
            cf_testkit_dump_logs(kit);
            fail_msg("%" PRId64 " wrong results and %" PRId64 " lost tasks at t=%" PRId64, s->wrong,
                     s->clear, s->t);
        }
        if ((cond == S_AFTER && s->t > arg) || (cond == S_OLDEST_PAST && s->oldest >= arg)
            || (cond == S_BOTH_RAN && s->npids >= 2 && s->resolved >= arg)
            || (cond == S_RAN_MORE && s_ran_on(s, arg) > arg2))
            return;
    }
}

//  "worker w-... lost (...), N tasks requeued" from the broker's log: N.
static long s_requeued(cf_testkit_proc_t *broker)
{
    char *log = cf_testkit_log(broker);
    assert_non_null(log);
    char *line = cf_testkit_line_with(log, " lost (");
    long requeued = -1;
    const char *at = line ? strstr(line, "), ") : NULL;
    if (at)
        requeued = strtol(at + 3, NULL, 10);
    if (line)
        printf("broker: %s\n", strstr(line, "worker") ? strstr(line, "worker") : line);
    free(line);
    free(log);
    return requeued;
}

static void test_a_cluster_across_namespaces_survives_cut_links(void **state)
{
    cf_testkit_t *kit = *state;
    const char *verbose = getenv("CF_NETNS_CLUSTER_VERBOSE") ? "-v" : NULL;
    const char *broker_argv[] = {
        cf_testkit_env("CF_BROKER_BIN"),
        "--clients",
        S_CLIENTS_EP,
        "--workers",
        S_WORKERS_EP,
        "--heartbeat-ms",
        S_HB_TEXT,
        "--liveness",
        S_LIVE_TEXT,
        verbose,
        NULL,
    };
    cf_testkit_proc_t *broker = s_spawn_in(kit, "broker", S_BROKER, broker_argv);
    const char *probe_argv[] = { s_self, "--probe", S_CLIENTS_EP, NULL };
    s_probe_t probe = { .proc = s_spawn_in(kit, "probe", S_BROKER, probe_argv) };
    cf_testkit_proc_t *workers[2];
    int64_t worker_pid[2];
    for (int w = 0; w < 2; w++) {
        const char *worker_argv[] = {
            cf_testkit_env("CF_WORKER_BIN"),
            "--broker",
            S_WORKERS_EP,
            "--tasks",
            cf_testkit_env("CF_TASKS_LIB"),
            "--threads",
            "2",
            "--heartbeat-ms",
            S_HB_TEXT,
            "--liveness",
            S_LIVE_TEXT,
            verbose,
            NULL,
        };
        workers[w] = s_spawn_in(kit, w == 0 ? "worker1" : "worker2", S_WORKER1 + w, worker_argv);
        //  ip netns exec execs the program: the pid is cf-worker's own.
        worker_pid[w] = (int64_t)cf_testkit_pid(workers[w]);
    }
    s_probe_until(kit, &probe, &probe.workers, 2, "workers", CF_TESTKIT_DEADLINE_MS);
    const char *client_argv[] = { s_self, "--client", S_CLIENTS_EP, NULL };
    cf_testkit_proc_t *client = s_spawn_in(kit, "client", S_CLIENT, client_argv);

    //  1. Tasks flow: results and errors come back right.
    s_status_t st;
    if (!s_read_status(client, "batch", CF_TESTKIT_DEADLINE_MS, &st)) {
        cf_testkit_dump_logs(kit);
        fail_msg("the client's first batch did not finish");
    }
    assert_int_equal(st.resolved, S_BATCH);
    assert_int_equal(st.ok + st.errors, S_BATCH);
    assert_int_equal(st.errors, S_BATCH / 10);
    assert_int_equal(st.wrong + st.clear, 0);
    printf("1. a batch of %d tasks across the links: %" PRId64 " results and %" PRId64
           " errors, all right\n",
           S_BATCH, st.ok, st.errors);

    //  2. Worker 1's link cut under load. Both workers run tasks first.
    s_status_until(kit, client, &st, S_BOTH_RAN, S_BATCH + 3 * S_WINDOW, 0, CF_TESTKIT_DEADLINE_MS);
    for (int k = 0; k < st.npids; k++) {
        if (st.pid[k] != worker_pid[0] && st.pid[k] != worker_pid[1])
            fail_msg("a task ran in process %" PRId64 ", not a worker's (%" PRId64 ", %" PRId64 ")",
                     st.pid[k], worker_pid[0], worker_pid[1]);
    }
    int64_t lost_before = probe.lost_workers;
    assert_int_equal(s_cut(S_WORKER1), 0);
    int64_t cut_at = cf_testkit_now_ms();
    int64_t noticed_at = s_probe_until(kit, &probe, &probe.workers, 1, "workers",
                                       CF_TESTKIT_DEADLINE_MS);
    assert_int_equal(probe.lost_workers, lost_before + 1);
    int64_t detect_ms = noticed_at - cut_at;
    //  Everything submitted before the cut resolves while the link is still
    //  cut: on worker 2.
    s_status_until(kit, client, &st, S_AFTER, cut_at, 0, CF_TESTKIT_DEADLINE_MS);
    int64_t before_cut = st.submitted;
    int64_t ran_on_1 = s_ran_on(&st, worker_pid[0]);
    s_status_until(kit, client, &st, S_OLDEST_PAST, before_cut, 0, CF_TESTKIT_DEADLINE_MS);
    int64_t drained_ms = st.t - cut_at;
    //  Nothing came from worker 1 while cut.
    assert_int_equal(s_ran_on(&st, worker_pid[0]), ran_on_1);
    long requeued = s_requeued(broker);
    assert_int_equal(s_heal(S_WORKER1), 0);
    int64_t healed_at = cf_testkit_now_ms();
    int64_t rejoined_at = s_probe_until(kit, &probe, &probe.workers, 2, "workers",
                                        CF_TESTKIT_DEADLINE_MS);
    int64_t rejoin_ms = rejoined_at - healed_at;
    //  Not back before the heal: the probe's lines come in order.
    assert_true(rejoin_ms > 0);
    s_status_until(kit, client, &st, S_RAN_MORE, worker_pid[0], ran_on_1, CF_TESTKIT_DEADLINE_MS);
    int64_t first_task_ms = st.t - healed_at;
    printf("2. worker 1 cut (%s) under load: the broker lost it after %" PRId64
           " ms (bound %d-%d ms), requeued %ld of its tasks; every task submitted before the "
           "cut (%" PRId64 ") resolved %" PRId64 " ms after the cut, on worker 2. Healed: "
           "worker 1 rejoined after %" PRId64 " ms and ran a task again after %" PRId64 " ms\n",
           s_have_nft ? "nft drop" : "link down", detect_ms, (S_LIVENESS - 1) * S_HB_MS,
           (S_LIVENESS + 1) * S_HB_MS, requeued, before_cut, drained_ms, rejoin_ms, first_task_ms);
    fflush(stdout);
    if (detect_ms > (S_LIVENESS + 1) * S_HB_MS + S_SLACK_MS
        || detect_ms < (S_LIVENESS - 1) * S_HB_MS - S_SLACK_MS || requeued < 1
        || rejoin_ms >= S_LIVENESS * S_HB_MS)
        cf_testkit_dump_logs(kit);
    //  Heartbeat x liveness after the worker's last message (at most an
    //  interval before the cut), on a tick once per interval.
    assert_true(detect_ms <= (S_LIVENESS + 1) * S_HB_MS + S_SLACK_MS);
    assert_true(detect_ms >= (S_LIVENESS - 1) * S_HB_MS - S_SLACK_MS);
    //  It held tasks (16 in flight on 4 threads), and they ran elsewhere.
    assert_true(requeued >= 1);
    assert_true(rejoin_ms < S_LIVENESS * S_HB_MS);

    //  3. The client's link cut until the broker drops the client, then
    //  healed: what was pending resolves.
    s_status_until(kit, client, &st, S_AFTER, cf_testkit_now_ms(), 0, CF_TESTKIT_DEADLINE_MS);
    int64_t resolved_before = st.resolved;
    s_probe_until(kit, &probe, &probe.clients, 1, "clients", CF_TESTKIT_DEADLINE_MS);
    assert_int_equal(s_cut(S_CLIENT), 0);
    cut_at = cf_testkit_now_ms();
    noticed_at = s_probe_until(kit, &probe, &probe.clients, 0, "clients", CF_TESTKIT_DEADLINE_MS);
    int64_t client_detect_ms = noticed_at - cut_at;
    s_status_until(kit, client, &st, S_AFTER, cut_at, 0, CF_TESTKIT_DEADLINE_MS);
    before_cut = st.submitted;
    int64_t pending = st.submitted - st.resolved;
    assert_int_equal(s_heal(S_CLIENT), 0);
    healed_at = cf_testkit_now_ms();
    rejoined_at = s_probe_until(kit, &probe, &probe.clients, 1, "clients", CF_TESTKIT_DEADLINE_MS);
    int64_t client_rejoin_ms = rejoined_at - healed_at;
    assert_true(client_rejoin_ms > 0);
    s_status_until(kit, client, &st, S_OLDEST_PAST, before_cut, 0, CF_TESTKIT_DEADLINE_MS);
    int64_t settled_ms = st.t - healed_at;
    printf("3. client cut: the broker dropped it after %" PRId64 " ms; healed: it was back "
           "after %" PRId64 " ms and its %" PRId64 " pending futures all resolved %" PRId64
           " ms after the heal\n",
           client_detect_ms, client_rejoin_ms, pending, settled_ms);
    fflush(stdout);
    assert_true(client_detect_ms <= (S_LIVENESS + 1) * S_HB_MS + S_SLACK_MS);
    assert_true(st.resolved > resolved_before);

    //  The end: every future resolved exactly once, each right.
    assert_true(cf_testkit_signal(client, SIGUSR1));
    if (!cf_testkit_wait_line(client, "final", 2 * CF_TESTKIT_DEADLINE_MS)) {
        cf_testkit_dump_logs(kit);
        fail_msg("the client did not finish");
    }
    int64_t never = s_num(client, "never");
    int64_t twice = s_num(client, "twice");
    int64_t submitted = s_num(client, "submitted");
    int64_t resolved = s_num(client, "resolved");
    int64_t ok = s_num(client, "ok");
    int64_t errors = s_num(client, "errors");
    int64_t wrong = s_num(client, "wrong");
    int64_t clear = s_num(client, "clear");
    int64_t unresolved = s_num(client, "unresolved");
    int64_t npids = s_num(client, "npids");
    printf("futures: %" PRId64 " submitted, %" PRId64 " resolved (%" PRId64 " results, %" PRId64
           " errors raised by their task), %" PRId64 " wrong, %" PRId64 " WorkerLost/BrokerLost, "
           "%" PRId64 " never resolved, %" PRId64 " resolved twice, %" PRId64
           " left pending; ran on %" PRId64 " processes\n",
           submitted, resolved, ok, errors, wrong, clear, never, twice, unresolved, npids);
    fflush(stdout);
    int status = -1;
    assert_true(cf_testkit_wait_exit(client, CF_TESTKIT_STOP_MS, &status));
    if (never || twice || wrong || clear || unresolved || resolved != submitted)
        cf_testkit_dump_logs(kit);
    assert_int_equal(never, 0);
    assert_int_equal(twice, 0);
    assert_int_equal(unresolved, 0);
    assert_int_equal(wrong, 0);
    assert_int_equal(clear, 0);
    assert_int_equal(resolved, submitted);
    assert_int_equal(ok + errors, submitted);
    assert_true(errors > 0);
    assert_int_equal(npids, 2);
    assert_int_equal(status, 0);
}

static int s_setup(void **state)
{
    if (!s_make_network()) {
        s_remove_network();
        fprintf(stderr, "netns_cluster: cannot build the namespaces\n");
        return -1;
    }
    return cf_testkit_setup(state);
}

static int s_teardown(void **state)
{
    int rc = cf_testkit_teardown(state);
    s_remove_network();
    return rc;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--client") == 0)
        return s_client(argv[2]);
    if (argc == 3 && strcmp(argv[1], "--probe") == 0)
        return s_probe(argv[2]);
    static const char *const ips[] = { "/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip", NULL };
    static const char *const nfts[] = { "/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft", NULL };
    s_ip = s_find(ips);
    if (geteuid() != 0 || !s_ip) {
        printf("SKIP: needs root and iproute2's ip (%s)\n", geteuid() != 0 ? "not root" : "no ip");
        return 77;
    }
    //  CF_NETNS_CLUSTER_CUT=link tries the fallback where nft is at hand.
    const char *cut = getenv("CF_NETNS_CLUSTER_CUT");
    s_have_nft = s_find(nfts) != NULL && !(cut && strcmp(cut, "link") == 0);
    ssize_t len = readlink("/proc/self/exe", s_self, sizeof s_self - 1);
    if (len <= 0)
        return 1;
    s_self[len] = '\0';
    //  Namespaces may be forbidden (an unprivileged container): skip then.
    char probe[64];
    snprintf(probe, sizeof probe, S_NS_PREFIX "probe-%d", (int)getpid());
    char command[256];
    snprintf(command, sizeof command, "%s netns add %s 2>/dev/null && %s netns del %s", s_ip, probe,
             s_ip, probe);
    if (system(command) != 0) {
        printf("SKIP: cannot create network namespaces here\n");
        return 77;
    }
    s_remove_leftovers();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_a_cluster_across_namespaces_survives_cut_links,
                                        s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

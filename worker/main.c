//  cf-worker: the worker actor as a daemon. Loads task libraries, connects
//  to a broker's worker endpoint and runs tasks: in N threads of this
//  process, or (--procs N) in N single-threaded worker processes that a
//  supervisor replaces when they exit or crash.
//
//  Prints one line to stdout once serving, for scripts and tests:
//      ready worker=<identity> threads=<N>     or     ready procs=<N>
//  SIGINT/SIGTERM: running tasks finish and their results go out, queued
//  ones are handed back to the broker (DISCONNECT), exit 0. A startup
//  failure prints one line to stderr and exits 1.
//
//  CURVE (--broker-key, --key; docs/security.md): a broker that refuses the
//  worker's key (or a plaintext worker of a CURVE broker) ends the worker
//  with one line on stderr and exit status 1, instead of the silent
//  reconnect loop ZeroMQ would keep up forever: the threads mode watches
//  its socket's handshakes all along, --procs checks once before starting
//  the worker processes.

#include "cf_error.h"
#include "cf_keys.h"
#include "cf_log.h"
#include "cf_procs.h"
#include "cf_proto.h"
#include "cf_registry.h"
#include "cf_worker.h"

#include <errno.h>
#include <stdarg.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define S_DEFAULT_BROKER "tcp://127.0.0.1:5556"
#define S_MAX_LIBRARIES 64
//  How long worker processes get to finish their task after SIGTERM.
#define S_PROCS_GRACE_MS 30000
//  How often the main thread looks at its worker while waiting for signals.
#define S_TICK_MS 200
//  CURVE handshakes dropped without a word in a row before the broker key
//  counts as wrong (one may be a broker going away; docs/security.md).
#define S_HANDSHAKE_DROPS_MAX 3
//  How long --procs waits for its check handshake (a broker not up yet is
//  no error).
#define S_PREFLIGHT_MS 3000

//  The CURVE keys, read before any thread or process starts; --procs
//  children use the copy they inherit.
typedef struct {
    bool on;
    char server[CF_KEY_Z85_SIZE];
    cf_keypair_t pair;
    const char *monitor;        //  inproc endpoint to report handshakes to, or NULL
} s_curve_t;

static cf_err_t s_socket_setup(void *socket, void *arg)
{
    s_curve_t *curve = arg;
    if (curve->on) {
        cf_err_t rc = cf_keys_apply_client(socket, curve->server, curve->pair.public_z85,
                                           curve->pair.secret_z85);
        if (rc != CF_OK)
            return rc;
    }
    if (curve->monitor
        && zmq_socket_monitor(socket, curve->monitor,
                              ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH
                              | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
                              | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) != 0)
        return cf_error_set(CF_ESYS, "cannot watch the handshakes: %s", zmq_strerror(errno));
    return CF_OK;
}

//  Reads the handshake events pending on monitor: 1 a handshake succeeded,
//  -1 the broker refused us (why says so), 0 nothing decisive yet.
static int s_handshakes(void *monitor, const s_curve_t *curve, const char *broker, int *drops,
                        char *why, size_t size)
{
    int verdict = 0;
    for (;;) {
        int value = 0;
        cf_err_t rc = cf_keys_monitor_read(monitor, &value);
        if (rc == CF_ETIMEDOUT)
            return verdict;
        char fp[CF_KEY_FP_SIZE] = "";
        if (curve->on)
            cf_keys_fingerprint(curve->pair.public_z85, fp);
        if (rc == CF_OK) {
            *drops = 0;
            verdict = 1;
        }
        else if (rc == CF_EAUTH) {
            snprintf(why, size, "the broker at %s refused this worker's key %s (not on its "
                     "worker list)", broker, curve->on ? fp : "(none)");
            return -1;
        }
        else if (rc == CF_EPROTO && value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) {
            snprintf(why, size, curve->on ? "the broker at %s does not use CURVE (drop "
                                            "--broker-key and --key, or fix the broker)"
                                          : "the broker at %s requires CURVE: give --broker-key "
                                            "and --key", broker);
            return -1;
        }
        else if (curve->on && (rc == CF_ESYS || rc == CF_EPROTO)
                 && ++*drops >= S_HANDSHAKE_DROPS_MAX) {
            snprintf(why, size, "the broker at %s dropped %d CURVE handshakes in a row: wrong "
                     "--broker-key, or the broker cannot authenticate workers", broker, *drops);
            return -1;
        }
    }
}

//  --procs: one handshake from here, before any worker process starts, so
//  a refused key fails the start instead of every child retrying forever.
static int s_preflight(const s_curve_t *curve, const char *broker, char *why, size_t size)
{
    void *ctx = zmq_ctx_new();
    void *sock = ctx ? zmq_socket(ctx, ZMQ_DEALER) : NULL;
    void *monitor = NULL;
    int verdict = 0, drops = 0, linger = 0;
    if (!sock) {
        snprintf(why, size, "cannot create a socket: %s", zmq_strerror(errno));
        verdict = -1;
        goto done;
    }
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    if (cf_keys_apply_client(sock, curve->server, curve->pair.public_z85,
                             curve->pair.secret_z85) != CF_OK
        || !(monitor = cf_keys_monitor_new(ctx, sock))) {
        snprintf(why, size, "%s", cf_last_error());
        verdict = -1;
        goto done;
    }
    if (zmq_connect(sock, broker) != 0) {
        snprintf(why, size, "cannot connect to %s: %s", broker, zmq_strerror(errno));
        verdict = -1;
        goto done;
    }
    for (int waited = 0; verdict == 0 && waited < S_PREFLIGHT_MS; waited += 50) {
        zmq_pollitem_t item = {monitor, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 50) > 0)
            verdict = s_handshakes(monitor, curve, broker, &drops, why, size);
    }
done:
    cf_keys_monitor_close(sock, &monitor);
    if (sock)
        zmq_close(sock);
    if (ctx)
        zmq_ctx_term(ctx);
    return verdict;
}

static void s_usage(FILE *out)
{
    fprintf(out,
            "usage: cf-worker [options]\n"
            "Runs tasks for a cf-broker.\n"
            "\n"
            "  --broker ENDPOINT   broker worker endpoint (default " S_DEFAULT_BROKER ")\n"
            "  --tasks PATH        task library to load (repeatable; at least one unless\n"
            "                      the program has tasks built in)\n"
            "  --threads N         execution threads (default: number of cores)\n"
            "  --procs N           run N worker processes with one thread each instead,\n"
            "                      replaced when they exit or crash\n"
            "  --heartbeat-ms N    heartbeat interval (default %d)\n"
            "  --liveness N        intervals of broker silence before it counts as lost\n"
            "                      (default %d)\n"
            "  --max-tasks N       exit after N tasks (per process with --procs: the\n"
            "                      process is replaced)\n"
            "  --broker-key FILE   the broker's public key file: use CURVE (with --key)\n"
            "  --key FILE          this worker's secret key file (cf-keygen NAME;\n"
            "                      mode 0600), its public key on the broker's worker list\n"
            "  --verbose           debug logging on stderr\n"
            "  --help              this text\n"
            "  --version           the version\n",
            CF_HEARTBEAT_IVL_MS, CF_HEARTBEAT_LIVENESS);
}

static int s_fail(const char *fmt, ...) CF_PRINTF(1, 2);

//  One line on stderr; returns the exit status of a failed start.
static int s_fail(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "cf-worker: %s\n", line);
    return 1;
}

//  A whole positive int within max, or -1.
static int s_number(const char *text, long max)
{
    if (!text || !*text)
        return -1;
    errno = 0;
    char *end = NULL;
    long value = strtol(text, &end, 10);
    if (errno || *end || value < 1 || value > max)
        return -1;
    return (int)value;
}

int main(int argc, char **argv)
{
    const char *broker = S_DEFAULT_BROKER;
    const char *libraries[S_MAX_LIBRARIES];
    int nlibraries = 0;
    int threads = 0, procs = 0, ivl_ms = 0, liveness = 0, max_tasks = 0;
    bool verbose = false;
    const char *broker_key = NULL, *key = NULL;

    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        if (!strcmp(flag, "--help") || !strcmp(flag, "-h")) {
            s_usage(stdout);
            return 0;
        }
        if (!strcmp(flag, "--version")) {
            printf("cf-worker %d.%d.%d\n", CF_VERSION_MAJOR, CF_VERSION_MINOR, CF_VERSION_PATCH);
            return 0;
        }
        if (!strcmp(flag, "--verbose")) {
            verbose = true;
            continue;
        }
        bool takes_value = !strcmp(flag, "--broker") || !strcmp(flag, "--tasks")
                        || !strcmp(flag, "--threads") || !strcmp(flag, "--procs")
                        || !strcmp(flag, "--heartbeat-ms") || !strcmp(flag, "--liveness")
                        || !strcmp(flag, "--max-tasks") || !strcmp(flag, "--broker-key")
                        || !strcmp(flag, "--key");
        if (!takes_value)
            return s_fail("unknown option '%s' (see --help)", flag);
        if (i + 1 >= argc)
            return s_fail("%s needs a value", flag);
        const char *value = argv[++i];
        int *number = NULL;
        long max = 1000000;
        if (!strcmp(flag, "--broker"))
            broker = value;
        else if (!strcmp(flag, "--broker-key"))
            broker_key = value;
        else if (!strcmp(flag, "--key"))
            key = value;
        else if (!strcmp(flag, "--tasks")) {
            if (nlibraries == S_MAX_LIBRARIES)
                return s_fail("%s", "too many --tasks");
            libraries[nlibraries++] = value;
        }
        else if (!strcmp(flag, "--threads"))
            number = &threads, max = 4096;
        else if (!strcmp(flag, "--procs"))
            number = &procs, max = 4096;
        else if (!strcmp(flag, "--heartbeat-ms"))
            number = &ivl_ms, max = 3600 * 1000;
        else if (!strcmp(flag, "--liveness"))
            number = &liveness, max = 1000;
        else
            number = &max_tasks, max = INT_MAX;
        if (number) {
            *number = s_number(value, max);
            if (*number < 0)
                return s_fail("%s needs a whole number from 1 to %ld, got '%s'", flag, max,
                              value);
        }
    }
    if (!*broker)
        return s_fail("%s", "--broker needs an endpoint");
    if (!broker_key != !key)
        return s_fail("%s", "CURVE needs both --broker-key (the broker's public key file) and "
                            "--key (this worker's secret key file)");
    static s_curve_t curve;
    if (broker_key) {
        if (!zmq_has("curve"))
            return s_fail("%s", "this libzmq was built without CURVE support");
        if (cf_keys_read_public(broker_key, curve.server) != CF_OK
            || cf_keys_read_pair(key, &curve.pair) != CF_OK) {
            int status = s_fail("%s", cf_last_error());
            cf_keys_wipe(&curve.pair);
            return status;
        }
        curve.on = true;
    }
    cf_log_set_handler(cf_log_to_stderr, NULL, verbose ? CF_LOG_DEBUG : CF_LOG_INFO);

    for (int i = 0; i < nlibraries; i++) {
        if (cf_registry_load(libraries[i]) != CF_OK)
            return s_fail("%s", cf_last_error());
    }
    //  cf.chunk is always there; anything more is a task.
    if (cf_registry_count() <= 1)
        return s_fail("%s", "no tasks to run: give --tasks PATH (a library of CF_TASK "
                            "functions)");
    if (threads == 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        threads = cores > 0 ? (int)cores : 1;
    }

    //  Signals are taken by this thread only: blocked before any thread
    //  starts, so every thread inherits the mask.
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    if (sigprocmask(SIG_BLOCK, &stop, NULL) != 0)
        return s_fail("cannot block signals: %s", strerror(errno));

    cf_worker_t *worker = NULL;
    cf_procs_t *pool = NULL;
    void *ctx = NULL, *monitor = NULL;
    int status = 0, drops = 0;
    char why[512];
    if (procs > 0) {
        if (curve.on && s_preflight(&curve, broker, why, sizeof why) < 0) {
            cf_keys_wipe(&curve.pair);
            return s_fail("%s", why);
        }
        pool = cf_procs_new(&(cf_procs_config_t){
            .count = procs,
            .threads = 1,
            .endpoint = broker,
            .max_tasks_per_worker = max_tasks,
            .heartbeat_ivl_ms = ivl_ms,
            .heartbeat_liveness = liveness,
            //  Exits are logged by cf_procs; a remote broker notices a
            //  dead worker by its silence.
            .exit_on_broker_loss = false,
            .socket_setup = curve.on ? s_socket_setup : NULL,
            .socket_setup_arg = &curve,
        });
        if (!pool) {
            cf_keys_wipe(&curve.pair);
            return s_fail("%s", cf_last_error());
        }
        printf("ready procs=%d\n", procs);
    }
    else {
        //  The worker's socket reports its handshakes to a PAIR of ours in
        //  the same context, connected before the worker binds the monitor
        //  so no event is lost.
        static const char monitor_endpoint[] = "inproc://cf-worker-handshakes";
        ctx = zmq_ctx_new();
        monitor = ctx ? zmq_socket(ctx, ZMQ_PAIR) : NULL;
        if (!monitor || zmq_connect(monitor, monitor_endpoint) != 0) {
            cf_keys_wipe(&curve.pair);
            return s_fail("cannot watch the handshakes: %s", zmq_strerror(errno));
        }
        curve.monitor = monitor_endpoint;
        worker = cf_worker_new(&(cf_worker_config_t){
            .endpoint = broker,
            .threads = threads,
            .heartbeat_ivl_ms = ivl_ms,
            .heartbeat_liveness = liveness,
            .max_tasks = max_tasks,
            .exit_on_broker_loss = false,
            .zmq_context = ctx,
            .socket_setup = s_socket_setup,
            .socket_setup_arg = &curve,
        });
        cf_keys_wipe(&curve.pair);      //  applied to the socket: no longer needed
        if (!worker)
            return s_fail("%s", cf_last_error());
        printf("ready worker=%s threads=%d\n", cf_worker_identity(worker), threads);
    }
    fflush(stdout);

    struct timespec tick = {.tv_sec = 0, .tv_nsec = S_TICK_MS * 1000000L};
    while (true) {
        int sig = sigtimedwait(&stop, NULL, &tick);
        if (sig == SIGINT || sig == SIGTERM) {
            cf_log_info("worker", "%s: stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
            break;
        }
        bool ended = worker && cf_worker_wait(worker, 0) == CF_OK;
        if ((ended && cf_worker_ended(worker) == CF_EAUTH) || (pool && cf_procs_refused(pool))) {
            fprintf(stderr, "cf-worker: the broker at %s refused this worker's key (revoked, "
                    "or not a worker key)\n", broker);
            status = 1;
            break;
        }
        if (ended)
            break;                  //  --max-tasks reached
        if (monitor && s_handshakes(monitor, &curve, broker, &drops, why, sizeof why) < 0) {
            fprintf(stderr, "cf-worker: %s\n", why);
            status = 1;
            break;
        }
    }
    cf_worker_destroy(&worker);
    cf_procs_destroy(&pool, S_PROCS_GRACE_MS);
    if (monitor) {
        int linger = 0;
        zmq_setsockopt(monitor, ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(monitor);
    }
    if (ctx)
        zmq_ctx_term(ctx);
    cf_keys_wipe(&curve.pair);
    return status;
}

//  SPDX-License-Identifier: MIT
//
//  cf-worker: the worker actor as a daemon. Loads task libraries, connects
//  to a broker's worker endpoint and runs tasks: in N threads of this
//  process, or (--procs N) in N single-threaded worker processes that a
//  supervisor replaces when they exit or crash.
//
//  Prints one line to stdout once serving, for scripts and tests:
//      ready worker=<identity> threads=<N>     or     ready procs=<N>
//  SIGINT/SIGTERM: running tasks finish and their results go out, queued
//  ones are handed back to the broker (DISCONNECT), exit 0. A startup
//  failure prints one line to stderr and exits 1; a usage error (unknown
//  flag, missing or bad value, malformed endpoint) exits 2, as in every
//  cfutures tool.
//
//  Several brokers (--broker repeated, or a comma-separated list): one
//  connection to each, and the slots shared among them (cf_worker.h); on
//  exit one line says how many tasks it held at most and took from each.
//  With --procs every worker process serves all of them; --max-tasks
//  counts the tasks of every broker.
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
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define S_LOG "worker"

#define S_DEFAULT_BROKER "tcp://127.0.0.1:5556"
#define S_MAX_LIBRARIES  64
//  How long worker processes get to finish their task after SIGTERM.
#define S_PROCS_GRACE_MS 30000
//  How often the main thread looks at its worker while waiting for signals.
#define S_TICK_MS        200
//  How long --procs waits for its check handshake (a broker not up yet is
//  no error).
#define S_PREFLIGHT_MS   3000
//  Exit statuses (the man page lists them), and "keep going".
#define S_EXIT_FAILURE   1
#define S_EXIT_USAGE     2
#define S_RUN            -1

//  The command line.
typedef struct {
    const char *broker;    //  brokers[0]
    //  Each given once; a value is cut at commas into buffers of its own.
    const char *brokers[CF_WORKER_MAX_BROKERS];
    char broker_text[CF_WORKER_MAX_BROKERS][256];
    int nbrokers;
    const char *libraries[S_MAX_LIBRARIES];
    int nlibraries;
    int threads, procs, ivl_ms, liveness, max_tasks;    //  0: the default
    bool verbose;
    bool no_inline;
    const char *broker_key, *key;    //  both or neither
} s_options_t;

//  The CURVE keys, read before any thread or process starts; --procs
//  children use the copy they inherit.
typedef struct {
    bool on;
    //  The brokers' public keys, in the order of the brokers (of
    //  s_options_t); server[0] for every broker when one key was given.
    char server[CF_WORKER_MAX_BROKERS][CF_KEY_Z85_SIZE];
    int nservers;
    const char *const *brokers;    //  s_options_t's, to find a socket's key
    int nbrokers;
    cf_keypair_t pair;
    //  Threads mode: each broker's first socket reports its handshakes to
    //  inproc://cf-worker-handshakes-N (N its index), where a PAIR of ours
    //  listens; set up on the worker's actor thread.
    bool monitoring;
    bool watched[CF_WORKER_MAX_BROKERS];
} s_curve_t;

#define S_MONITOR_ENDPOINT "inproc://cf-worker-handshakes-%d"

//  The index of the broker at endpoint among the brokers given (0 when not
//  found: one broker).
static int s_broker_index(const s_curve_t *curve, const char *endpoint)
{
    for (int i = 0; i < curve->nbrokers; i++)
        if (!strcmp(curve->brokers[i], endpoint))
            return i;
    return 0;
}

static cf_err_t s_socket_setup(void *socket, const char *endpoint, void *arg)
{
    s_curve_t *curve = arg;
    if (curve->on) {
        cf_err_t rc = cf_keys_apply_client(socket, curve->server[s_broker_index(curve, endpoint)],
                                           curve->pair.public_z85, curve->pair.secret_z85);
        if (rc != CF_OK)
            return rc;
    }
    //  Each broker's first socket only: our PAIR connected to that
    //  monitor's endpoint once, and an inproc connection is not made again.
    //  A fresh socket the worker opens after losing a broker (cf_link.h)
    //  goes unwatched, so a key refused on it shows as a broker that stays
    //  silent.
    int index = s_broker_index(curve, endpoint);
    if (!curve->monitoring || curve->watched[index])
        return CF_OK;
    curve->watched[index] = true;
    char monitor[64];
    snprintf(monitor, sizeof monitor, S_MONITOR_ENDPOINT, index);
    if (zmq_socket_monitor(socket, monitor,
                           ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH
                               | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
                               | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        != 0)
        return cf_error_set(CF_ESYS, "cannot watch the handshakes: %s", zmq_strerror(errno));
    return CF_OK;
}

//  Reads the handshake events pending on monitor: 1 a handshake succeeded,
//  -1 the broker refused us (why says so), 0 nothing decisive yet.
static int s_handshakes(void *monitor, cf_keys_judge_t *judge, char *why, size_t size)
{
    int verdict = 0;
    for (;;) {
        int value = 0;
        cf_err_t rc = cf_keys_monitor_read(monitor, &value);
        if (rc == CF_ETIMEDOUT)
            return verdict;
        int said = cf_keys_judge(judge, rc, value, why, size);
        if (said < 0)
            return -1;
        if (said > 0)
            verdict = 1;
    }
}

//  What the handshakes of this worker's key are judged as; fp holds the
//  key's fingerprint as long as the judge is used.
static cf_keys_judge_t s_judge(const s_curve_t *curve, const char *broker, char fp[CF_KEY_FP_SIZE])
{
    fp[0] = '\0';
    if (curve->on)
        cf_keys_fingerprint(curve->pair.public_z85, fp);
    return (cf_keys_judge_t){
        .curve = curve->on,
        .who = "worker",
        .endpoint = broker,
        .key_fp = fp,
        .key_options = "--broker-key and --key",
    };
}

//  --procs: one handshake from here, before any worker process starts, so
//  a refused key fails the start instead of every child retrying forever.
static int s_preflight(const s_curve_t *curve, const char *broker, char *why, size_t size)
{
    void *ctx = zmq_ctx_new();
    void *sock = ctx ? zmq_socket(ctx, ZMQ_DEALER) : NULL;
    void *monitor = NULL;
    int verdict = 0, linger = 0;
    char fp[CF_KEY_FP_SIZE];
    cf_keys_judge_t judge = s_judge(curve, broker, fp);
    if (!sock) {
        snprintf(why, size, "cannot create a socket: %s", zmq_strerror(errno));
        verdict = -1;
        goto done;
    }
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    if (cf_keys_apply_client(sock, curve->server[s_broker_index(curve, broker)],
                             curve->pair.public_z85, curve->pair.secret_z85)
            != CF_OK
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
        zmq_pollitem_t item = { monitor, 0, ZMQ_POLLIN, 0 };
        if (zmq_poll(&item, 1, 50) > 0)
            verdict = s_handshakes(monitor, &judge, why, size);
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
            "Usage: cf-worker [OPTIONS]\n"
            "Runs tasks for a cf-broker: loads task libraries (CF_TASK functions),\n"
            "connects to the broker's worker endpoint and runs the tasks it hands out,\n"
            "in threads of this process or in worker processes.\n"
            "\n"
            "Options:\n"
            "  --broker ENDPOINT   the broker's worker endpoint (default " S_DEFAULT_BROKER ")\n"
            "                      tcp://HOST:PORT or ipc://PATH; repeat it, or give a\n"
            "                      comma-separated list, to serve several brokers at once\n"
            "                      (their tasks share this worker's threads)\n"
            "  --tasks PATH        task library to load (repeatable; at least one unless\n"
            "                      the program has tasks built in)\n"
            "  --threads N         execution threads (default: number of cores)\n"
            "  --procs N           run N worker processes with one thread each instead,\n"
            "                      replaced when they exit or crash\n"
            "  --heartbeat-ms N    heartbeat interval in ms (default %d)\n"
            "  --liveness N        intervals of broker silence before it counts as lost\n"
            "                      (default %d)\n"
            "  --max-tasks N       exit after N tasks (per process with --procs: the\n"
            "                      process is replaced)\n"
            "  --broker-key FILE   the broker's public key file: use CURVE (with --key);\n"
            "                      with several brokers one file for all, or one per\n"
            "                      broker, comma-separated in the order of --broker\n"
            "  --key FILE          this worker's secret key file (cf-keygen NAME;\n"
            "                      mode 0600), its public key on the broker's worker list\n"
            "  --no-inline         run every task on an execution thread (by default\n"
            "                      the receiving thread runs short tasks itself)\n"
            "  -v, --verbose       log debug messages too\n"
            "  -h, --help          show this text and exit\n"
            "  --version           show the version and exit\n"
            "\n"
            "Once serving, prints one line to stdout:\n"
            "  ready worker=IDENTITY threads=N      or      ready procs=N\n"
            "Logs go to stderr. SIGINT or SIGTERM: running tasks finish, queued ones go\n"
            "back to the broker, then exit.\n"
            "\n"
            "Exit status: 0 stopped by a signal or after --max-tasks, 1 could not start\n"
            "or failed (a task library that does not load, a key file that cannot be\n"
            "read or is open to others, a broker that refuses this worker's key), 2\n"
            "usage error (unknown option, missing or bad value, malformed endpoint).\n",
            CF_HEARTBEAT_IVL_MS, CF_HEARTBEAT_LIVENESS);
}

static int s_say(int status, const char *fmt, va_list ap)
{
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    fprintf(stderr, "cf-worker: %s%s\n", line, status == S_EXIT_USAGE ? " (try --help)" : "");
    return status;
}

static int s_fail(const char *fmt, ...) CF_PRINTF(1, 2);
static int s_usage_error(const char *fmt, ...) CF_PRINTF(1, 2);

//  One line on stderr; returns the exit status of a runtime failure.
static int s_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int status = s_say(S_EXIT_FAILURE, fmt, ap);
    va_end(ap);
    return status;
}

//  One line on stderr; returns the exit status of a usage error.
static int s_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int status = s_say(S_EXIT_USAGE, fmt, ap);
    va_end(ap);
    return status;
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

//  True for an endpoint a worker can connect to: tcp://HOST:PORT (PORT
//  1..65535) or ipc://PATH.
static bool s_endpoint_valid(const char *endpoint)
{
    if (!strncmp(endpoint, "ipc://", 6))
        return endpoint[6] != '\0';
    if (strncmp(endpoint, "tcp://", 6) != 0)
        return false;
    const char *host = endpoint + 6;
    const char *colon = strrchr(host, ':');
    return colon && colon != host && !strpbrk(host, " /*") && s_number(colon + 1, 65535) > 0;
}

//  --broker's value: one endpoint or several, comma-separated; a broker
//  given again is served once (with a warning).
static int s_brokers(s_options_t *options, const char *value)
{
    const char *at = value;
    do {
        size_t len = strcspn(at, ",");
        char one[256];
        if (len >= sizeof one)
            return s_usage_error("--broker: endpoint too long: '%.40s...'", at);
        memcpy(one, at, len);
        one[len] = '\0';
        if (!s_endpoint_valid(one))
            return s_usage_error("--broker: not an endpoint: '%s' (tcp://HOST:PORT or "
                                 "ipc://PATH)",
                                 one);
        bool again = false;
        for (int i = 0; i < options->nbrokers && !again; i++)
            again = strcmp(options->brokers[i], one) == 0;
        if (again)
            fprintf(stderr, "cf-worker: --broker %s given twice: served once\n", one);
        else if (options->nbrokers == CF_WORKER_MAX_BROKERS)
            return s_usage_error("--broker: more than %d brokers", CF_WORKER_MAX_BROKERS);
        else {
            memcpy(options->broker_text[options->nbrokers], one, len + 1);
            options->brokers[options->nbrokers] = options->broker_text[options->nbrokers];
            options->nbrokers++;
        }
        at += len;
    } while (*at++ == ',');
    options->broker = options->brokers[0];
    return S_RUN;
}

//  The flags that take a value, and where a number goes (NULL: a string).
static int s_value(s_options_t *options, const char *flag, const char *value)
{
    static const struct {
        const char *flag;
        size_t offset;
        long max;
    } numbers[] = {
        { "--threads", offsetof(s_options_t, threads), 4096 },
        { "--procs", offsetof(s_options_t, procs), 4096 },
        { "--heartbeat-ms", offsetof(s_options_t, ivl_ms), 3600 * 1000 },
        { "--liveness", offsetof(s_options_t, liveness), 1000 },
        { "--max-tasks", offsetof(s_options_t, max_tasks), INT_MAX },
    };
    for (size_t i = 0; i < sizeof numbers / sizeof numbers[0]; i++) {
        if (strcmp(flag, numbers[i].flag) != 0)
            continue;
        int number = s_number(value, numbers[i].max);
        if (number < 0)
            return s_usage_error("%s needs a whole number from 1 to %ld, got '%s'", flag,
                                 numbers[i].max, value);
        *(int *)((char *)options + numbers[i].offset) = number;
        return S_RUN;
    }
    if (!strcmp(flag, "--broker"))
        return s_brokers(options, value);
    else if (!strcmp(flag, "--broker-key") || !strcmp(flag, "--key")) {
        if (!*value)
            return s_usage_error("%s needs a path", flag);
        *(flag[2] == 'b' ? &options->broker_key : &options->key) = value;
    }
    else {    //  --tasks
        if (options->nlibraries == S_MAX_LIBRARIES)
            return s_usage_error("more than %d --tasks", S_MAX_LIBRARIES);
        options->libraries[options->nlibraries++] = value;
    }
    return S_RUN;
}

static bool s_takes_value(const char *flag)
{
    static const char *const flags[] = { "--broker",    "--tasks",        "--threads",
                                         "--procs",     "--heartbeat-ms", "--liveness",
                                         "--max-tasks", "--broker-key",   "--key" };
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        if (!strcmp(flag, flags[i]))
            return true;
    return false;
}

static int s_parse(int argc, char **argv, s_options_t *options)
{
    *options = (s_options_t){ .broker = S_DEFAULT_BROKER };
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        if (!strcmp(flag, "--help") || !strcmp(flag, "-h")) {
            s_usage(stdout);
            return 0;
        }
        if (!strcmp(flag, "--version")) {
            printf("cf-worker (cfutures) %s\n", cf_version(NULL, NULL, NULL));
            return 0;
        }
        if (!strcmp(flag, "--verbose") || !strcmp(flag, "-v")) {
            options->verbose = true;
            continue;
        }
        if (!strcmp(flag, "--no-inline")) {
            options->no_inline = true;
            continue;
        }
        if (strncmp(flag, "--", 2) != 0 || !strcmp(flag, "--"))
            return s_usage_error("unexpected argument '%s'", flag);
        if (!s_takes_value(flag))
            return s_usage_error("unknown option %s", flag);
        if (i + 1 >= argc)
            return s_usage_error("%s needs a value", flag);
        int status = s_value(options, flag, argv[++i]);
        if (status != S_RUN)
            return status;
    }
    if (!options->broker_key != !options->key)
        return s_usage_error("CURVE needs both --broker-key (the broker's public key file) and "
                             "--key (this worker's secret key file)");
    return S_RUN;
}

//  --broker-key: one public key file for every broker, or one per broker,
//  comma-separated in the order of --broker.
static int s_server_keys(const s_options_t *options, s_curve_t *curve)
{
    int nbrokers = options->nbrokers ? options->nbrokers : 1;
    const char *at = options->broker_key;
    curve->nservers = 0;
    do {
        size_t len = strcspn(at, ",");
        char path[4096];
        if (len == 0 || len >= sizeof path)
            return s_fail("--broker-key: an empty or too long path in '%s'", options->broker_key);
        if (curve->nservers == nbrokers)
            return s_fail("--broker-key: more keys than the %d brokers given", nbrokers);
        memcpy(path, at, len);
        path[len] = '\0';
        if (cf_keys_read_public(path, curve->server[curve->nservers]) != CF_OK)
            return s_fail("%s", cf_last_error());
        curve->nservers++;
        at += len;
    } while (*at++ == ',');
    if (curve->nservers != 1 && curve->nservers != nbrokers)
        return s_fail("--broker-key: %d keys for %d brokers (give one for all, or one per "
                      "broker in the order of --broker)",
                      curve->nservers, nbrokers);
    if (curve->nservers == 1)
        for (int i = 1; i < nbrokers; i++)
            memcpy(curve->server[i], curve->server[0], sizeof curve->server[0]);
    curve->nservers = nbrokers;
    return S_RUN;
}

//  The CURVE keys and the task libraries, before any thread starts.
static int s_load(const s_options_t *options, s_curve_t *curve)
{
    if (options->broker_key) {
        if (!zmq_has("curve"))
            return s_fail("%s", "this libzmq was built without CURVE support");
        //  A secret key file open to group or others is refused here, with
        //  the chmod that fixes it in the message (cf_keys).
        int status = s_server_keys(options, curve);
        if (status != S_RUN)
            return status;
        if (cf_keys_read_pair(options->key, &curve->pair) != CF_OK) {
            int status = s_fail("%s", cf_last_error());
            cf_keys_wipe(&curve->pair);
            return status;
        }
        curve->on = true;
    }
    for (int i = 0; i < options->nlibraries; i++) {
        if (cf_registry_load(options->libraries[i]) != CF_OK)
            return s_fail("%s", cf_last_error());
    }
    //  cf.chunk is always there; anything more is a task.
    if (cf_registry_count() <= 1)
        return s_fail("%s", "no tasks to run: give --tasks PATH (a library of CF_TASK "
                            "functions)");
    return S_RUN;
}

//  --procs: the supervisor of worker processes.
static int s_start_procs(const s_options_t *options, s_curve_t *curve, cf_procs_t **pool)
{
    char why[512];
    for (int i = 0; curve->on && i < (options->nbrokers ? options->nbrokers : 1); i++)
        if (s_preflight(curve, options->nbrokers ? options->brokers[i] : options->broker, why,
                        sizeof why)
            < 0)
            return s_fail("%s", why);
    *pool = cf_procs_new(&(cf_procs_config_t){
        .count = options->procs,
        .threads = 1,
        .endpoint = options->broker,
        .endpoints = options->brokers,
        .endpoint_count = options->nbrokers,
        .max_tasks_per_worker = options->max_tasks,
        .heartbeat_ivl_ms = options->ivl_ms,
        .heartbeat_liveness = options->liveness,
        //  Exits are logged by cf_procs; a remote broker notices a dead
        //  worker by its silence.
        .exit_on_broker_loss = false,
        .announce_functions = true,
        .socket_setup = curve->on ? s_socket_setup : NULL,
        .socket_setup_arg = curve,
    });
    if (!*pool)
        return s_fail("%s", cf_last_error());
    printf("ready procs=%d\n", options->procs);
    return S_RUN;
}

//  Threads: the worker actor in this process. Each broker's socket reports
//  its handshakes to a PAIR of ours in the same context (monitors[i] for
//  broker i), connected before the worker binds the monitor so no event is
//  lost.
static int s_start_threads(const s_options_t *options, s_curve_t *curve, void **ctx,
                           void **monitors, cf_worker_t **worker)
{
    int threads = options->threads;
    if (threads == 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        threads = cores > 0 ? (int)cores : 1;
    }
    *ctx = zmq_ctx_new();
    for (int i = 0; i < curve->nbrokers; i++) {
        char endpoint[64];
        snprintf(endpoint, sizeof endpoint, S_MONITOR_ENDPOINT, i);
        monitors[i] = *ctx ? zmq_socket(*ctx, ZMQ_PAIR) : NULL;
        if (!monitors[i] || zmq_connect(monitors[i], endpoint) != 0)
            return s_fail("cannot watch the handshakes: %s", zmq_strerror(errno));
    }
    curve->monitoring = true;
    *worker = cf_worker_new(&(cf_worker_config_t){
        .endpoint = options->broker,
        .endpoints = options->brokers,
        .endpoint_count = options->nbrokers,
        .threads = threads,
        .heartbeat_ivl_ms = options->ivl_ms,
        .heartbeat_liveness = options->liveness,
        .max_tasks = options->max_tasks,
        .exit_on_broker_loss = false,
        .no_inline = options->no_inline,
        .announce_functions = true,
        .zmq_context = *ctx,
        .socket_setup = s_socket_setup,
        .socket_setup_arg = curve,
    });
    if (!*worker)
        return s_fail("%s", cf_last_error());
    printf("ready worker=%s threads=%d\n", cf_worker_identity(*worker), threads);
    return S_RUN;
}

//  Until a signal, --max-tasks, or a broker refusing our key: the exit
//  status.
static int s_watch(const s_options_t *options, const sigset_t *stop, s_curve_t *curve,
                   void *const *monitors, cf_worker_t *worker, cf_procs_t *pool)
{
    struct timespec tick = { .tv_sec = 0, .tv_nsec = S_TICK_MS * 1000000L };
    char fp[CF_KEY_FP_SIZE];
    cf_keys_judge_t judges[CF_WORKER_MAX_BROKERS];
    for (int i = 0; i < curve->nbrokers; i++)
        judges[i] = s_judge(curve, curve->brokers[i], fp);
    char why[512];
    while (true) {
        int sig = sigtimedwait(stop, NULL, &tick);
        if (sig == SIGINT || sig == SIGTERM) {
            cf_log_info(S_LOG, "%s: stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
            return 0;
        }
        bool ended = worker && cf_worker_wait(worker, 0) == CF_OK;
        if ((ended && cf_worker_ended(worker) == CF_EAUTH) || (pool && cf_procs_refused(pool)))
            return s_fail("the broker at %s refused this worker's key (revoked, or not a "
                          "worker key)",
                          options->broker);
        if (ended)
            return 0;    //  --max-tasks reached
        for (int i = 0; i < curve->nbrokers; i++)
            if (monitors[i] && s_handshakes(monitors[i], &judges[i], why, sizeof why) < 0)
                return s_fail("%s", why);
    }
}

static int s_run(const s_options_t *options)
{
    static s_curve_t curve;    //  children of --procs use the copy they inherit
    curve.brokers = options->nbrokers ? options->brokers : &options->broker;
    curve.nbrokers = options->nbrokers ? options->nbrokers : 1;
    int status = s_load(options, &curve);
    if (status != S_RUN)
        return status;
    cf_log_set_handler(cf_log_to_stderr, NULL, options->verbose ? CF_LOG_DEBUG : CF_LOG_INFO);
    //  Signals are taken by this thread only: blocked before any thread
    //  starts, so every thread inherits the mask.
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    if (sigprocmask(SIG_BLOCK, &stop, NULL) != 0) {
        cf_keys_wipe(&curve.pair);
        return s_fail("cannot block signals: %s", strerror(errno));
    }
    cf_worker_t *worker = NULL;
    cf_procs_t *pool = NULL;
    void *ctx = NULL, *monitors[CF_WORKER_MAX_BROKERS] = { NULL };
    if (options->procs > 0)
        status = s_start_procs(options, &curve, &pool);
    else
        status = s_start_threads(options, &curve, &ctx, monitors, &worker);
    //  Applied to the socket(s) or inherited by the children: not needed.
    cf_keys_wipe(&curve.pair);
    if (status == S_RUN) {
        fflush(stdout);
        status = s_watch(options, &stop, &curve, monitors, worker, pool);
    }
    cf_worker_destroy(&worker);
    cf_procs_destroy(&pool, S_PROCS_GRACE_MS);
    for (int i = 0; i < curve.nbrokers; i++) {
        if (!monitors[i])
            continue;
        int linger = 0;
        zmq_setsockopt(monitors[i], ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(monitors[i]);
    }
    if (ctx)
        zmq_ctx_term(ctx);
    return status;
}

int main(int argc, char **argv)
{
    s_options_t options;
    int status = s_parse(argc, argv, &options);
    return status == S_RUN ? s_run(&options) : status;
}

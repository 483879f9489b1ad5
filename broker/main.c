//  SPDX-License-Identifier: MIT
//
//  cf-broker: the broker actor as a daemon. Clients connect to one
//  endpoint, workers to the other; see cf_broker.h for what it does.
//
//  Startup either ends with one line on stdout,
//      ready clients=tcp://127.0.0.1:5555 workers=tcp://127.0.0.1:5556
//  (the resolved endpoints: tests and scripts read the ports chosen for
//  ":*" from it), or with one line on stderr saying why. Exit status: 0
//  after SIGINT/SIGTERM (or --help, --version), 1 when it cannot start or
//  fails while running, 2 for a usage error (unknown flag, missing or bad
//  value, malformed endpoint): the same convention as every cfutures tool.
//
//  Signals are taken by the main thread only (blocked everywhere, then
//  sigtimedwait): SIGHUP reloads the CURVE allow-lists (client, worker and
//  admin keys), SIGUSR1 logs one
//  stats line (cf_broker_stats, which is thread-safe, called from here and
//  never from a handler), and --stats-interval logs the same line every N
//  seconds.
//
//  With --curve-secret and an allow-list (docs/security.md) both endpoints
//  are CURVE servers that fail closed, authenticated by the cf_auth ZAP
//  handler, which starts in the broker's zmq context before anything binds.
//  Then STATS (cf-admin) is answered only to keys on --admin-keys, which
//  connect to the client endpoint and may ask nothing else; plaintext
//  brokers answer STATS from anyone.

#include "cf_auth.h"
#include "cf_broker.h"
#include "cf_clock.h"
#include "cf_log.h"
#include "cf_proto.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define S_LOG "broker"

#define S_DEFAULT_CLIENTS      "tcp://127.0.0.1:5555"
#define S_DEFAULT_WORKERS      "tcp://127.0.0.1:5556"
//  Exit statuses (the man page lists them).
#define S_EXIT_FAILURE         1
#define S_EXIT_USAGE           2
//  Keep going: what s_parse returns when the broker should run.
#define S_RUN                  -1
//  --stats-interval at most a day.
#define S_MAX_STATS_INTERVAL_S 86400

typedef struct {
    cf_broker_config_t broker;
    const char *curve_secret;    //  NULL: plaintext
    const char *client_keys;
    const char *worker_keys;
    const char *admin_keys;
    bool verbose;
    int stats_interval_s;    //  0: no periodic stats line
} s_options_t;

static void s_usage(FILE *out)
{
    fprintf(out,
            "Usage: cf-broker [OPTIONS]\n"
            "Runs a cfutures broker: clients submit tasks at one endpoint, cf-worker\n"
            "processes take them at the other. Queues are per client and served in\n"
            "turn; tasks of lost workers are retried; over the queue limits tasks are\n"
            "answered BUSY and clients resend them later.\n"
            "\n"
            "Options:\n"
            "  --clients ENDPOINT          where clients connect (default %s)\n"
            "  --workers ENDPOINT          where workers connect (default %s)\n"
            "                              tcp://HOST:PORT, ipc://PATH or inproc://NAME;\n"
            "                              \"tcp://HOST:*\" picks a free port (the ready line\n"
            "                              shows which)\n"
            "  --heartbeat-ms N            heartbeat interval in ms (default %d)\n"
            "  --liveness N                silent intervals before a peer is lost (default %d)\n"
            "  --max-queued N              tasks queued in all (default %u)\n"
            "  --max-queued-per-client N   tasks queued per client (default: --max-queued)\n"
            "  --no-worker-timeout MS      how long a task waits while no connected worker\n"
            "                              serves its function before it fails with\n"
            "                              NoWorker (default %u; a task may set its own)\n"
            "  --curve-secret FILE         the broker's secret key file (cf-keygen NAME);\n"
            "                              turns CURVE encryption and authentication on\n"
            "  --client-keys PATH          public keys allowed to submit: a directory of\n"
            "                              *.key files or a file with one key per line\n"
            "  --worker-keys PATH          public keys allowed to work (same forms)\n"
            "  --admin-keys PATH           public keys allowed to ask for STATS (cf-admin)\n"
            "                              at the client endpoint, and nothing else (same\n"
            "                              forms); with CURVE no other key gets STATS\n"
            "  --stats-interval SECONDS    log a stats line every SECONDS (default: never;\n"
            "                              SIGUSR1 logs one at any time)\n"
            "  -v, --verbose               log debug messages too\n"
            "  -h, --help                  show this text and exit\n"
            "  --version                   show the version and exit\n"
            "\n"
            "Once serving, prints one line to stdout:\n"
            "  ready clients=ENDPOINT workers=ENDPOINT\n"
            "Logs go to stderr. SIGINT or SIGTERM stops the broker; SIGHUP reloads\n"
            "--client-keys, --worker-keys and --admin-keys (on an error the old lists\n"
            "stay; a removed key is cut off, connected or not); SIGUSR1 logs a stats\n"
            "line.\n"
            "\n"
            "Exit status: 0 stopped by a signal, 1 could not start or failed, 2 usage\n"
            "error (unknown option, missing or bad value, malformed endpoint).\n"
            "\n"
            "Without --curve-secret traffic is not encrypted: keep the endpoints on\n"
            "loopback or a trusted network (see docs/security.md). cf-admin shows a\n"
            "running broker's counters (without CURVE, to anyone who can connect).\n",
            S_DEFAULT_CLIENTS, S_DEFAULT_WORKERS, CF_HEARTBEAT_IVL_MS, CF_HEARTBEAT_LIVENESS,
            CF_BROKER_MAX_QUEUED, CF_BROKER_NO_WORKER_WAIT_MS);
}

//  One line on stderr and the usage exit status.
static int s_usage_error(const char *fmt, ...) CF_PRINTF(1, 2);
static int s_usage_error(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "cf-broker: %s (try --help)\n", line);
    return S_EXIT_USAGE;
}

//  Each ROUTER becomes a CURVE server that fails closed, in the role domain
//  of its endpoint, so a key of the other role cannot even connect.
static cf_err_t s_curve_setup(void *socket, bool is_clients, void *arg)
{
    return cf_auth_apply_server(socket, arg,
                                is_clients ? CF_AUTH_DOMAIN_CLIENTS : CF_AUTH_DOMAIN_WORKERS);
}

//  A positive number that fits max, or false.
static bool s_parse_count(const char *text, unsigned long long max, unsigned long long *out)
{
    if (!text || !*text || *text == '-')
        return false;
    char *end;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 10);
    if (errno || *end || value == 0 || value > max)
        return false;
    *out = value;
    return true;
}

//  True for an endpoint ZeroMQ can bind: tcp://HOST:PORT (PORT 1..65535 or
//  '*'), ipc://PATH or inproc://NAME. Checked before binding so a typo is a
//  usage error with the flag's name, not a bind failure.
static bool s_endpoint_valid(const char *endpoint)
{
    if (!strncmp(endpoint, "ipc://", 6))
        return endpoint[6] != '\0';
    if (!strncmp(endpoint, "inproc://", 9))
        return endpoint[9] != '\0';
    if (strncmp(endpoint, "tcp://", 6) != 0)
        return false;
    const char *host = endpoint + 6;
    const char *colon = strrchr(host, ':');
    if (!colon || colon == host || strpbrk(host, " /"))
        return false;
    if (!strcmp(colon + 1, "*"))
        return true;
    unsigned long long port;
    return s_parse_count(colon + 1, 65535, &port);
}

//  True for tcp:// endpoints bound to something other than loopback;
//  ipc:// and inproc:// stay on this host.
static bool s_exposed(const char *endpoint)
{
    if (strncmp(endpoint, "tcp://", 6) != 0)
        return false;
    const char *host = endpoint + 6;
    const char *colon = strrchr(host, ':');
    size_t len = colon ? (size_t)(colon - host) : strlen(host);
    static const char *const loopback[] = { "127.0.0.1", "localhost", "[::1]", "::1", "lo" };
    for (size_t i = 0; i < sizeof loopback / sizeof loopback[0]; i++)
        if (strlen(loopback[i]) == len && strncmp(host, loopback[i], len) == 0)
            return false;
    //  Any 127.x.y.z address is loopback too.
    return !(len >= 4 && strncmp(host, "127.", 4) == 0);
}

enum {
    OPT_CLIENTS = 256,
    OPT_WORKERS,
    OPT_HEARTBEAT,
    OPT_LIVENESS,
    OPT_MAX_QUEUED,
    OPT_MAX_PER_CLIENT,
    OPT_NO_WORKER_TIMEOUT,
    OPT_VERSION,
    OPT_CURVE_SECRET,
    OPT_CLIENT_KEYS,
    OPT_WORKER_KEYS,
    OPT_STATS_INTERVAL,
    OPT_ADMIN_KEYS
};

//  One option with its value: S_RUN when taken, or an exit status.
static int s_option(int opt, const char *name, const char *value, s_options_t *options)
{
    unsigned long long number;
    switch (opt) {
    case OPT_CLIENTS:
    case OPT_WORKERS:
        if (!s_endpoint_valid(value))
            return s_usage_error("%s: not an endpoint: '%s' (tcp://HOST:PORT, ipc://PATH or "
                                 "inproc://NAME)",
                                 name, value);
        *(opt == OPT_CLIENTS ? &options->broker.client_endpoint
                             : &options->broker.worker_endpoint) = value;
        return S_RUN;
    case OPT_HEARTBEAT:
        if (!s_parse_count(value, INT_MAX / 1000, &number))
            return s_usage_error("%s must be a positive number of ms, got '%s'", name, value);
        options->broker.heartbeat_ivl_ms = (int)number;
        return S_RUN;
    case OPT_LIVENESS:
        if (!s_parse_count(value, 1000, &number))
            return s_usage_error("%s must be a number from 1 to 1000, got '%s'", name, value);
        options->broker.heartbeat_liveness = (int)number;
        return S_RUN;
    case OPT_MAX_QUEUED:
    case OPT_MAX_PER_CLIENT:
        if (!s_parse_count(value, SIZE_MAX, &number))
            return s_usage_error("%s must be a positive number, got '%s'", name, value);
        *(opt == OPT_MAX_QUEUED ? &options->broker.max_queued
                                : &options->broker.max_queued_per_client) = (size_t)number;
        return S_RUN;
    case OPT_NO_WORKER_TIMEOUT:
        if (!s_parse_count(value, UINT32_MAX, &number))
            return s_usage_error("%s must be a positive number of ms, got '%s'", name, value);
        options->broker.no_worker_wait_ms = (uint32_t)number;
        return S_RUN;
    case OPT_STATS_INTERVAL:
        if (!s_parse_count(value, S_MAX_STATS_INTERVAL_S, &number))
            return s_usage_error("%s must be a number of seconds from 1 to %d, got '%s'", name,
                                 S_MAX_STATS_INTERVAL_S, value);
        options->stats_interval_s = (int)number;
        return S_RUN;
    default:    //  the key paths
        if (!*value)
            return s_usage_error("%s needs a path", name);
        *(opt == OPT_CURVE_SECRET  ? &options->curve_secret
          : opt == OPT_CLIENT_KEYS ? &options->client_keys
          : opt == OPT_ADMIN_KEYS  ? &options->admin_keys
                                   : &options->worker_keys) = value;
        return S_RUN;
    }
}

//  The flags that only make sense together.
static int s_check(const s_options_t *options)
{
    const cf_broker_config_t *broker = &options->broker;
    if (broker->max_queued && broker->max_queued_per_client > broker->max_queued)
        return s_usage_error("--max-queued-per-client (%zu) exceeds --max-queued (%zu)",
                             broker->max_queued_per_client, broker->max_queued);
    bool keys = options->client_keys || options->worker_keys;
    if ((keys || options->admin_keys) && !options->curve_secret)
        return s_usage_error("%s needs --curve-secret", options->client_keys   ? "--client-keys"
                                                        : options->worker_keys ? "--worker-keys"
                                                                               : "--admin-keys");
    if (options->curve_secret && !keys)
        return s_usage_error("--curve-secret needs --client-keys or --worker-keys");
    return S_RUN;
}

static int s_parse(int argc, char **argv, s_options_t *options)
{
    static const struct option table[] = {
        { "clients", required_argument, NULL, OPT_CLIENTS },
        { "workers", required_argument, NULL, OPT_WORKERS },
        { "heartbeat-ms", required_argument, NULL, OPT_HEARTBEAT },
        { "liveness", required_argument, NULL, OPT_LIVENESS },
        { "max-queued", required_argument, NULL, OPT_MAX_QUEUED },
        { "max-queued-per-client", required_argument, NULL, OPT_MAX_PER_CLIENT },
        { "no-worker-timeout", required_argument, NULL, OPT_NO_WORKER_TIMEOUT },
        { "curve-secret", required_argument, NULL, OPT_CURVE_SECRET },
        { "client-keys", required_argument, NULL, OPT_CLIENT_KEYS },
        { "worker-keys", required_argument, NULL, OPT_WORKER_KEYS },
        { "admin-keys", required_argument, NULL, OPT_ADMIN_KEYS },
        { "stats-interval", required_argument, NULL, OPT_STATS_INTERVAL },
        { "verbose", no_argument, NULL, 'v' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, OPT_VERSION },
        { NULL, 0, NULL, 0 },
    };
    *options = (s_options_t){
        .broker = { .client_endpoint = S_DEFAULT_CLIENTS, .worker_endpoint = S_DEFAULT_WORKERS },
    };
    int opt, index = -1;
    opterr = 0;    //  our own messages, one line each
    //  The leading ':' makes a missing value ':' and an unknown flag '?'.
    while ((opt = getopt_long(argc, argv, ":hv", table, &index)) != -1) {
        //  The flag as typed for errors of getopt's own; "--NAME" for ours
        //  (argv[optind - 1] is the value then).
        char name[64];
        if (opt >= OPT_CLIENTS && index >= 0)
            snprintf(name, sizeof name, "--%s", table[index].name);
        else
            snprintf(name, sizeof name, "%s", argv[optind - 1]);
        index = -1;
        int status = S_RUN;
        if (opt == 'h') {
            s_usage(stdout);
            return 0;
        }
        if (opt == OPT_VERSION) {
            printf("cf-broker (cfutures) %s\n", cf_version(NULL, NULL, NULL));
            return 0;
        }
        if (opt == ':')
            return s_usage_error("%s needs a value", name);
        if (opt == '?')
            return s_usage_error("unknown option %s",
                                 optopt ? (char[]){ '-', (char)optopt, 0 } : name);
        if (opt == 'v')
            options->verbose = true;
        else
            status = s_option(opt, name, optarg, options);
        if (status != S_RUN)
            return status;
    }
    if (optind < argc)
        return s_usage_error("unexpected argument '%s'", argv[optind]);
    return s_check(options);
}

//  The CURVE authenticator in a context of the broker's, ready before any
//  socket binds (a handshake without its handler is refused). NULL on
//  error, after saying why.
static cf_auth_t *s_auth_start(const s_options_t *options, void **ctx)
{
    //  Secure mode never falls back to plaintext.
    if (!zmq_has("curve")) {
        fprintf(stderr, "cf-broker: this libzmq was built without CURVE support; cannot run "
                        "with --curve-secret\n");
        return NULL;
    }
    *ctx = zmq_ctx_new();
    if (!*ctx) {
        fprintf(stderr, "cf-broker: cannot create a ZeroMQ context: %s\n", zmq_strerror(errno));
        return NULL;
    }
    cf_auth_t *auth = cf_auth_new(&(cf_auth_config_t){
        .zmq_context = *ctx,
        .secret_key_file = options->curve_secret,
        .client_keys = options->client_keys,
        .worker_keys = options->worker_keys,
        .admin_keys = options->admin_keys,
    });
    if (!auth) {
        fprintf(stderr, "cf-broker: %s\n", cf_last_error());
        zmq_ctx_term(*ctx);
        *ctx = NULL;
    }
    return auth;
}

//  One logfmt line of counters: what SIGUSR1 and --stats-interval log.
static void s_log_stats(cf_broker_t *broker, int64_t started_ms)
{
    cf_broker_stats_t s;
    if (cf_broker_stats(broker, &s) != CF_OK) {
        cf_log_error(S_LOG, "stats unavailable: %s", cf_last_error());
        return;
    }
    cf_log_info(S_LOG,
                "stats uptime_s=%lld clients=%llu workers=%llu queued=%llu "
                "running=%llu submitted=%llu completed=%llu failed=%llu cancelled=%llu "
                "retried=%llu lost_workers=%llu busy=%llu malformed=%llu dropped=%llu "
                "ignored=%llu timed_out=%llu deferred=%llu refused=%llu no_worker=%llu",
                (long long)((cf_clock_now_ms() - started_ms) / 1000), (unsigned long long)s.clients,
                (unsigned long long)s.workers, (unsigned long long)s.queued,
                (unsigned long long)s.running, (unsigned long long)s.submitted,
                (unsigned long long)s.completed, (unsigned long long)s.failed,
                (unsigned long long)s.cancelled, (unsigned long long)s.retried,
                (unsigned long long)s.lost_workers, (unsigned long long)s.busy,
                (unsigned long long)s.malformed, (unsigned long long)s.dropped,
                (unsigned long long)s.ignored, (unsigned long long)s.timed_out,
                (unsigned long long)s.deferred, (unsigned long long)s.refused,
                (unsigned long long)s.no_worker);
}

//  Waits for signals until SIGINT or SIGTERM; returns the exit status.
static int s_serve(cf_broker_t *broker, cf_auth_t *auth, const sigset_t *signals,
                   int stats_interval_s)
{
    int64_t started_ms = cf_clock_now_ms();
    int64_t next_stats_ms = started_ms + (int64_t)stats_interval_s * 1000;
    while (true) {
        int sig;
        if (stats_interval_s) {
            int64_t left_ms = next_stats_ms - cf_clock_now_ms();
            if (left_ms < 0)
                left_ms = 0;
            struct timespec wait = { .tv_sec = left_ms / 1000,
                                     .tv_nsec = left_ms % 1000 * 1000000 };
            sig = sigtimedwait(signals, NULL, &wait);
        }
        else
            sig = sigwaitinfo(signals, NULL);
        if (sig < 0 && errno == EAGAIN) {
            s_log_stats(broker, started_ms);
            next_stats_ms += (int64_t)stats_interval_s * 1000;
            continue;
        }
        if (sig < 0 && errno == EINTR)
            continue;
        if (sig < 0) {
            cf_log_error(S_LOG, "waiting for signals failed: %s", strerror(errno));
            return S_EXIT_FAILURE;
        }
        if (sig == SIGINT || sig == SIGTERM) {
            cf_log_info(S_LOG, "stopping (%s)", sig == SIGINT ? "SIGINT" : "SIGTERM");
            return 0;
        }
        if (sig == SIGUSR1)
            s_log_stats(broker, started_ms);
        else if (!auth)
            cf_log_info(S_LOG, "SIGHUP: no allow-lists to reload (CURVE is off)");
        //  cf_auth logs a successful reload with the new list sizes.
        else if (cf_auth_reload(auth) != CF_OK)
            cf_log_error(S_LOG, "SIGHUP: allow-lists not reloaded, the old ones stay: %s",
                         cf_last_error());
    }
}

static int s_run(s_options_t *options)
{
    cf_log_set_handler(cf_log_to_stderr, NULL, options->verbose ? CF_LOG_DEBUG : CF_LOG_INFO);
    //  Block the signals we take before any thread starts, so every thread
    //  inherits the mask and only s_serve sees them.
    sigset_t signals;
    sigemptyset(&signals);
    for (int sig = 0, list[] = { SIGINT, SIGTERM, SIGHUP, SIGUSR1 }; sig < 4; sig++)
        sigaddset(&signals, list[sig]);
    int rc = pthread_sigmask(SIG_BLOCK, &signals, NULL);
    if (rc != 0) {
        fprintf(stderr, "cf-broker: cannot block signals: %s\n", strerror(rc));
        return S_EXIT_FAILURE;
    }
    void *ctx = NULL;
    cf_auth_t *auth = NULL;
    if (options->curve_secret) {
        if (!(auth = s_auth_start(options, &ctx)))
            return S_EXIT_FAILURE;
        options->broker.zmq_context = ctx;
        options->broker.socket_setup = s_curve_setup;
        options->broker.socket_setup_arg = auth;
        options->broker.require_roles = true;
        options->broker.auth = auth;
    }
    cf_broker_t *broker = cf_broker_new(&options->broker);
    if (!broker) {
        fprintf(stderr, "cf-broker: %s\n", cf_last_error());
        cf_auth_destroy(&auth);
        if (ctx)
            zmq_ctx_term(ctx);
        return S_EXIT_FAILURE;
    }
    //  With CURVE, cf_auth_new already logged the server key's fingerprint
    //  and the list sizes.
    const char *endpoints[2] = { cf_broker_client_endpoint(broker),
                                 cf_broker_worker_endpoint(broker) };
    for (int i = 0; i < 2 && !auth; i++)
        if (s_exposed(endpoints[i]))
            cf_log_warn(S_LOG,
                        "%s endpoint %s is not loopback and traffic is not encrypted "
                        "(see --curve-secret)",
                        i == 0 ? "clients" : "workers", endpoints[i]);
    printf("ready clients=%s workers=%s\n", endpoints[0], endpoints[1]);
    fflush(stdout);
    int status = s_serve(broker, auth, &signals, options->stats_interval_s);
    //  Sockets first (a handshake without its handler is refused), then
    //  the handler, then the context the broker was lent.
    cf_broker_destroy(&broker);
    cf_auth_destroy(&auth);
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

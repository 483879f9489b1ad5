//  cf-broker: the broker actor as a daemon. Clients connect to one
//  endpoint, workers to the other; see cf_broker.h for what it does.
//
//  Startup either ends with one line on stdout,
//      ready clients=tcp://127.0.0.1:5555 workers=tcp://127.0.0.1:5556
//  (the resolved endpoints: tests and scripts read the ports chosen for
//  ":*" from it), or with one line on stderr saying why and exit status 1.
//  SIGINT and SIGTERM stop it cleanly (exit 0); SIGHUP reloads the CURVE
//  allow-lists.
//
//  With --curve-secret and an allow-list (docs/security.md) both endpoints
//  are CURVE servers that fail closed, authenticated by the cf_auth ZAP
//  handler, which starts in the broker's zmq context before anything binds.

#include "cf_auth.h"
#include "cf_broker.h"
#include "cf_log.h"
#include "cf_proto.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_CLIENTS "tcp://127.0.0.1:5555"
#define DEFAULT_WORKERS "tcp://127.0.0.1:5556"

static void s_usage(FILE *out)
{
    fprintf(out,
            "Usage: cf-broker [OPTIONS]\n"
            "\n"
            "Runs a cfutures broker: clients submit tasks at one endpoint, cf-worker\n"
            "processes take them at the other. Queues are per client and served in\n"
            "turn; tasks of lost workers are retried; over the queue limits tasks are\n"
            "answered BUSY and clients resend them later.\n"
            "\n"
            "Options:\n"
            "  --clients ENDPOINT          where clients connect (default %s)\n"
            "  --workers ENDPOINT          where workers connect (default %s)\n"
            "                              \"tcp://HOST:*\" picks a free port; the ready line\n"
            "                              shows which\n"
            "  --heartbeat-ms N            heartbeat interval in ms (default %d)\n"
            "  --liveness N                silent intervals before a peer is lost (default %d)\n"
            "  --max-queued N              tasks queued in all (default %u)\n"
            "  --max-queued-per-client N   tasks queued per client (default: --max-queued)\n"
            "  --curve-secret FILE         the broker's secret key file (cf-keygen NAME);\n"
            "                              turns CURVE encryption and authentication on\n"
            "  --client-keys PATH          public keys allowed to submit: a directory of\n"
            "                              *.key files or a file with one key per line\n"
            "  --worker-keys PATH          public keys allowed to work (same forms)\n"
            "  --verbose                   log debug messages too\n"
            "  --help                      show this text and exit\n"
            "  --version                   show the version and exit\n"
            "\n"
            "Once serving, prints one line to stdout:\n"
            "  ready clients=ENDPOINT workers=ENDPOINT\n"
            "Logs go to stderr. SIGINT or SIGTERM stops the broker (exit status 0);\n"
            "SIGHUP reloads --client-keys and --worker-keys (on an error the old lists\n"
            "stay; a removed key is cut off, connected or not); a startup failure\n"
            "prints why and exits with status 1.\n"
            "\n"
            "Without --curve-secret traffic is not encrypted: keep the endpoints on\n"
            "loopback or a trusted network (see docs/security.md).\n",
            DEFAULT_CLIENTS, DEFAULT_WORKERS, CF_HEARTBEAT_IVL_MS, CF_HEARTBEAT_LIVENESS,
            CF_BROKER_MAX_QUEUED);
}

//  Each ROUTER becomes a CURVE server that fails closed, in the role domain
//  of its endpoint, so a key of the other role cannot even connect.
static cf_err_t s_curve_setup(void *socket, bool is_clients, void *arg)
{
    return cf_auth_apply_server(socket, arg, is_clients ? CF_AUTH_DOMAIN_CLIENTS
                                                        : CF_AUTH_DOMAIN_WORKERS);
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

int main(int argc, char **argv)
{
    enum { OPT_CLIENTS = 256, OPT_WORKERS, OPT_HEARTBEAT, OPT_LIVENESS, OPT_MAX_QUEUED,
           OPT_MAX_PER_CLIENT, OPT_VERBOSE, OPT_HELP, OPT_VERSION, OPT_CURVE_SECRET,
           OPT_CLIENT_KEYS, OPT_WORKER_KEYS };
    static const struct option options[] = {
        { "clients", required_argument, NULL, OPT_CLIENTS },
        { "workers", required_argument, NULL, OPT_WORKERS },
        { "heartbeat-ms", required_argument, NULL, OPT_HEARTBEAT },
        { "liveness", required_argument, NULL, OPT_LIVENESS },
        { "max-queued", required_argument, NULL, OPT_MAX_QUEUED },
        { "max-queued-per-client", required_argument, NULL, OPT_MAX_PER_CLIENT },
        { "curve-secret", required_argument, NULL, OPT_CURVE_SECRET },
        { "client-keys", required_argument, NULL, OPT_CLIENT_KEYS },
        { "worker-keys", required_argument, NULL, OPT_WORKER_KEYS },
        { "verbose", no_argument, NULL, OPT_VERBOSE },
        { "help", no_argument, NULL, OPT_HELP },
        { "version", no_argument, NULL, OPT_VERSION },
        { NULL, 0, NULL, 0 },
    };
    cf_broker_config_t config = {
        .client_endpoint = DEFAULT_CLIENTS,
        .worker_endpoint = DEFAULT_WORKERS,
    };
    bool verbose = false;
    const char *curve_secret = NULL, *client_keys = NULL, *worker_keys = NULL;
    int opt;
    opterr = 0;             //  our own messages, one line each
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        unsigned long long value;
        switch (opt) {
        case OPT_CLIENTS:
            config.client_endpoint = optarg;
            break;
        case OPT_WORKERS:
            config.worker_endpoint = optarg;
            break;
        case OPT_HEARTBEAT:
            if (!s_parse_count(optarg, INT_MAX / 1000, &value)) {
                fprintf(stderr, "cf-broker: --heartbeat-ms must be a positive number of ms, got '%s'\n",
                        optarg);
                return 1;
            }
            config.heartbeat_ivl_ms = (int)value;
            break;
        case OPT_LIVENESS:
            if (!s_parse_count(optarg, 1000, &value)) {
                fprintf(stderr, "cf-broker: --liveness must be a number from 1 to 1000, got '%s'\n",
                        optarg);
                return 1;
            }
            config.heartbeat_liveness = (int)value;
            break;
        case OPT_MAX_QUEUED:
        case OPT_MAX_PER_CLIENT:
            if (!s_parse_count(optarg, SIZE_MAX, &value)) {
                fprintf(stderr, "cf-broker: --%s must be a positive number, got '%s'\n",
                        opt == OPT_MAX_QUEUED ? "max-queued" : "max-queued-per-client", optarg);
                return 1;
            }
            if (opt == OPT_MAX_QUEUED)
                config.max_queued = (size_t)value;
            else
                config.max_queued_per_client = (size_t)value;
            break;
        case OPT_CURVE_SECRET:
        case OPT_CLIENT_KEYS:
        case OPT_WORKER_KEYS:
            if (!*optarg) {
                fprintf(stderr, "cf-broker: %s needs a path\n", argv[optind - 1]);
                return 1;
            }
            *(opt == OPT_CURVE_SECRET ? &curve_secret
              : opt == OPT_CLIENT_KEYS ? &client_keys : &worker_keys) = optarg;
            break;
        case OPT_VERBOSE:
            verbose = true;
            break;
        case OPT_HELP:
            s_usage(stdout);
            return 0;
        case OPT_VERSION:
            printf("cf-broker %d.%d.%d\n", CF_VERSION_MAJOR, CF_VERSION_MINOR, CF_VERSION_PATCH);
            return 0;
        default:
            if (optopt)     //  a known option without its value
                fprintf(stderr, "cf-broker: %s needs a value (try --help)\n", argv[optind - 1]);
            else
                fprintf(stderr, "cf-broker: unknown option %s (try --help)\n", argv[optind - 1]);
            return 1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "cf-broker: unexpected argument '%s' (try --help)\n", argv[optind]);
        return 1;
    }
    if (config.max_queued && config.max_queued_per_client > config.max_queued) {
        fprintf(stderr, "cf-broker: --max-queued-per-client (%zu) exceeds --max-queued (%zu)\n",
                config.max_queued_per_client, config.max_queued);
        return 1;
    }
    bool curve = curve_secret || client_keys || worker_keys;
    if (curve && !curve_secret) {
        fprintf(stderr, "cf-broker: %s needs --curve-secret\n",
                client_keys ? "--client-keys" : "--worker-keys");
        return 1;
    }
    if (curve && !client_keys && !worker_keys) {
        fprintf(stderr, "cf-broker: --curve-secret needs --client-keys or --worker-keys\n");
        return 1;
    }
    //  Secure mode never falls back to plaintext: without CURVE in libzmq,
    //  refuse to start.
    if (curve && !zmq_has("curve")) {
        fprintf(stderr, "cf-broker: this libzmq was built without CURVE support; cannot run "
                        "with --curve-secret\n");
        return 1;
    }
    cf_log_set_handler(cf_log_to_stderr, NULL, verbose ? CF_LOG_DEBUG : CF_LOG_INFO);

    //  Block the stop signals (and SIGHUP, which reloads) before any thread
    //  starts, so every thread inherits the mask and only sigwait below sees
    //  them.
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGHUP);
    int rc = pthread_sigmask(SIG_BLOCK, &stop, NULL);
    if (rc != 0) {
        fprintf(stderr, "cf-broker: cannot block signals: %s\n", strerror(rc));
        return 1;
    }

    //  The ZAP handler must serve the broker's context before its sockets
    //  bind: a handshake it misses is refused (the sockets fail closed).
    void *ctx = NULL;
    cf_auth_t *auth = NULL;
    if (curve) {
        ctx = zmq_ctx_new();
        if (!ctx) {
            fprintf(stderr, "cf-broker: cannot create a ZeroMQ context: %s\n",
                    zmq_strerror(errno));
            return 1;
        }
        auth = cf_auth_new(&(cf_auth_config_t){
            .zmq_context = ctx,
            .secret_key_file = curve_secret,
            .client_keys = client_keys,
            .worker_keys = worker_keys,
        });
        if (!auth) {
            fprintf(stderr, "cf-broker: %s\n", cf_last_error());
            zmq_ctx_term(ctx);
            return 1;
        }
        config.zmq_context = ctx;
        config.socket_setup = s_curve_setup;
        config.socket_setup_arg = auth;
        config.require_roles = true;
        config.auth = auth;
    }

    cf_broker_t *broker = cf_broker_new(&config);
    if (!broker) {
        fprintf(stderr, "cf-broker: %s\n", cf_last_error());
        cf_auth_destroy(&auth);
        if (ctx)
            zmq_ctx_term(ctx);
        return 1;
    }
    //  With CURVE, cf_auth_new already logged the server key's fingerprint
    //  and the list sizes.
    if (!auth) {
        if (s_exposed(cf_broker_client_endpoint(broker)))
            cf_log_warn("broker", "clients endpoint %s is not loopback and traffic is not "
                        "encrypted (see --curve-secret)", cf_broker_client_endpoint(broker));
        if (s_exposed(cf_broker_worker_endpoint(broker)))
            cf_log_warn("broker", "workers endpoint %s is not loopback and traffic is not "
                        "encrypted (see --curve-secret)", cf_broker_worker_endpoint(broker));
    }
    printf("ready clients=%s workers=%s\n", cf_broker_client_endpoint(broker),
           cf_broker_worker_endpoint(broker));
    fflush(stdout);

    int sig = 0;
    while (true) {
        rc = sigwait(&stop, &sig);
        if (rc == EINTR)
            continue;
        if (rc != 0) {
            cf_log_error("broker", "sigwait failed: %s", strerror(rc));
            sig = 0;
            break;
        }
        if (sig != SIGHUP)
            break;
        if (!auth) {
            cf_log_info("broker", "SIGHUP: no allow-lists to reload (CURVE is off)");
            continue;
        }
        //  cf_auth logs a successful reload with the new list sizes.
        if (cf_auth_reload(auth) != CF_OK)
            cf_log_error("broker", "SIGHUP: allow-lists not reloaded, the old ones stay: %s",
                         cf_last_error());
    }
    cf_log_info("broker", "stopping (%s)", sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "error");
    //  Sockets first (a handshake without its handler is refused), then
    //  the handler, then the context the broker was lent.
    cf_broker_destroy(&broker);
    cf_auth_destroy(&auth);
    if (ctx)
        zmq_ctx_term(ctx);
    return 0;
}

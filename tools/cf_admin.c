//  SPDX-License-Identifier: MIT
//
//  cf-admin: what a running cf-broker is doing, from its STATS message
//  (docs/protocol.md): status (counters, queue depth, peers), workers and
//  clients (per-peer detail), metrics in the Prometheus text format for
//  node_exporter's textfile collector, --json for scripts and --watch for a
//  live view redrawn in place, like top.
//
//      cf-admin status --broker tcp://broker-host:5555
//      cf-admin --watch
//      cf-admin metrics > /var/lib/node_exporter/textfile/cfutures.prom.$$ && mv ...
//
//  It speaks to the broker's client endpoint as a client that only asks
//  STATS, which the broker answers without making it a known client. A
//  CURVE broker answers only keys on its admin list (cf-broker
//  --admin-keys): cf-admin then uses --broker-key and --key, and a refusal
//  (a key on no list at the handshake, a client key's STATS by ERROR) is
//  said at once, with the broker's reason and the fix.
//  `workers` and `clients` ask for the broker's worker_list or client_list
//  (STATS [flags], stats_version 2); a broker without them is said to lack
//  them, with exit 1, rather than print nothing.
//
//  Exit status: 0 answered, 1 no answer within --timeout (the endpoint is
//  named) or the broker lacks what was asked, 2 usage error.

#include "cf_admin_list.h"
#include "cf_clock.h"
#include "cf_keys.h"
#include "cf_proto.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define S_DEFAULT_BROKER     "tcp://127.0.0.1:5555"
#define S_DEFAULT_TIMEOUT_MS 3000
#define S_DEFAULT_INTERVAL_S 2
#define S_EXIT_FAILURE       1
#define S_EXIT_USAGE         2
#define S_RUN                -1

typedef enum { S_STATUS, S_WORKERS, S_CLIENTS, S_METRICS } s_command_t;

typedef struct {
    s_command_t command;
    const char *broker;    //  the client endpoint
    int timeout_ms;
    bool json;
    bool watch;
    int interval_s;
    const char *broker_key, *key;    //  CURVE: both or neither
} s_options_t;

//  One STATS reply: counters in the order the broker sent them.
#define S_MAX_COUNTERS CF_PROTO_MAX_STATS
typedef struct {
    size_t count;
    char names[S_MAX_COUNTERS][64];
    uint64_t values[S_MAX_COUNTERS];
    int64_t answered_ms;    //  when the reply came (cf_clock_now_ms)
    int round_trip_ms;
    //  The lists asked for (copies), or NULL: [0] worker_list, [1] client_list.
    uint8_t *list[2];
    size_t list_len[2];
} s_stats_t;

static const char *const s_list_names[2] = { "worker_list", "client_list" };

//  The columns of the brokers' lists, in their order (docs/protocol.md).
static const char *const s_worker_columns[] = { "worker",         "host",     "pid",
                                                "threads",        "credit",   "held",
                                                "completed",      "failed",   "heard_ms",
                                                "function_count", "functions" };
static const char *const s_client_columns[] = { "client",    "queued", "running", "submitted",
                                                "completed", "failed", "heard_ms" };
#define S_WORKER_COLUMNS (sizeof s_worker_columns / sizeof s_worker_columns[0])
#define S_CLIENT_COLUMNS (sizeof s_client_columns / sizeof s_client_columns[0])

//  The counters cf/1 brokers send, with what they mean: the status screen's
//  labels and the metrics' HELP lines. Gauges are "now"; the rest count up.
static const struct {
    const char *name;
    bool gauge;
    const char *help;
} s_known[] = {
    { "clients", true, "Clients known to the broker now" },
    { "workers", true, "Workers connected now" },
    { "queued", true, "Tasks waiting for a worker now" },
    { "running", true, "Tasks on workers now" },
    { "uptime_ms", true, "Milliseconds since the broker started" },
    { "submitted", false, "Tasks accepted into a queue" },
    { "completed", false, "Results with a value sent to clients" },
    { "failed", false, "Errors sent to clients (task errors, WorkerLost, TimeoutError)" },
    { "cancelled", false, "Queued tasks removed by CANCEL" },
    { "timed_out", false, "Tasks failed with TimeoutError (also in failed)" },
    { "retried", false, "Requeues that used one of a task's retries" },
    { "lost_workers", false, "Workers lost (heartbeats, gone, reported)" },
    { "busy", false, "Tasks refused with BUSY (queue limits)" },
    { "refused", false, "Messages from a key of the wrong role" },
    { "malformed", false, "Messages refused as malformed" },
    { "dropped", false, "Tasks and results discarded with a lost client" },
    { "ignored", false, "Worker results matching no waiting task" },
    { "deferred", false, "Sends refused (peer at HWM or gone) and kept or requeued" },
};
#define S_KNOWN (sizeof s_known / sizeof s_known[0])

static volatile sig_atomic_t s_interrupted = 0;

static void s_on_interrupt(int sig)
{
    (void)sig;
    s_interrupted = 1;
}

static void s_usage(FILE *out)
{
    fprintf(out,
            "Usage: cf-admin [OPTIONS] [COMMAND]\n"
            "Shows what a running cf-broker is doing, from its STATS answer.\n"
            "\n"
            "Commands:\n"
            "  status      counters, queue depth and peers (the default)\n"
            "  workers     each worker: host, pid, threads, free slots, tasks held,\n"
            "              results, errors, last heard\n"
            "  clients     each client: queue depth, tasks running, submitted, results,\n"
            "              errors, last heard\n"
            "  metrics     the counters in the Prometheus text format (node_exporter's\n"
            "              textfile collector)\n"
            "\n"
            "Options:\n"
            "  -b, --broker ENDPOINT   the broker's client endpoint (default $CF_BROKER or\n"
            "                          " S_DEFAULT_BROKER ")\n"
            "  -t, --timeout MS        how long to wait for the answer (default %d)\n"
            "  -w, --watch             redraw every --interval seconds, in place on a\n"
            "                          terminal, until Ctrl-C\n"
            "  -i, --interval SECONDS  --watch period (default %d)\n"
            "  -j, --json              one JSON object per answer, for scripts\n"
            "  --broker-key FILE       the broker's public key file: use CURVE (with --key)\n"
            "  --key FILE              this tool's secret key file (cf-keygen NAME; mode\n"
            "                          0600), its public key on the broker's admin list\n"
            "                          (cf-broker --admin-keys): a CURVE broker answers\n"
            "                          no other key\n"
            "  -h, --help              show this text and exit\n"
            "  --version               show the version and exit\n"
            "\n"
            "Exit status: 0 the broker answered, 1 no answer within --timeout, the\n"
            "broker refused the key or the request, or it does not report what was\n"
            "asked, 2 usage error.\n",
            S_DEFAULT_TIMEOUT_MS, S_DEFAULT_INTERVAL_S);
}

static int s_usage_error(const char *fmt, ...) CF_PRINTF(1, 2);
static int s_usage_error(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "cf-admin: %s (try --help)\n", line);
    return S_EXIT_USAGE;
}

//  A whole number from min to max, or -1.
static long s_number(const char *text, long min, long max)
{
    char *end;
    errno = 0;
    long value = text && *text ? strtol(text, &end, 10) : -1;
    if (!text || !*text || errno || *end || value < min || value > max)
        return -1;
    return value;
}

//  One option with a value: S_RUN or an exit status.
static int s_value(s_options_t *options, const char *flag, const char *value)
{
    long number;
    if (!strcmp(flag, "-b") || !strcmp(flag, "--broker")) {
        if (strncmp(value, "tcp://", 6) && strncmp(value, "ipc://", 6))
            return s_usage_error("%s: not an endpoint: '%s' (tcp://HOST:PORT or ipc://PATH)", flag,
                                 value);
        options->broker = value;
    }
    else if (!strcmp(flag, "-t") || !strcmp(flag, "--timeout")) {
        if ((number = s_number(value, 1, 3600 * 1000)) < 0)
            return s_usage_error("%s needs milliseconds from 1 to 3600000, got '%s'", flag, value);
        options->timeout_ms = (int)number;
    }
    else if (!strcmp(flag, "-i") || !strcmp(flag, "--interval")) {
        if ((number = s_number(value, 1, 86400)) < 0)
            return s_usage_error("%s needs seconds from 1 to 86400, got '%s'", flag, value);
        options->interval_s = (int)number;
    }
    else if (!strcmp(flag, "--broker-key"))
        options->broker_key = value;
    else
        options->key = value;
    return S_RUN;
}

static bool s_takes_value(const char *flag)
{
    static const char *const flags[] = { "-b", "--broker",   "-t",           "--timeout",
                                         "-i", "--interval", "--broker-key", "--key" };
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        if (!strcmp(flag, flags[i]))
            return true;
    return false;
}

//  S_RUN, or 0 after --help/--version, or S_EXIT_USAGE.
static int s_parse(int argc, char **argv, s_options_t *options)
{
    const char *env = getenv("CF_BROKER");
    *options = (s_options_t){ .broker = env && *env ? env : S_DEFAULT_BROKER,
                              .timeout_ms = S_DEFAULT_TIMEOUT_MS,
                              .interval_s = S_DEFAULT_INTERVAL_S };
    static const char *const commands[] = { "status", "workers", "clients", "metrics" };
    bool have_command = false;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
            s_usage(stdout);
            return 0;
        }
        if (!strcmp(arg, "--version")) {
            printf("cf-admin (cfutures) %s\n", cf_version(NULL, NULL, NULL));
            return 0;
        }
        if (!strcmp(arg, "-j") || !strcmp(arg, "--json"))
            options->json = true;
        else if (!strcmp(arg, "-w") || !strcmp(arg, "--watch"))
            options->watch = true;
        else if (s_takes_value(arg)) {
            if (i + 1 >= argc)
                return s_usage_error("%s needs a value", arg);
            int status = s_value(options, arg, argv[++i]);
            if (status != S_RUN)
                return status;
        }
        else if (arg[0] == '-')
            return s_usage_error("unknown option %s", arg);
        else {
            size_t c = 0;
            while (c < 4 && strcmp(arg, commands[c]))
                c++;
            if (c == 4 || have_command)
                return s_usage_error(c == 4 ? "unknown command '%s'"
                                            : "one command only, "
                                              "got '%s' too",
                                     arg);
            options->command = (s_command_t)c;
            have_command = true;
        }
    }
    if (!options->broker_key != !options->key)
        return s_usage_error("CURVE needs both --broker-key (the broker's public key file) and "
                             "--key (this tool's secret key file)");
    return S_RUN;
}

// ---------------------------------------------------------------------------
//  Asking

typedef struct {
    void *ctx, *socket;
    void *monitor;    //  handshake outcomes of socket (cf_keys)
    cf_proto_enc_t *enc;
    bool curve;
    char server[CF_KEY_Z85_SIZE];
    cf_keypair_t pair;
} s_link_t;

static void s_link_close(s_link_t *link)
{
    cf_keys_monitor_close(link->socket, &link->monitor);
    if (link->socket)
        zmq_close(link->socket);
    link->socket = NULL;
}

//  A fresh DEALER for each question, so an answer that came too late for
//  the last one is never read as this one's.
static bool s_link_open(s_link_t *link, const s_options_t *options)
{
    s_link_close(link);
    link->socket = zmq_socket(link->ctx, ZMQ_DEALER);
    int linger = 0;
    if (!link->socket || zmq_setsockopt(link->socket, ZMQ_LINGER, &linger, sizeof linger) != 0) {
        fprintf(stderr, "cf-admin: cannot make a socket: %s\n", zmq_strerror(errno));
        return false;
    }
    //  Watched handshakes turn a refused key into an answer at once
    //  instead of a silent wait for the timeout.
    if ((link->curve
         && cf_keys_apply_client(link->socket, link->server, link->pair.public_z85,
                                 link->pair.secret_z85)
                != CF_OK)
        || !(link->monitor = cf_keys_monitor_new(link->ctx, link->socket))) {
        fprintf(stderr, "cf-admin: %s\n", cf_last_error());
        return false;
    }
    if (zmq_connect(link->socket, options->broker) != 0) {
        fprintf(stderr, "cf-admin: cannot connect to %s: %s\n", options->broker,
                zmq_strerror(errno));
        return false;
    }
    return true;
}

//  True when the handshake events pending say the broker will never take
//  this connection, after saying why (the endpoint and the fix).
static bool s_refused(s_link_t *link, const s_options_t *options)
{
    for (;;) {
        int value = 0;
        cf_err_t rc = cf_keys_monitor_read(link->monitor, &value);
        if (rc == CF_ETIMEDOUT)
            return false;
        if (rc == CF_EAUTH) {
            char fp[CF_KEY_FP_SIZE];
            cf_keys_fingerprint(link->pair.public_z85, fp);
            fprintf(stderr,
                    "cf-admin: the broker at %s refused the key %s (not on its admin "
                    "list: cf-broker --admin-keys)\n",
                    options->broker, fp);
            return true;
        }
        if (rc == CF_EPROTO && value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) {
            fprintf(stderr,
                    link->curve ? "cf-admin: the broker at %s does not use CURVE: drop "
                                  "--broker-key and --key\n"
                                : "cf-admin: the broker at %s requires CURVE: give "
                                  "--broker-key and --key\n",
                    options->broker);
            return true;
        }
    }
}

//  Says why the broker answered ERROR: its text (printable, cut to fit)
//  and, for a CURVE refusal ("not allowed: STATS needs an admin key" from a
//  broker with an admin list), which key and the fix.
static void s_say_refused(const s_link_t *link, const s_options_t *options,
                          const cf_proto_msg_t *msg)
{
    char text[256];
    size_t len = msg->text.len < sizeof text - 1 ? msg->text.len : sizeof text - 1;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)msg->text.ptr[i];
        text[i] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    text[len] = '\0';
    fprintf(stderr, "cf-admin: the broker at %s refused STATS: %s", options->broker,
            len ? text : "(no reason given)");
    if (link->curve && !strncmp(text, "not allowed:", 12)) {
        char fp[CF_KEY_FP_SIZE];
        cf_keys_fingerprint(link->pair.public_z85, fp);
        fprintf(stderr,
                " (the key %s is not an admin key there: put its public key on the "
                "broker's --admin-keys list)",
                fp);
    }
    fprintf(stderr, "\n");
}

//  Sends STATS [] and waits for the reply: CF_OK, CF_ETIMEDOUT, or another
//  error after saying why.
static cf_err_t s_ask(s_link_t *link, const s_options_t *options, s_stats_t *stats)
{
    if (!s_link_open(link, options))
        return CF_ESYS;
    int64_t sent_ms = cf_clock_now_ms();
    int64_t deadline_ms = sent_ms + options->timeout_ms;
    for (int k = 0; k < 2; k++) {
        free(stats->list[k]);
        stats->list[k] = NULL;
        stats->list_len[k] = 0;
    }
    //  Only the lists the command shows are asked for.
    uint32_t flags = options->command == S_WORKERS   ? CF_PROTO_STATS_WORKERS
                     : options->command == S_CLIENTS ? CF_PROTO_STATS_CLIENTS
                     : options->command == S_STATUS
                         ? CF_PROTO_STATS_WORKERS | CF_PROTO_STATS_CLIENTS
                         : 0;
    cf_proto_enc_stats_request(link->enc, flags);
    //  The DEALER queues the request until connected.
    if (cf_proto_enc_send(link->enc, link->socket, NULL, 0) != CF_OK) {
        fprintf(stderr, "cf-admin: cannot send to %s: %s\n", options->broker, cf_last_error());
        return CF_ESYS;
    }
    while (!s_interrupted) {
        int left_ms = cf_clock_ms_until(deadline_ms);
        zmq_pollitem_t items[2] = { { .socket = link->socket, .events = ZMQ_POLLIN },
                                    { .socket = link->monitor, .events = ZMQ_POLLIN } };
        int rc = left_ms > 0 ? zmq_poll(items, 2, left_ms) : 0;
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            return CF_ETIMEDOUT;
        if ((items[1].revents & ZMQ_POLLIN) && s_refused(link, options))
            return CF_EAUTH;
        if (!(items[0].revents & ZMQ_POLLIN))
            continue;
        cf_proto_msg_t *msg = NULL;
        if (cf_proto_recv(link->socket, false, NULL, &msg) != CF_OK)
            continue;
        //  A HEARTBEAT comes first from a broker that did not know us.
        if (msg->type == CF_MSG_STATS) {
            stats->count = 0;
            for (size_t i = 0; i < msg->count && stats->count < S_MAX_COUNTERS; i++) {
                char *name = stats->names[stats->count];
                snprintf(name, sizeof stats->names[0], "%.*s", (int)msg->stats[i].name.len,
                         msg->stats[i].name.ptr);
                //  Printable ASCII only: a name never moves the terminal.
                for (char *c = name; *c; c++)
                    if ((unsigned char)*c < 0x20 || (unsigned char)*c > 0x7e)
                        *c = '?';
                const cf_proto_stat_t *stat = &msg->stats[i];
                if (stat->list) {
                    for (int k = 0; k < 2; k++) {
                        bool wanted = (flags
                                       & (k == 0 ? CF_PROTO_STATS_WORKERS : CF_PROTO_STATS_CLIENTS))
                                      && !strcmp(name, s_list_names[k]);
                        if (wanted && !stats->list[k]
                            && (stats->list[k] = malloc(stat->list_len))) {
                            memcpy(stats->list[k], stat->list, stat->list_len);
                            stats->list_len[k] = stat->list_len;
                        }
                    }
                    continue;    //  a list is not a counter
                }
                stats->values[stats->count++] = stat->value;
            }
            stats->answered_ms = cf_clock_now_ms();
            stats->round_trip_ms = (int)(stats->answered_ms - sent_ms);
            cf_proto_msg_destroy(&msg);
            return CF_OK;
        }
        bool refused = msg->type == CF_MSG_ERROR;
        if (refused)
            s_say_refused(link, options, msg);
        cf_proto_msg_destroy(&msg);
        if (refused)
            return CF_EAUTH;
    }
    return CF_ECANCELLED;
}

// ---------------------------------------------------------------------------
//  Showing

//  The value of a counter, or false when the broker did not send it.
static bool s_get(const s_stats_t *stats, const char *name, uint64_t *value)
{
    for (size_t i = 0; i < stats->count; i++) {
        if (!strcmp(stats->names[i], name)) {
            *value = stats->values[i];
            return true;
        }
    }
    return false;
}

static int s_known_index(const char *name)
{
    for (size_t k = 0; k < S_KNOWN; k++)
        if (!strcmp(s_known[k].name, name))
            return (int)k;
    return -1;
}

//  "+12.5/s" since the last answer, for --watch; "" without one.
static void s_rate(const s_stats_t *now, const s_stats_t *before, size_t i, char *out, size_t size)
{
    uint64_t old;
    int k = s_known_index(now->names[i]);
    out[0] = '\0';
    if (!before || (k >= 0 && s_known[k].gauge) || !s_get(before, now->names[i], &old)
        || now->values[i] < old || now->answered_ms <= before->answered_ms)
        return;
    double per_s = (double)(now->values[i] - old) * 1000.0
                   / (double)(now->answered_ms - before->answered_ms);
    snprintf(out, size, "+%.1f/s", per_s);
}

//  "  name  value  +rate/s", two to a line.
static void s_print_counter(const s_stats_t *stats, const s_stats_t *before, size_t i,
                            size_t *shown)
{
    char rate[32];
    s_rate(stats, before, i, rate, sizeof rate);
    //  The right column is not padded: no trailing blanks.
    if (++*shown % 2)
        printf("  %-14s %12llu %-10s", stats->names[i], (unsigned long long)stats->values[i], rate);
    else
        printf("  %-14s %12llu %s\n", stats->names[i], (unsigned long long)stats->values[i], rate);
}

static void s_print_status(const s_options_t *options, const s_stats_t *stats,
                           const s_stats_t *before)
{
    uint64_t value;
    printf("cf-broker at %s: answered in %d ms\n", options->broker, stats->round_trip_ms);
    if (s_get(stats, "uptime_ms", &value))
        printf("up %llu s\n", (unsigned long long)(value / 1000));
    else
        printf("uptime: not reported by this broker (cf/1 STATS without 'uptime_ms')\n");
    //  Known counters in a fixed order, then any the broker added.
    size_t shown = 0;
    for (size_t k = 0; k < S_KNOWN; k++) {
        for (size_t i = 0; i < stats->count; i++)
            if (!strcmp(stats->names[i], s_known[k].name) && strcmp(s_known[k].name, "uptime_ms"))
                s_print_counter(stats, before, i, &shown);
    }
    for (size_t i = 0; i < stats->count; i++)
        if (s_known_index(stats->names[i]) < 0)
            s_print_counter(stats, before, i, &shown);
    if (shown % 2)
        printf("\n");
    if (!s_get(stats, "stats_version", &value) || value < 2) {
        printf("per-worker and per-client detail: not reported by this broker "
               "(cf/1 STATS without 'workers')\n");
        return;
    }
    printf("\nworkers:\n");
    if (cf_admin_list_print(stats->list[0], stats->list_len[0], s_worker_columns, S_WORKER_COLUMNS,
                            false)
        < 0)
        printf("(not reported)\n");
    printf("\nclients:\n");
    if (cf_admin_list_print(stats->list[1], stats->list_len[1], s_client_columns, S_CLIENT_COLUMNS,
                            false)
        < 0)
        printf("(not reported)\n");
}

static void s_print_json(const s_options_t *options, const s_stats_t *stats)
{
    printf("{\"broker\": ");
    cf_admin_list_json_string(options->broker);
    printf(", \"round_trip_ms\": %d, \"counters\": {", stats->round_trip_ms);
    for (size_t i = 0; i < stats->count; i++) {
        printf("%s", i ? ", " : "");
        cf_admin_list_json_string(stats->names[i]);
        printf(": %llu", (unsigned long long)stats->values[i]);
    }
    (void)options;
    printf("}, \"workers\": ");
    if (stats->list[0])
        cf_admin_list_print(stats->list[0], stats->list_len[0], s_worker_columns, S_WORKER_COLUMNS,
                            true);
    else
        printf("null");
    printf(", \"clients\": ");
    if (stats->list[1])
        cf_admin_list_print(stats->list[1], stats->list_len[1], s_client_columns, S_CLIENT_COLUMNS,
                            true);
    else
        printf("null");
    printf("}\n");
}

static void s_print_metrics(const s_stats_t *stats, bool up)
{
    printf("# HELP cfutures_broker_up 1 when the broker answered STATS, else 0.\n"
           "# TYPE cfutures_broker_up gauge\n"
           "cfutures_broker_up %d\n",
           up ? 1 : 0);
    if (!up)
        return;
    printf("# HELP cfutures_broker_stats_round_trip_seconds Time the STATS answer took.\n"
           "# TYPE cfutures_broker_stats_round_trip_seconds gauge\n"
           "cfutures_broker_stats_round_trip_seconds %.3f\n",
           stats->round_trip_ms / 1000.0);
    for (size_t i = 0; i < stats->count; i++) {
        int k = s_known_index(stats->names[i]);
        bool gauge = k < 0 || s_known[k].gauge;
        //  Names are [a-z_] in cf/1; anything else becomes '_'.
        char name[80];
        size_t n = 0;
        for (const char *c = stats->names[i]; *c && n + 1 < sizeof name; c++)
            name[n++] = (char)((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ? *c : '_');
        name[n] = '\0';
        printf("# HELP cfutures_broker_%s%s %s.\n# TYPE cfutures_broker_%s%s %s\n"
               "cfutures_broker_%s%s %llu\n",
               name, gauge ? "" : "_total", k >= 0 ? s_known[k].help : "Reported by the broker",
               name, gauge ? "" : "_total",
               k < 0   ? "untyped"
               : gauge ? "gauge"
                       : "counter",
               name, gauge ? "" : "_total", (unsigned long long)stats->values[i]);
    }
}

//  One answer shown the way the command asks: 0 or S_EXIT_FAILURE.
static int s_show(const s_options_t *options, const s_stats_t *stats, const s_stats_t *before)
{
    uint64_t version = 0;
    s_get(stats, "stats_version", &version);
    if (options->command == S_METRICS) {
        s_print_metrics(stats, true);
        return 0;
    }
    if (options->json) {
        s_print_json(options, stats);
        return 0;
    }
    if (options->command == S_STATUS) {
        s_print_status(options, stats, before);
        return 0;
    }
    uint64_t count = 0;
    const char *what = options->command == S_WORKERS ? "workers" : "clients";
    s_get(stats, what, &count);
    printf("%llu %s connected to %s\n", (unsigned long long)count, what, options->broker);
    bool workers = options->command == S_WORKERS;
    if (version < 2 || !stats->list[workers ? 0 : 1]) {
        fprintf(stderr,
                "cf-admin: this broker does not report per-%s detail (cf/1 STATS "
                "without '%s')\n",
                options->command == S_WORKERS ? "worker" : "client",
                options->command == S_WORKERS ? "worker_list" : "client_list");
        return S_EXIT_FAILURE;
    }
    if (cf_admin_list_print(stats->list[workers ? 0 : 1], stats->list_len[workers ? 0 : 1],
                            workers ? s_worker_columns : s_client_columns,
                            workers ? S_WORKER_COLUMNS : S_CLIENT_COLUMNS, false)
        < 0) {
        fprintf(stderr, "cf-admin: the broker's %s is malformed\n", what);
        return S_EXIT_FAILURE;
    }
    return 0;
}

//  Sleeps interval_s unless interrupted.
static void s_pause(int interval_s)
{
    int64_t until_ms = cf_clock_now_ms() + (int64_t)interval_s * 1000;
    while (!s_interrupted && cf_clock_ms_until(until_ms) > 0)
        usleep(50 * 1000);
}

//  Asks once, or every interval until Ctrl-C with --watch.
static int s_loop(s_link_t *link, const s_options_t *options)
{
    bool tty = isatty(STDOUT_FILENO);
    s_stats_t stats[2] = { { 0 }, { 0 } };
    int status = 0, current = 0;
    bool have_before = false;
    do {
        cf_err_t rc = s_ask(link, options, &stats[current]);
        if (rc == CF_ECANCELLED)
            break;
        if (options->watch && tty)
            printf("\033[H\033[2J");    //  home, clear: redraw in place
        else if (options->watch && have_before)
            printf("\n");
        if (rc != CF_OK) {
            if (options->command == S_METRICS)
                s_print_metrics(NULL, false);
            if (rc == CF_ETIMEDOUT)
                fprintf(stderr,
                        "cf-admin: no answer from %s within %d ms (is cf-broker "
                        "running there? a CURVE broker needs --broker-key and --key)\n",
                        options->broker, options->timeout_ms);
            status = S_EXIT_FAILURE;
        }
        else
            status = s_show(options, &stats[current], have_before ? &stats[!current] : NULL);
        fflush(stdout);
        have_before = rc == CF_OK;
        if (rc == CF_OK)
            current = !current;
        if (options->watch)
            s_pause(options->interval_s);
    } while (options->watch && !s_interrupted);
    for (int k = 0; k < 2; k++) {
        free(stats[0].list[k]);
        free(stats[1].list[k]);
    }
    return options->watch && s_interrupted ? 0 : status;
}

static int s_run(const s_options_t *options)
{
    s_link_t link = { 0 };
    int status = S_EXIT_FAILURE;
    if (options->broker_key
        && (cf_keys_read_public(options->broker_key, link.server) != CF_OK
            || cf_keys_read_pair(options->key, &link.pair) != CF_OK)) {
        fprintf(stderr, "cf-admin: %s\n", cf_last_error());
        cf_keys_wipe(&link.pair);
        return S_EXIT_FAILURE;
    }
    link.curve = options->broker_key != NULL;
    link.ctx = zmq_ctx_new();
    link.enc = cf_proto_enc_new();
    if (!link.ctx || !link.enc)
        fprintf(stderr, "cf-admin: cannot start ZeroMQ: %s\n", zmq_strerror(errno));
    else {
        struct sigaction action = { .sa_handler = s_on_interrupt };
        sigaction(SIGINT, &action, NULL);
        sigaction(SIGTERM, &action, NULL);
        status = s_loop(&link, options);
    }
    s_link_close(&link);
    cf_proto_enc_destroy(&link.enc);
    if (link.ctx)
        zmq_ctx_term(link.ctx);
    cf_keys_wipe(&link.pair);
    return status;
}

int main(int argc, char **argv)
{
    s_options_t options;
    int status = s_parse(argc, argv, &options);
    return status == S_RUN ? s_run(&options) : status;
}

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

#include "cf_log.h"
#include "cf_procs.h"
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

#define S_DEFAULT_BROKER "tcp://127.0.0.1:5556"
#define S_MAX_LIBRARIES 64
//  How long worker processes get to finish their task after SIGTERM.
#define S_PROCS_GRACE_MS 30000
//  How often the main thread looks at its worker while waiting for signals.
#define S_TICK_MS 200

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
                        || !strcmp(flag, "--max-tasks");
        if (!takes_value)
            return s_fail("unknown option '%s' (see --help)", flag);
        if (i + 1 >= argc)
            return s_fail("%s needs a value", flag);
        const char *value = argv[++i];
        int *number = NULL;
        long max = 1000000;
        if (!strcmp(flag, "--broker"))
            broker = value;
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
    if (procs > 0) {
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
        });
        if (!pool)
            return s_fail("%s", cf_last_error());
        printf("ready procs=%d\n", procs);
    }
    else {
        worker = cf_worker_new(&(cf_worker_config_t){
            .endpoint = broker,
            .threads = threads,
            .heartbeat_ivl_ms = ivl_ms,
            .heartbeat_liveness = liveness,
            .max_tasks = max_tasks,
            .exit_on_broker_loss = false,
        });
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
        if (worker && cf_worker_wait(worker, 0) == CF_OK)
            break;                  //  --max-tasks reached
    }
    cf_worker_destroy(&worker);
    cf_procs_destroy(&pool, S_PROCS_GRACE_MS);
    return 0;
}

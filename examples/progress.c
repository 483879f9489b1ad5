//  SPDX-License-Identifier: MIT
//
//  progress: one long task whose own progress drives a text progress bar,
//  as tqdm over a long job, or Gearman's WORK_STATUS and WORK_DATA. The
//  task (count_primes in tasks_example.c) counts the primes below a limit
//  and says how far it is every 1% of the range, with a partial value (the
//  primes found so far); the client shows the bar and the latest count.
//
//      primes  42%|########4           | 420000/1000000 [00:00<00:00, ...]
//
//  The reports travel with the task wherever it runs: on CF_PROCESSES and
//  on a cluster through a broker, which passes on at most one report per
//  task every CF_TASK_REPORT_INTERVAL_MS (latest wins), however often the
//  task reports; the last one always comes before the result.
//
//  Usage: progress [threads | processes | remote [tcp://HOST:PORT]] [LIMIT]
//  The default is CF_PROCESSES (an embedded broker and worker processes);
//  LIMIT defaults to 5,000,000.

#include "example.h"

#include <inttypes.h>
#include <stdlib.h>

typedef struct {
    cf_progress_bar_t *bar;
    unsigned reports;    //  callback calls
    uint64_t primes;     //  the latest partial count
} watch_t;

//  Runs on the executor's thread for each report (see cf_future_on_progress).
static void on_progress(cf_future_t *f, const cf_task_report_t *report, void *arg)
{
    (void)f;
    watch_t *watch = arg;
    watch->reports++;
    const cf_value_t *primes = report->partial ? cf_value_get(report->partial, "primes") : NULL;
    if (primes)
        (void)cf_value_get_uint(primes, &watch->primes);
    cf_progress_bar_update(watch->bar, report->done);
}

int main(int argc, char **argv)
{
    int argi = 1;
    cf_executor_t *executor = example_executor(argc, argv, &argi, CF_PROCESSES, 2);
    if (!executor)
        return 2;
    uint64_t limit = 5000000;
    if (argi < argc) {
        char *end;
        limit = strtoull(argv[argi], &end, 10);
        if (*end || limit < 2) {
            fprintf(stderr, "%s: LIMIT must be a number >= 2, got '%s'\n", argv[0], argv[argi]);
            cf_executor_destroy(&executor);
            return 2;
        }
    }
    printf("Counting primes below %" PRIu64 " on %s\n", limit,
           cf_kind_name(cf_executor_kind(executor)));
    fflush(stdout);

    double start = example_seconds();
    watch_t watch = { .bar = cf_progress_bar_new(stdout, "primes", limit, CF_PROGRESS_BAR_AUTO) };
    uint64_t every = limit / 100 ? limit / 100 : 1;
    cf_future_t *f = cf_submit(executor, "count_primes", "UUU", (uint64_t)0, limit, every);
    if (!f || !watch.bar) {
        fprintf(stderr, "%s: %s\n", argv[0], f ? "out of memory" : cf_last_error());
        cf_progress_bar_destroy(&watch.bar);
        cf_executor_destroy(&executor);
        return 1;
    }
    cf_future_on_progress(f, on_progress, &watch);

    int64_t primes = 0;
    cf_err_t rc = cf_future_int(f, -1, &primes);
    //  No call after done; unset anyway before the bar goes.
    cf_future_on_progress(f, NULL, NULL);
    cf_progress_bar_destroy(&watch.bar);
    int status = 0;
    if (rc == CF_OK) {
        uint64_t done = 0, total = 0;
        cf_future_progress(f, &done, &total);
        printf("%" PRId64 " primes below %" PRIu64 " in %.2f s; last report %" PRIu64 "/%" PRIu64
               " with %" PRIu64 " primes, %u reports\n",
               primes, limit, example_seconds() - start, done, total, watch.primes, watch.reports);
    }
    else {
        printf("failed: ");
        if (rc == CF_ETASK)
            example_print_error(cf_future_error(f));
        else
            printf("%s", cf_strerror(rc));
        printf("\n");
        status = 1;
    }
    cf_future_release(&f);
    cf_executor_destroy(&executor);
    return status;
}

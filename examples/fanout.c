//  SPDX-License-Identifier: MIT
//
//  fanout: the three ways to fan out independent calls and collect them.
//
//  1. Ordered map: results come back in input order, whatever order they
//     finish in (executor.map).
//  2. as_completed with progress: each result as soon as it is ready, with a
//     running count (for future in as_completed(futures): ...).
//  3. Error isolation: one task's exception stays in its own future; the
//     others succeed and are reported separately (future.exception()).
//
//  The tasks (square, sleep_ms, shout) are in tasks_example.c.
//
//  Usage: fanout [threads | processes | remote [tcp://HOST:PORT]]

#include "example.h"

#include <stdlib.h>

//  1. executor.map(square, range(1, 9)) -> [1, 4, 9, ..., 64]
static int s_ordered_map(cf_executor_t *executor)
{
    printf("1. ordered map of square over 1..8\n");
    int64_t inputs[8];
    for (int i = 0; i < 8; i++)
        inputs[i] = i + 1;
    cf_map_t *map = cf_map_ints(executor, "square", inputs, 8, NULL);
    if (!map) {
        printf("   map failed: %s\n", cf_last_error());
        return 1;
    }
    printf("   [");
    const cf_value_t *value;
    cf_err_t rc;
    while ((rc = cf_map_next(map, &value)) == CF_OK) {
        int64_t square = 0;
        cf_value_get_int(value, &square);
        printf("%s%lld", cf_map_index(map) ? ", " : "", (long long)square);
    }
    printf("]\n");
    cf_map_destroy(&map);
    return rc == CF_ESTOP ? 0 : 1;
}

//  2. Tasks of different lengths, printed as each completes, with progress.
static int s_progress(cf_executor_t *executor)
{
    enum { TASKS = 6 };
    static const int delays_ms[TASKS] = { 300, 50, 200, 10, 250, 100 };
    printf("2. as_completed with progress\n");
    cf_future_t *futures[TASKS] = { NULL };
    int status = 0;
    for (int i = 0; i < TASKS; i++) {
        futures[i] = cf_submit(executor, "sleep_ms", "i", delays_ms[i]);
        if (!futures[i]) {
            printf("   submit failed: %s\n", cf_last_error());
            status = 1;
            goto done;
        }
        cf_future_set_tag(futures[i], (void *)&delays_ms[i]);
    }
    cf_as_completed_t *it = cf_as_completed_new(futures, TASKS, -1);
    if (!it) {
        printf("   as_completed failed: %s\n", cf_last_error());
        status = 1;
        goto done;
    }
    cf_future_t *future;
    int finished = 0;
    while (cf_as_completed_next(it, &future) == CF_OK) {
        const int *delay_ms = cf_future_tag(future);
        int64_t slept = 0;
        finished++;
        if (cf_future_int(future, -1, &slept) == CF_OK)
            printf("   [%d/%d] task of %d ms finished\n", finished, TASKS, *delay_ms);
        else {
            printf("   [%d/%d] task of %d ms failed: ", finished, TASKS, *delay_ms);
            example_print_error(cf_future_error(future));
            printf("\n");
            status = 1;
        }
    }
    cf_as_completed_destroy(&it);
done:
    for (int i = 0; i < TASKS; i++)
        cf_future_release(&futures[i]);
    return status;
}

//  3. Two bad inputs fail alone; the three good ones succeed.
static int s_error_isolation(cf_executor_t *executor)
{
    enum { WORDS = 5 };
    static const char *const words[WORDS] = { "alpha", "!boom", "beta", "!nope", "gamma" };
    printf("3. error isolation\n");
    cf_future_t *futures[WORDS] = { NULL };
    for (int i = 0; i < WORDS; i++) {
        futures[i] = cf_submit(executor, "shout", "s", words[i]);
        if (!futures[i]) {
            printf("   submit failed: %s\n", cf_last_error());
            while (i-- > 0)
                cf_future_release(&futures[i]);
            return 1;
        }
    }
    //  Wait for all of them; a failure does not stop the others.
    cf_future_t *done[WORDS], *not_done[WORDS];
    size_t n_done = 0, n_not_done = 0;
    cf_err_t rc = cf_wait(futures, WORDS, -1, CF_ALL_COMPLETED, done, &n_done, not_done,
                          &n_not_done);
    int succeeded = 0, failed = 0;
    for (int i = 0; i < WORDS; i++) {
        const char *loud;
        if (cf_future_str(futures[i], -1, &loud) == CF_OK) {
            printf("   ok:     %-6s -> %s\n", words[i], loud);
            succeeded++;
        }
    }
    for (int i = 0; i < WORDS; i++) {
        if (cf_future_error(futures[i])) {
            printf("   failed: %-6s -> ", words[i]);
            example_print_error(cf_future_error(futures[i]));
            printf("\n");
            failed++;
        }
    }
    printf("   %d succeeded, %d failed\n", succeeded, failed);
    for (int i = 0; i < WORDS; i++)
        cf_future_release(&futures[i]);
    //  Exactly the two bad inputs are expected to fail.
    return rc == CF_OK && succeeded == 3 && failed == 2 ? 0 : 1;
}

int main(int argc, char **argv)
{
    int argi = 1;
    cf_executor_t *executor = example_executor(argc, argv, &argi, CF_THREADS, 4);
    if (!executor)
        return 2;
    int status = 0;
    status |= s_ordered_map(executor);
    status |= s_progress(executor);
    status |= s_error_isolation(executor);
    cf_executor_destroy(&executor);
    return status;
}

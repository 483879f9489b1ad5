//  SPDX-License-Identifier: MIT
//
//  map_slow: results in order from a pool, the C version of
//
//      def slow_double(x):
//          time.sleep(0.1)
//          return x * 2
//
//      with ThreadPoolExecutor(max_workers=5) as executor:
//          print(list(executor.map(slow_double, range(10))))   # ~0.2 s
//
//  Ten calls of 100 ms on five workers take about 0.2 s instead of 1 s.
//  slow_double is in tasks_example.c. To run the same program on worker
//  processes, change CF_THREADS to CF_PROCESSES below, or pass "processes"
//  (or "remote tcp://HOST:PORT" for a cluster).

#include "example.h"

#include <stdlib.h>

int main(int argc, char **argv)
{
    int argi = 1;
    cf_executor_t *executor = example_executor(argc, argv, &argi, CF_THREADS, 5);
    if (!executor)
        return 2;

    int64_t inputs[10];
    for (int i = 0; i < 10; i++)
        inputs[i] = i;

    double start = example_seconds();
    cf_map_t *map = cf_map_ints(executor, "slow_double", inputs, 10, NULL);
    if (!map) {
        fprintf(stderr, "map failed: %s\n", cf_last_error());
        cf_executor_destroy(&executor);
        return 1;
    }
    //  Print like Python's list: "[0, 2, 4, ...]".
    printf("[");
    const cf_value_t *value;
    cf_err_t rc;
    size_t count = 0;
    while ((rc = cf_map_next(map, &value)) == CF_OK) {
        char *text = cf_value_repr(value);
        printf("%s%s", count++ ? ", " : "", text ? text : "?");
        free(text);
    }
    printf("]\n");
    int status = 0;
    if (rc != CF_ESTOP) {
        fprintf(stderr, "map stopped at input %zu: ", cf_map_index(map));
        const cf_task_error_t *error = cf_map_error(map);
        if (error)
            fprintf(stderr, "%s: %s\n", error->type, error->message);
        else
            fprintf(stderr, "%s\n", cf_strerror(rc));
        status = 1;
    }
    printf("%zu results on %s in %.2f s\n", count, cf_kind_name(cf_executor_kind(executor)),
           example_seconds() - start);
    cf_map_destroy(&map);
    cf_executor_destroy(&executor);
    return status;
}

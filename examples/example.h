//  SPDX-License-Identifier: MIT
//
//  What the example programs share: the task functions and the choice of
//  executor kind on the command line.
//
//  The tasks (is_prime, slow_double, ...) live in tasks_example.c, which is
//  also built as libexample_tasks.so for cf-worker. Including it here
//  registers the same functions in the example program itself, which is what
//  CF_THREADS and CF_PROCESSES need: the program's own worker threads and
//  forked worker processes find them by name. On a cluster the workers find
//  them in the library instead. Same names, same code, any kind.

#ifndef CF_EXAMPLE_H
#define CF_EXAMPLE_H

#include "cfutures.h"

#include "tasks_example.c"

#include <stdio.h>
#include <string.h>
#include <time.h>

//  The executor an example runs on, from its command line:
//      (nothing)                   the example's default kind
//      threads | processes         a local pool of max_workers
//      remote [ENDPOINT]           a cf-broker (default tcp://127.0.0.1:5555)
//  *argi is where the kind argument is and is advanced past what was used.
//  NULL after printing why (usage, or cf_last_error()).
static inline cf_executor_t *example_executor(int argc, char **argv, int *argi,
                                              cf_kind_t default_kind, int max_workers)
{
    cf_kind_t kind = default_kind;
    cf_options_t options = { .max_workers = max_workers };
    const char *endpoint = "tcp://127.0.0.1:5555";
    if (*argi < argc) {
        const char *word = argv[*argi];
        if (!strcmp(word, "threads"))
            kind = CF_THREADS;
        else if (!strcmp(word, "processes"))
            kind = CF_PROCESSES;
        else if (!strcmp(word, "remote")) {
            kind = CF_REMOTE;
            //  A ZeroMQ endpoint, not a URL the program takes next.
            if (*argi + 1 < argc
                && (!strncmp(argv[*argi + 1], "tcp://", 6)
                    || !strncmp(argv[*argi + 1], "ipc://", 6)))
                endpoint = argv[++*argi];
        }
        else {
            fprintf(stderr, "usage: %s [threads | processes | remote [tcp://HOST:PORT]]\n",
                    argv[0]);
            return NULL;
        }
        ++*argi;
    }
    cf_executor_t *executor;
    if (kind == CF_REMOTE)
        executor = cf_executor_connect(endpoint, &options);
    else
        executor = cf_executor_new(kind, &options);
    if (!executor)
        fprintf(stderr, "%s: cannot start a %s executor: %s\n", argv[0], cf_kind_name(kind),
                cf_last_error());
    return executor;
}

//  Seconds since an arbitrary point, for "took 0.21 s" lines.
static inline double example_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

//  "ValueError: B failed" for a failed future.
static inline void example_print_error(const cf_task_error_t *error)
{
    if (error)
        printf("%s: %s", error->type, error->message);
    else
        printf("(no error)");
}

#endif

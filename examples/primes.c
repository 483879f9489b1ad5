//  SPDX-License-Identifier: MIT
//
//  primes: CPU-bound work on worker processes, the C version of
//
//      with ProcessPoolExecutor() as executor:
//          futures = [executor.submit(is_prime, n) for n in NUMBERS]
//          for n, future in zip(NUMBERS, futures):
//              try:
//                  print(n, "is prime" if future.result() else "is not prime")
//              except Exception as error:
//                  print(n, "failed:", repr(error))
//
//  Each check of an 18-digit number is about a second of trial division
//  (is_prime is in tasks_example.c), so the pool's processes run several at
//  once. One input is not an integer: its future fails with TypeError while
//  every other one succeeds.
//
//  Usage: primes [threads | processes | remote [tcp://HOST:PORT]]
//  The default is CF_PROCESSES: nothing else to start. With "remote" the
//  same checks run on a cluster (cf-broker plus cf-workers loaded with
//  libexample_tasks.so).

#include "example.h"

#include <inttypes.h>

typedef struct {
    const char *text;    //  as printed
    uint64_t number;
    bool is_number;    //  false: submitted as a string, to show a TypeError
} input_t;

static const input_t s_inputs[] = {
    { "2", 2, true },
    { "11111111111111111", 11111111111111111ULL, true },
    { "11111111111111113", 11111111111111113ULL, true },
    { "112272535095293", 112272535095293ULL, true },
    { "999999999999999989", 999999999999999989ULL, true },
    { "1000000000000000001", 1000000000000000001ULL, true },
    { "1000000000000000003", 1000000000000000003ULL, true },
    { "1099726899285419", 1099726899285419ULL, true },
    { "9999999999999999", 9999999999999999ULL, true },
    { "1e18", 0, false },
};
#define INPUTS (sizeof s_inputs / sizeof s_inputs[0])

int main(int argc, char **argv)
{
    int argi = 1;
    cf_executor_t *executor = example_executor(argc, argv, &argi, CF_PROCESSES, 0);
    if (!executor)
        return 2;
    printf("Checking %zu numbers on %s", INPUTS, cf_kind_name(cf_executor_kind(executor)));
    if (cf_executor_max_workers(executor) > 0)
        printf(" (%d workers)", cf_executor_max_workers(executor));
    printf("\n");

    double start = example_seconds();
    cf_future_t *futures[INPUTS] = { NULL };
    for (size_t i = 0; i < INPUTS; i++) {
        const input_t *in = &s_inputs[i];
        futures[i] = in->is_number ? cf_submit(executor, "is_prime", "U", in->number)
                                   : cf_submit(executor, "is_prime", "s", in->text);
        if (!futures[i])
            printf("%20s  not submitted: %s\n", in->text, cf_last_error());
    }

    //  Results in input order; each future succeeds or fails on its own.
    int failed = 0;
    for (size_t i = 0; i < INPUTS; i++) {
        if (!futures[i]) {
            failed++;
            continue;
        }
        bool prime = false;
        cf_err_t rc = cf_future_bool(futures[i], -1, &prime);
        if (rc == CF_OK)
            printf("%20s  %s\n", s_inputs[i].text, prime ? "is prime" : "is not prime");
        else {
            failed++;
            printf("%20s  failed: ", s_inputs[i].text);
            if (rc == CF_ETASK)
                example_print_error(cf_future_error(futures[i]));
            else
                printf("%s", cf_strerror(rc));
            printf("\n");
        }
        cf_future_release(&futures[i]);
    }
    double elapsed = example_seconds() - start;
    printf("Checked %zu numbers in %.2f s (%d failed)\n", INPUTS, elapsed, failed);
    cf_executor_destroy(&executor);
    return 0;
}

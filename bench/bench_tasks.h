//  The tasks the cfutures benchmark runs, shared by cf_bench (which
//  registers them in itself for CF_THREADS and CF_PROCESSES) and by
//  libbench_tasks.so (which cf-worker loads for CF_REMOTE), so the very same
//  code runs on every executor kind:
//
//      bench_double(x: int) -> 2 * x        the no-op
//      bench_is_prime(n: uint) -> bool      trial division, CPU-bound
//      bench_sleep_ms(ms: int) -> ms        sleeps, I/O-bound stand-in
//      bench_echo(data: bin) -> data        payloads: the bytes back

#ifndef BENCH_TASKS_H
#define BENCH_TASKS_H

#include <stdbool.h>
#include <stdint.h>

//  True when n is prime, by trial division with 6k +/- 1: the loop the
//  bench_is_prime task runs, exported so cf_bench can time the sequential
//  run of exactly the same code.
bool bench_is_prime_u64(uint64_t n);

#endif

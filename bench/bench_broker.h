//  A real cf-broker for the benches that drive one at raw-protocol speed
//  (routing_bench, scale_bench): started on free loopback ports, its
//  endpoints read from its "ready" line, stopped by PID, and its CPU read
//  from its process CPU clock.

#ifndef BENCH_BROKER_H
#define BENCH_BROKER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct {
    pid_t pid;
    char clients[128], workers[128];
} bench_broker_t;

typedef struct {
    const char *log;    //  append the broker's stderr there (NULL: /dev/null)
    int fd_limit;       //  its RLIMIT_NOFILE (0: ours)
    int liveness;       //  its --liveness (0: the broker's default)
} bench_broker_opts_t;

//  Starts bin (queue bound 10,000,000) and waits for its ready line. False
//  with errno (or 0) when it could not start or did not say ready.
bool bench_broker_start(const char *bin, const bench_broker_opts_t *opts, bench_broker_t *b);
//  SIGTERM, and waits for it.
void bench_broker_stop(bench_broker_t *b);
//  CPU time of pid (all its threads) in µs, to the nanosecond (its process
//  CPU clock; /proc/PID/stat counts 10 ms ticks); -1 when it cannot be read.
int64_t bench_broker_cpu_us(pid_t pid);

#endif

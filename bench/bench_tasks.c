//  The benchmark's task functions (see bench_tasks.h). Each is the same work
//  as its Python counterpart in py_futures.py.

#include "bench_tasks.h"

#include "cfutures.h"

#include <errno.h>
#include <time.h>

bool bench_is_prime_u64(uint64_t n)
{
    if (n < 2)
        return false;
    if (n < 4)
        return true;
    if (n % 2 == 0 || n % 3 == 0)
        return false;
    //  i <= n / i rather than i * i <= n: no overflow near 2^64.
    for (uint64_t i = 5; i <= n / i; i += 6) {
        if (n % i == 0 || n % (i + 2) == 0)
            return false;
    }
    return true;
}

static void bench_double(cf_call_t *call)
{
    int64_t x = cf_arg_int(call, 0);
    if (cf_failed(call))
        return;
    cf_return_int(call, 2 * x);
}
CF_TASK(bench_double);

static void bench_is_prime(cf_call_t *call)
{
    uint64_t n = cf_arg_uint(call, 0);
    if (cf_failed(call))
        return;
    cf_return_bool(call, bench_is_prime_u64(n));
}
CF_TASK(bench_is_prime);

static void bench_sleep_ms(cf_call_t *call)
{
    int64_t ms = cf_arg_int(call, 0);
    if (cf_failed(call))
        return;
    if (ms > 0) {
        struct timespec ts = { .tv_sec = (time_t)(ms / 1000),
                               .tv_nsec = (long)(ms % 1000) * 1000000L };
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
            ;
    }
    cf_return_int(call, ms);
}
CF_TASK(bench_sleep_ms);

//  The payload workload: returns its bytes argument as is.
static void bench_echo(cf_call_t *call)
{
    size_t len = 0;
    const void *data = cf_arg_bytes(call, 0, &len);
    if (cf_failed(call))
        return;
    cf_return_bytes(call, data, len);
}
CF_TASK(bench_echo);

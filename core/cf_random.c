//  See cf_random.h.

#include "cf_random.h"

#include <stdint.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

uint64_t cf_random_u64(void)
{
    uint64_t value = 0;
    if (getrandom(&value, sizeof value, GRND_NONBLOCK) != (ssize_t)sizeof value) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        value = ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 16)
                ^ (uint64_t)(uintptr_t)&value;
        value *= 0x9e3779b97f4a7c15ULL;    //  spread the few changing bits
    }
    return value ? value : 1;
}

//  Monotonic clock helpers.

#include "cf_clock.h"

int64_t cf_clock_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t cf_clock_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

struct timespec cf_clock_deadline(int timeout_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec += 1;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

int cf_clock_ms_until(int64_t deadline_ms)
{
    if (deadline_ms < 0)
        return -1;
    int64_t left = deadline_ms - cf_clock_now_ms();
    if (left <= 0)
        return 0;
    return left > INT32_MAX ? INT32_MAX : (int)left;
}

//  One attribute for every condition: futures make one per submission.
static pthread_once_t s_condattr_once = PTHREAD_ONCE_INIT;
static pthread_condattr_t s_condattr;
static int s_condattr_rc;

static void s_condattr_init(void)
{
    s_condattr_rc = pthread_condattr_init(&s_condattr);
    if (s_condattr_rc == 0)
        s_condattr_rc = pthread_condattr_setclock(&s_condattr, CLOCK_MONOTONIC);
}

int cf_clock_cond_init(pthread_cond_t *cond)
{
    pthread_once(&s_condattr_once, s_condattr_init);
    return s_condattr_rc != 0 ? s_condattr_rc : pthread_cond_init(cond, &s_condattr);
}

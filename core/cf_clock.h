//  Monotonic time. All deadlines in cfutures are absolute cf_clock_now_ms()
//  values, so a wall-clock jump never fires or stalls a timer.

#ifndef CF_CLOCK_H
#define CF_CLOCK_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

//  Milliseconds on CLOCK_MONOTONIC.
int64_t cf_clock_now_ms(void);
//  Microseconds on CLOCK_MONOTONIC (latency measurements).
int64_t cf_clock_now_us(void);
//  The absolute CLOCK_MONOTONIC time timeout_ms from now, for
//  pthread_cond_timedwait on a condition created with cf_clock_cond_init.
struct timespec cf_clock_deadline(int timeout_ms);
//  Initialises cond on CLOCK_MONOTONIC, for deadlines from
//  cf_clock_deadline. Returns pthread_cond_init's result.
int cf_clock_cond_init(pthread_cond_t *cond);
//  Milliseconds from now until deadline_ms (never negative; -1 stays -1).
int cf_clock_ms_until(int64_t deadline_ms);

#endif

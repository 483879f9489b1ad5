//  Process-wide log handler. The handler and level are read on every call
//  without a lock: they are set once at startup by the application or the
//  daemon's main, and atomics keep a late change well-defined.

#include "cf_log.h"

#include "cf_clock.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

//  Zero-initialised (no handler): clang 14 refuses NULL as the constant
//  initialiser of an atomic function pointer.
static _Atomic(cf_log_fn *) s_handler;
static void *_Atomic s_handler_arg;
static atomic_int s_min_level = CF_LOG_INFO;

void cf_log_set_handler(cf_log_fn *fn, void *arg, cf_log_level_t min_level)
{
    atomic_store(&s_handler_arg, arg);
    atomic_store(&s_min_level, (int)min_level);
    atomic_store(&s_handler, fn);
}

bool cf_log_enabled(cf_log_level_t level)
{
    return atomic_load(&s_handler) != NULL && (int)level >= atomic_load(&s_min_level);
}

void cf_log(cf_log_level_t level, const char *component, const char *fmt, ...)
{
    cf_log_fn *fn = atomic_load(&s_handler);
    if (!fn || (int)level < atomic_load(&s_min_level))
        return;
    char message[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    fn(level, component, message, atomic_load(&s_handler_arg));
}

void cf_log_to_stderr(cf_log_level_t level, const char *component, const char *message, void *arg)
{
    static const char letters[] = "DIWE";
    (void)arg;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    //  One fprintf per line so lines from several threads never interleave.
    fprintf(stderr, "%02d:%02d:%02d.%03ld %c: %s: %s\n", tm.tm_hour, tm.tm_min, tm.tm_sec,
            ts.tv_nsec / 1000000, letters[level & 3], component, message);
}

bool cf_log_limit_allow(cf_log_limit_t *limit, const char *component, const char *what)
{
    int64_t now = cf_clock_now_ms();
    if (now - limit->window_ms >= 1000) {
        if (limit->suppressed > 0)
            cf_log_warn(component, "%llu more %s were not logged",
                        (unsigned long long)limit->suppressed, what);
        limit->window_ms = now;
        limit->lines = 0;
        limit->suppressed = 0;
    }
    if (limit->lines < limit->per_sec) {
        limit->lines++;
        return true;
    }
    limit->suppressed++;
    return false;
}

//  Decides, under the site's lock, what becomes of one line: false when it
//  is left out; else *carried gets the lines left out before it and *over
//  whether it is the one that reaches the limit.
static bool s_rate_take(cf_log_rate_t *rate, uint64_t *carried, bool *over)
{
    int64_t now = cf_clock_now_ms();
    bool take = false;
    *carried = 0;
    *over = false;
    pthread_mutex_lock(&rate->lock);
    if (rate->logged == 0 || now - rate->window_ms >= rate->interval_ms) {
        rate->window_ms = now;
        rate->logged = 0;
    }
    if (rate->logged < rate->lines + 1) {
        take = true;
        *over = rate->logged == rate->lines;
        *carried = rate->suppressed;
        rate->suppressed = 0;
        rate->logged++;
    }
    else
        rate->suppressed++;
    pthread_mutex_unlock(&rate->lock);
    return take;
}

void cf_log_rate(cf_log_rate_t *rate, cf_log_level_t level, const char *component, const char *fmt,
                 ...)
{
    if (!cf_log_enabled(level))
        return;
    uint64_t carried;
    bool over;
    if (!s_rate_take(rate, &carried, &over))
        return;
    //  Shorter than cf_log's line, so the suffix is never the part cut.
    char message[440];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    if (over)
        cf_log(level, component, "%s (over %d lines in %d ms: more like this suppressed)", message,
               rate->lines, rate->interval_ms);
    else if (carried > 0)
        cf_log(level, component, "%s (%llu more like this suppressed)", message,
               (unsigned long long)carried);
    else
        cf_log(level, component, "%s", message);
}

//  Internal logging: one line per event, "time L: component: message".
//  The library is silent unless the application (or a daemon's main) sets a
//  handler with cf_log_set_handler. Never log payloads or keys.

#ifndef CF_LOG_H
#define CF_LOG_H

#include "cfutures.h"

#include <pthread.h>

void cf_log(cf_log_level_t level, const char *component, const char *fmt, ...) CF_PRINTF(3, 4);
//  True when a message at level would be passed to the handler; lets hot
//  paths skip formatting.
bool cf_log_enabled(cf_log_level_t level);

//  A rate limit for one kind of repeated line (anything a peer can cause
//  once per message): at most per_sec lines a second, then one line saying
//  how many were left out. Zero-initialise it and set per_sec; not
//  thread-safe (each limiter belongs to one thread, usually an actor).
typedef struct {
    int per_sec;            //  lines allowed per second
    int lines;              //  lines in the current second
    int64_t window_ms;      //  start of the current second
    uint64_t suppressed;    //  lines left out in it
} cf_log_limit_t;

//  True when one more line may be logged now. At the turn of a second it
//  first logs, under component, how many lines the last one left out,
//  naming them with what ("denied handshakes").
bool cf_log_limit_allow(cf_log_limit_t *limit, const char *component, const char *what);

//  A rate limit for one log call site, shared by every thread that passes
//  it (a per-site static, see cf_log_rated): at most `lines` lines per
//  interval_ms. The first line over the limit in an interval is logged with
//  " (over N lines in M ms: more like this suppressed)"; the ones after it
//  are only counted, and the site's next line that gets through, in a later
//  interval, ends with " (K more like this suppressed)". For lines a peer
//  can cause once per message or per task: without it one bad message made
//  cf-worker write 24,386 lines. Initialise with CF_LOG_RATE_INIT.
typedef struct {
    pthread_mutex_t lock;    //  guards the fields below
    int lines;               //  lines allowed per interval
    int interval_ms;         //  length of an interval
    int64_t window_ms;       //  start of the current interval
    int logged;              //  lines logged in it (the marked one included)
    uint64_t suppressed;     //  lines left out since the site's last line
} cf_log_rate_t;

#define CF_LOG_RATE_INIT(lines, interval_ms) \
    { \
        PTHREAD_MUTEX_INITIALIZER, (lines), (interval_ms), 0, 0, 0 \
    }

//  The limit cf_log_warn_rated and kin use: 5 lines a second per call site.
#define CF_LOG_RATE_LINES 5
#define CF_LOG_RATE_MS    1000

//  Logs one line through rate (see cf_log_rate_t) unless the level is off
//  (then nothing is counted or locked: hot paths pay one load). Safe from
//  any thread.
void cf_log_rate(cf_log_rate_t *rate, cf_log_level_t level, const char *component, const char *fmt,
                 ...) CF_PRINTF(4, 5);

//  cf_log with a rate limit of its own at this call site.
#define cf_log_rated(level, comp, lines, interval_ms, ...) \
    do { \
        static cf_log_rate_t s_log_rate_ = CF_LOG_RATE_INIT(lines, interval_ms); \
        cf_log_rate(&s_log_rate_, level, comp, __VA_ARGS__); \
    } while (0)
#define cf_log_warn_rated(comp, ...) \
    cf_log_rated(CF_LOG_WARN, comp, CF_LOG_RATE_LINES, CF_LOG_RATE_MS, __VA_ARGS__)
#define cf_log_error_rated(comp, ...) \
    cf_log_rated(CF_LOG_ERROR, comp, CF_LOG_RATE_LINES, CF_LOG_RATE_MS, __VA_ARGS__)

#define cf_log_debug(comp, ...) cf_log(CF_LOG_DEBUG, comp, __VA_ARGS__)
#define cf_log_info(comp, ...)  cf_log(CF_LOG_INFO, comp, __VA_ARGS__)
#define cf_log_warn(comp, ...)  cf_log(CF_LOG_WARN, comp, __VA_ARGS__)
#define cf_log_error(comp, ...) cf_log(CF_LOG_ERROR, comp, __VA_ARGS__)

#endif

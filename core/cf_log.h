//  Internal logging: one line per event, "time L: component: message".
//  The library is silent unless the application (or a daemon's main) sets a
//  handler with cf_log_set_handler. Never log payloads or keys.

#ifndef CF_LOG_H
#define CF_LOG_H

#include "cfutures.h"

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

#define cf_log_debug(comp, ...) cf_log(CF_LOG_DEBUG, comp, __VA_ARGS__)
#define cf_log_info(comp, ...)  cf_log(CF_LOG_INFO, comp, __VA_ARGS__)
#define cf_log_warn(comp, ...)  cf_log(CF_LOG_WARN, comp, __VA_ARGS__)
#define cf_log_error(comp, ...) cf_log(CF_LOG_ERROR, comp, __VA_ARGS__)

#endif

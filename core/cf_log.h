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

#define cf_log_debug(comp, ...) cf_log(CF_LOG_DEBUG, comp, __VA_ARGS__)
#define cf_log_info(comp, ...)  cf_log(CF_LOG_INFO, comp, __VA_ARGS__)
#define cf_log_warn(comp, ...)  cf_log(CF_LOG_WARN, comp, __VA_ARGS__)
#define cf_log_error(comp, ...) cf_log(CF_LOG_ERROR, comp, __VA_ARGS__)

#endif

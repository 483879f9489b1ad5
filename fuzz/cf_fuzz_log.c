//  core/cf_log for the fuzz build: silent. The real core/cf_log.c does not
//  compile with clang 14 ("static _Atomic(cf_log_fn *) s_handler = NULL":
//  clang takes ((void *)0) converted to an atomic function pointer as not a
//  constant), and a fuzzer wants no log lines anyway, so the fuzz build
//  links this instead: nothing is ever logged, rate limits never allow.

#include "cf_log.h"

void cf_log_set_handler(cf_log_fn *fn, void *arg, cf_log_level_t min_level)
{
    (void)fn;
    (void)arg;
    (void)min_level;
}

bool cf_log_enabled(cf_log_level_t level)
{
    (void)level;
    return false;
}

void cf_log(cf_log_level_t level, const char *component, const char *fmt, ...)
{
    (void)level;
    (void)component;
    (void)fmt;
}

void cf_log_to_stderr(cf_log_level_t level, const char *component, const char *message,
                      void *arg)
{
    (void)level;
    (void)component;
    (void)message;
    (void)arg;
}

bool cf_log_limit_allow(cf_log_limit_t *limit, const char *component, const char *what)
{
    (void)component;
    (void)what;
    limit->suppressed++;
    return false;
}

//  Internal side of errors: the thread-local "last error" that constructors
//  and cf_submit leave behind when they return NULL.

#ifndef CF_ERROR_H
#define CF_ERROR_H

#include "cfutures.h"

//  Records err and a printf-style message as this thread's last error and
//  returns err, so a failing path reads: return cf_error_set(CF_EINVAL, ...).
cf_err_t cf_error_set(cf_err_t err, const char *fmt, ...) CF_PRINTF(2, 3);

#endif

//  Internal side of errors: the thread-local "last error" that constructors
//  and cf_submit leave behind when they return NULL.

#ifndef CF_ERROR_H
#define CF_ERROR_H

#include "cfutures.h"

#include <stddef.h>

//  Records err and a printf-style message as this thread's last error and
//  returns err, so a failing path reads: return cf_error_set(CF_EINVAL, ...).
cf_err_t cf_error_set(cf_err_t err, const char *fmt, ...) CF_PRINTF(2, 3);

//  calloc that leaves CF_ENOMEM "out of memory" as the last error when it
//  fails, so a constructor's allocation reads: if (!(x = cf_calloc(...)))
//  return NULL (or goto failed).
void *cf_calloc(size_t count, size_t size);

#endif

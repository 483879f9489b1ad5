//  Error names and the per-thread last error.

#include "cf_error.h"

#include <stdio.h>
#include <stdlib.h>

static const char *s_text[] = {
#define CF_ERR_TEXT_(name, text) text,
    CF_ERRORS(CF_ERR_TEXT_)
#undef CF_ERR_TEXT_
};

static _Thread_local cf_err_t s_last_err = CF_OK;
static _Thread_local char s_last_msg[256];

const char *cf_strerror(cf_err_t err)
{
    if ((int)err < 0 || err >= CF_ERR_COUNT_)
        return "unknown error";
    return s_text[err];
}

cf_err_t cf_error_set(cf_err_t err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s_last_msg, sizeof s_last_msg, fmt, ap);
    va_end(ap);
    s_last_err = err;
    return err;
}

cf_err_t cf_last_err(void)
{
    return s_last_err;
}

const char *cf_last_error(void)
{
    return s_last_err == CF_OK ? "" : s_last_msg;
}

void *cf_calloc(size_t count, size_t size)
{
    void *p = calloc(count, size);
    if (!p)
        cf_error_set(CF_ENOMEM, "out of memory");
    return p;
}

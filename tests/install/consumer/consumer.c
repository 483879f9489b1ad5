//  SPDX-License-Identifier: MIT
//
//  A program a user of the installed library would write: registers a
//  task, runs it on threads, checks the answer and that the library it runs
//  with is the version of the header it was built with. Exit 0 only when
//  all of that holds; it prints what it saw either way.

#include <cfutures.h>

#include <stdio.h>
#include <string.h>

static void triple(cf_call_t *call)
{
    int64_t x = cf_arg_int(call, 0);
    if (!cf_failed(call))
        cf_return_int(call, 3 * x);
}
CF_TASK(triple);

int main(void)
{
    int major = -1, minor = -1, patch = -1;
    const char *version = cf_version(&major, &minor, &patch);
    if (strcmp(version, CF_VERSION_STRING) != 0 || major != CF_VERSION_MAJOR
        || minor != CF_VERSION_MINOR || patch != CF_VERSION_PATCH) {
        fprintf(stderr, "header %s, library %s\n", CF_VERSION_STRING, version);
        return 1;
    }
    cf_executor_t *ex = cf_executor_new(CF_THREADS, &(cf_options_t){ .max_workers = 2 });
    cf_future_t *f = ex ? cf_submit(ex, "triple", "i", 14) : NULL;
    int64_t value = 0;
    cf_err_t rc = f ? cf_future_int(f, 10000, &value) : cf_last_err();
    printf("c consumer: cfutures %s, triple(14) = %lld (%s)\n", version, (long long)value,
           cf_strerror(rc));
    cf_future_release(&f);
    cf_executor_destroy(&ex);
    return rc == CF_OK && value == 42 ? 0 : 1;
}

//  A task library of its own for routing tests (tests/test_routing.c): a
//  cf-worker that loads only this one serves functions the example library
//  lacks, and none of its functions.

#include "cfutures.h"

#include <unistd.h>

//  route_pid() -> the pid of the process that ran it.
static void route_pid(cf_call_t *call)
{
    cf_return_int(call, (int64_t)getpid());
}
CF_TASK(route_pid);

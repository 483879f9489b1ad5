//  The task library of tests/test_multi_broker.c: one task that leaves a
//  record of every execution, so that the test can count how many times
//  each task ran (at-least-once across a broker's death) and when it began
//  on which worker (the time from a broker's death to its tasks running
//  elsewhere).

#include "cfutures.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

//  One execution, as multi_mark appends it: 16 bytes, one write() to a file
//  opened O_APPEND, so records from several processes never interleave.
typedef struct {
    uint32_t index;      //  the task's own number
    int32_t pid;         //  the cf-worker that ran it
    int64_t start_us;    //  CLOCK_MONOTONIC, shared by every process here
} multi_record_t;

_Static_assert(sizeof(multi_record_t) == 16, "a record is 16 bytes");

//  multi_mark(path: str, index: int, sleep_us: int) -> index * 3 + 1, after
//  appending a record to path and sleeping sleep_us.
static void multi_mark(cf_call_t *call)
{
    const char *path = cf_arg_str(call, 0);
    int64_t index = cf_arg_int(call, 1);
    int64_t sleep_us = cf_arg_int(call, 2);
    if (cf_failed(call))
        return;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    multi_record_t record = {
        .index = (uint32_t)index,
        .pid = (int32_t)getpid(),
        .start_us = (int64_t)now.tv_sec * 1000000 + now.tv_nsec / 1000,
    };
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        cf_raise(call, "OSError", "cannot open %s: %s", path, strerror(errno));
        return;
    }
    ssize_t written = write(fd, &record, sizeof record);
    int saved = errno;
    close(fd);
    if (written != (ssize_t)sizeof record) {
        cf_raise(call, "OSError", "cannot write %s: %s", path, strerror(saved));
        return;
    }
    if (sleep_us > 0) {
        struct timespec nap = { (time_t)(sleep_us / 1000000), (long)(sleep_us % 1000000) * 1000 };
        while (nanosleep(&nap, &nap) != 0 && errno == EINTR)
            ;
    }
    cf_return_int(call, index * 3 + 1);
}
CF_TASK(multi_mark);

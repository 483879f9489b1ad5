//  SPDX-License-Identifier: MIT
//
//  The example task library: the functions the example programs and the
//  integration tests run.
//
//  Built twice. As libexample_tasks.so it is what a cluster runs:
//      cf-worker --broker tcp://host:5556 --tasks ./libexample_tasks.so
//  And each example program #includes it (through example.h), so the very
//  same functions are registered in the program for CF_THREADS and
//  CF_PROCESSES. A task is found by name on every executor kind, so one
//  definition serves all three.
//
//  Each function reads its arguments with cf_arg_* (a missing or mistyped
//  argument raises TypeError on the call by itself) and returns one value or
//  raises an error, like a Python function. Never a wrong number: where C
//  would wrap (2 * x, x * x beyond 64 bits), the task raises OverflowError,
//  since the Python function it stands for would return the exact result.

#include "cfutures.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

//  Sleeps ms milliseconds, resuming after signals.
static void s_example_sleep_ms(int64_t ms)
{
    if (ms <= 0)
        return;
    struct timespec ts = { .tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

//  True when n is prime, by trial division with 6k +/- 1: deliberately the
//  plain CPU-bound loop of the Python original (about a second for an
//  18-digit prime), so that processes visibly beat one thread.
static bool s_example_is_prime(uint64_t n)
{
    if (n < 2)
        return false;
    if (n < 4)
        return true;
    if (n % 2 == 0 || n % 3 == 0)
        return false;
    //  i <= n / i rather than i * i <= n: no overflow near 2^64.
    for (uint64_t i = 5; i <= n / i; i += 6) {
        if (n % i == 0 || n % (i + 2) == 0)
            return false;
    }
    return true;
}

//  is_prime(n: non-negative int) -> bool. A negative or non-integer n is a
//  TypeError, raised by cf_arg_uint.
static void is_prime(cf_call_t *call)
{
    uint64_t n = cf_arg_uint(call, 0);
    if (cf_failed(call))
        return;
    cf_return_bool(call, s_example_is_prime(n));
}
CF_TASK(is_prime);

//  slow_double(x: int) -> 2 * x, after 100 ms: the stand-in for a slow call.
//  OverflowError when 2 * x does not fit in 64 bits.
static void slow_double(cf_call_t *call)
{
    int64_t x = cf_arg_int(call, 0);
    if (cf_failed(call))
        return;
    s_example_sleep_ms(100);
    int64_t doubled;
    if (__builtin_mul_overflow(x, 2, &doubled))
        cf_raise(call, "OverflowError", "2 * %lld does not fit in 64 bits", (long long)x);
    else
        cf_return_int(call, doubled);
}
CF_TASK(slow_double);

//  square(x: int) -> x * x, at once. OverflowError when x * x does not fit
//  in 64 bits (square(2**40) would be 2**80): never a wrapped number.
static void square(cf_call_t *call)
{
    int64_t x = cf_arg_int(call, 0);
    if (cf_failed(call))
        return;
    int64_t squared;
    if (__builtin_mul_overflow(x, x, &squared))
        cf_raise(call, "OverflowError", "%lld ** 2 does not fit in 64 bits", (long long)x);
    else
        cf_return_int(call, squared);
}
CF_TASK(square);

//  sleep_ms(ms: int) -> ms, after sleeping that long.
static void sleep_ms(cf_call_t *call)
{
    int64_t ms = cf_arg_int(call, 0);
    if (cf_failed(call))
        return;
    s_example_sleep_ms(ms);
    cf_return_int(call, ms);
}
CF_TASK(sleep_ms);

//  sleep_pid(ms: int[, pid_file: str]) -> the pid of the process that ran
//  it, after sleeping ms. With pid_file it first writes that pid there
//  (one write, newline-terminated), so a fault test can tell which process
//  runs the task while it runs, and kill exactly that one.
static void sleep_pid(cf_call_t *call)
{
    int64_t ms = cf_arg_int(call, 0);
    const char *pid_file = cf_arg_count(call) > 1 ? cf_arg_str(call, 1) : NULL;
    if (cf_failed(call))
        return;
    if (pid_file) {
        char text[32];
        int len = snprintf(text, sizeof text, "%ld\n", (long)getpid());
        //  Write to a temporary name and rename: a reader never sees half.
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.%ld.tmp", pid_file, (long)getpid());
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) {
            cf_raise(call, "OSError", "cannot create %s: %s", tmp, strerror(errno));
            return;
        }
        ssize_t written = write(fd, text, (size_t)len);
        int saved = errno;
        close(fd);
        if (written != len || rename(tmp, pid_file) < 0) {
            cf_raise(call, "OSError", "cannot write %s: %s", pid_file,
                     strerror(written != len ? saved : errno));
            unlink(tmp);
            return;
        }
    }
    s_example_sleep_ms(ms);
    cf_return_int(call, (int64_t)getpid());
}
CF_TASK(sleep_pid);

//  fail(message: str[, type: str]) raises ValueError (or the given type)
//  with that message: an error that must come back intact.
static void fail(cf_call_t *call)
{
    const char *message = cf_arg_str(call, 0);
    const char *type = cf_arg_count(call) > 1 ? cf_arg_str(call, 1) : "ValueError";
    if (cf_failed(call))
        return;
    cf_raise(call, type, "%s", message);
}
CF_TASK(fail);

//  crash() aborts the process running it: a worker that dies mid-task.
static void crash(cf_call_t *call)
{
    (void)call;
    abort();
}
CF_TASK(crash);

//  append_line(path: str, value: int) -> value, after appending "value\n"
//  to path: tests read the order in which tasks began from the file (one
//  O_APPEND write each, so lines never mix).
static void append_line(cf_call_t *call)
{
    const char *path = cf_arg_str(call, 0);
    int64_t value = cf_arg_int(call, 1);
    if (cf_failed(call))
        return;
    char text[32];
    int len = snprintf(text, sizeof text, "%lld\n", (long long)value);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        cf_raise(call, "OSError", "cannot open %s: %s", path, strerror(errno));
        return;
    }
    ssize_t written = write(fd, text, (size_t)len);
    int saved = errno;
    close(fd);
    if (written != len) {
        cf_raise(call, "OSError", "cannot write %s: %s", path, strerror(saved));
        return;
    }
    cf_return_int(call, value);
}
CF_TASK(append_line);

//  echo(x: any) -> x, whatever it is.
static void echo(cf_call_t *call)
{
    const cf_value_t *value = cf_arg(call, 0);
    if (cf_failed(call))
        return;
    cf_returnf(call, "v", value);
}
CF_TASK(echo);

//  add(a, b) -> a + b: ints stay ints, a float makes a float.
static void add(cf_call_t *call)
{
    const cf_value_t *a = cf_arg(call, 0);
    const cf_value_t *b = cf_arg(call, 1);
    if (cf_failed(call))
        return;
    int64_t ia, ib;
    if (cf_value_get_int(a, &ia) == CF_OK && cf_value_get_int(b, &ib) == CF_OK) {
        int64_t sum;
        if (__builtin_add_overflow(ia, ib, &sum))
            cf_raise(call, "OverflowError", "%lld + %lld does not fit in 64 bits", (long long)ia,
                     (long long)ib);
        else
            cf_return_int(call, sum);
        return;
    }
    double da, db;
    if (cf_value_get_double(a, &da) != CF_OK || cf_value_get_double(b, &db) != CF_OK) {
        cf_raise(call, "TypeError", "add() takes numbers, got %s and %s",
                 cf_type_name(cf_value_type(a)), cf_type_name(cf_value_type(b)));
        return;
    }
    cf_return_double(call, da + db);
}
CF_TASK(add);

//  timed_task(name: str, delay_ms: int, fail: bool) -> "<name> done" after
//  delay_ms, or raises ValueError("<name> failed"): the as_completed story.
static void timed_task(cf_call_t *call)
{
    const char *name = cf_arg_str(call, 0);
    int64_t delay_ms = cf_arg_int(call, 1);
    bool should_fail = cf_arg_bool(call, 2);
    if (cf_failed(call))
        return;
    s_example_sleep_ms(delay_ms);
    if (should_fail) {
        cf_raise(call, "ValueError", "%s failed", name);
        return;
    }
    char text[300];
    snprintf(text, sizeof text, "%s done", name);
    cf_return_str(call, text);
}
CF_TASK(timed_task);

//  shout(word: str) -> the word in capitals; a word starting with '!'
//  raises ValueError: the error-isolation story, where two bad inputs fail
//  on their own and the rest succeed.
static void shout(cf_call_t *call)
{
    size_t len = 0;
    const char *word = cf_arg_str(call, 0);
    if (cf_failed(call))
        return;
    if (word[0] == '!') {
        cf_raise(call, "ValueError", "cannot shout '%s'", word);
        return;
    }
    len = strlen(word);
    char *loud = malloc(len + 1);
    if (!loud) {
        cf_raise(call, "MemoryError", "no memory for %zu bytes", len + 1);
        return;
    }
    for (size_t i = 0; i <= len; i++)
        loud[i] = (char)(word[i] >= 'a' && word[i] <= 'z' ? word[i] - 'a' + 'A' : word[i]);
    cf_return_str(call, loud);
    free(loud);
}
CF_TASK(shout);

//  gate(started_path: str, release_path: str) -> the pid of the process that
//  ran it. Creates started_path as soon as it runs, then waits until
//  release_path exists (at most a minute, then TimeoutError). Tests hold
//  workers busy with it and know when they are, on any executor kind and
//  across processes, by ordering rather than by sleeping.
static void gate(cf_call_t *call)
{
    const char *started_path = cf_arg_str(call, 0);
    const char *release_path = cf_arg_str(call, 1);
    if (cf_failed(call))
        return;
    int fd = open(started_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        cf_raise(call, "OSError", "cannot create %s: %s", started_path, strerror(errno));
        return;
    }
    close(fd);
    for (int waited_ms = 0; access(release_path, F_OK) != 0; waited_ms += 2) {
        if (waited_ms >= 60000) {
            cf_raise(call, "TimeoutError", "%s was not created within a minute", release_path);
            return;
        }
        s_example_sleep_ms(2);
    }
    cf_return_int(call, (int64_t)getpid());
}
CF_TASK(gate);

//  Creates path (an empty file) so a test knows the task began; "" or a
//  missing argument: nothing. False (and raised) when it cannot.
static bool s_example_mark_started(cf_call_t *call, size_t i)
{
    const char *path = cf_arg_count(call) > i ? cf_arg_str(call, i) : "";
    if (cf_failed(call))
        return false;
    if (!*path)
        return true;
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        cf_raise(call, "OSError", "cannot create %s: %s", path, strerror(errno));
        return false;
    }
    close(fd);
    return true;
}

static int64_t s_example_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

//  spin_until_stopped(ms: int[, started_path: str]) -> int, the ms it ran.
//  A long task that behaves: it looks at cf_stop_requested every
//  millisecond and returns as soon as it says true (the future then fails
//  with Interrupted, see cf_future_stop); otherwise it returns after ms.
//  With started_path it creates that file first.
static void spin_until_stopped(cf_call_t *call)
{
    int64_t ms = cf_arg_int(call, 0);
    if (cf_failed(call) || !s_example_mark_started(call, 1))
        return;
    int64_t start = s_example_now_ms();
    while (s_example_now_ms() - start < ms) {
        if (cf_stop_requested(call)) {
            cf_return_int(call, s_example_now_ms() - start);    //  Interrupted all the same
            return;
        }
        s_example_sleep_ms(1);
    }
    cf_return_int(call, s_example_now_ms() - start);
}
CF_TASK(spin_until_stopped);

//  spin_ignoring_stop(ms: int[, started_path: str]) -> int, the pid that
//  ran it. Keeps a CPU busy for ms and never looks at cf_stop_requested:
//  on threads it runs to its end whatever cf_future_stop says; in a worker
//  process it is killed once the stop's grace is over. With started_path
//  it creates that file first.
static void spin_ignoring_stop(cf_call_t *call)
{
    int64_t ms = cf_arg_int(call, 0);
    if (cf_failed(call) || !s_example_mark_started(call, 1))
        return;
    int64_t start = s_example_now_ms();
    volatile uint64_t spins = 0;
    while (s_example_now_ms() - start < ms)
        spins++;
    cf_return_int(call, (int64_t)getpid());
}
CF_TASK(spin_ignoring_stop);
//  count_primes(lo: int, hi: int, every: int) -> int: how many primes lie in
//  [lo, hi), reporting progress (numbers checked of hi - lo) every `every`
//  numbers, with a partial value {"primes": found so far, "last": the
//  largest so far}. A client draws a progress bar from it
//  (examples/progress.c). every 0 reports only at the end.
static void count_primes(cf_call_t *call)
{
    uint64_t lo = cf_arg_uint(call, 0);
    uint64_t hi = cf_arg_uint(call, 1);
    uint64_t every = cf_arg_uint(call, 2);
    if (cf_failed(call))
        return;
    uint64_t total = hi > lo ? hi - lo : 0;
    uint64_t found = 0, last = 0;
    for (uint64_t n = lo; n < hi; n++) {
        if (s_example_is_prime(n)) {
            found++;
            last = n;
        }
        uint64_t done = n - lo + 1;
        if (every && done % every == 0 && done < total) {
            cf_task_progress(call, done, total);
            (void)cf_task_partialf(call, "{sUsU}", "primes", found, "last", last);
        }
    }
    cf_task_progress(call, total, total);
    (void)cf_task_partialf(call, "{sUsU}", "primes", found, "last", last);
    cf_return_uint(call, found);
}
CF_TASK(count_primes);

//  report_loop(n: int, partial_every: int, pause_us: int) -> n: reports
//  progress i of n for i = 1..n, with the partial value i every
//  partial_every reports (0: none) and the last report, pausing pause_us
//  between reports (0: a tight loop). Tests send a million reports through
//  it and count what arrives.
static void report_loop(cf_call_t *call)
{
    uint64_t n = cf_arg_uint(call, 0);
    uint64_t partial_every = cf_arg_uint(call, 1);
    uint64_t pause_us = cf_arg_uint(call, 2);
    if (cf_failed(call))
        return;
    for (uint64_t i = 1; i <= n; i++) {
        cf_task_progress(call, i, n);
        if ((partial_every && i % partial_every == 0) || (partial_every && i == n))
            (void)cf_task_partialf(call, "U", i);
        if (pause_us) {
            struct timespec ts = { .tv_sec = (time_t)(pause_us / 1000000),
                                   .tv_nsec = (long)(pause_us % 1000000) * 1000L };
            while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
        }
    }
    cf_return_uint(call, n);
}
CF_TASK(report_loop);

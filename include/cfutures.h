//  SPDX-License-Identifier: MIT
//
//  cfutures: Python's concurrent.futures model in C, across threads, local
//  processes and remote workers behind a broker.
//
//  A task is a function registered by name (CF_TASK) that takes msgpack
//  arguments and produces a msgpack result or an error. Arguments and results
//  are encoded on every executor kind, so a task that works on CF_THREADS works
//  unchanged on CF_PROCESSES and on a remote broker: switching kind is one
//  identifier.
//
//      static void slow_double(cf_call_t *call)
//      {
//          int64_t x = cf_arg_int(call, 0);
//          usleep(100 * 1000);
//          cf_return_int(call, 2 * x);
//      }
//      CF_TASK(slow_double);
//
//      cf_executor_t *ex = cf_executor_new(CF_THREADS, &(cf_options_t){.max_workers = 5});
//      cf_future_t *f = cf_submit(ex, "slow_double", "i", 21);
//      int64_t value;
//      if (cf_future_int(f, -1, &value) == CF_OK)
//          printf("%lld\n", (long long)value);
//      cf_future_release(&f);
//      cf_executor_destroy(&ex);
//
//  Ownership: a T ** argument means "I take it and set yours to NULL". A
//  returned const pointer is borrowed; its lifetime is stated on each call.
//  Every call is safe from any thread unless it says otherwise.
//
//  C++: the header is wrapped in extern "C" and compiles as C++11 and later.
//  The C idiom &(cf_options_t){.max_workers = 5} is a compound literal, which
//  C++ does not have: declare the struct instead,
//      cf_options_t options{};  options.max_workers = 5;
//      cf_executor_t *ex = cf_executor_new(CF_THREADS, &options);
//  (C++20 also accepts cf_options_t options{.max_workers = 5};).
//
//  ABI: libcfutures.so exports exactly the functions declared here, under
//  the symbol version CFUTURES_1; the soname changes when one of them
//  changes incompatibly.

#ifndef CFUTURES_H
#define CFUTURES_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

//  The version, in this one place: CMakeLists.txt reads these three lines
//  for the project version, the soname's library version, cfutures.pc, the
//  packages and every tool's --version (as libzmq does with zmq.h).
#define CF_VERSION_MAJOR 0
#define CF_VERSION_MINOR 2
#define CF_VERSION_PATCH 0

#define CF_VERSION_STR_(x)  #x
#define CF_VERSION_XSTR_(x) CF_VERSION_STR_(x)
//  "0.2.0": the version of this header.
#define CF_VERSION_STRING \
    CF_VERSION_XSTR_(CF_VERSION_MAJOR) \
    "." CF_VERSION_XSTR_(CF_VERSION_MINOR) "." CF_VERSION_XSTR_(CF_VERSION_PATCH)
//  One number to compare: CF_VERSION >= CF_MAKE_VERSION(0, 2, 0).
#define CF_MAKE_VERSION(major, minor, patch) ((major)*10000 + (minor)*100 + (patch))
#define CF_VERSION                           CF_MAKE_VERSION(CF_VERSION_MAJOR, CF_VERSION_MINOR, CF_VERSION_PATCH)

#if defined(__GNUC__)
#define CF_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define CF_PRINTF(f, a)
#endif

//  The version of the library running (which may be newer than the header
//  a program was built with): "0.2.0", static. Each pointer may be NULL.
const char *cf_version(int *major, int *minor, int *patch);

// ---------------------------------------------------------------------------
//  Errors

//  One list yields the enum and cf_strerror().
#define CF_ERRORS(X) \
    X(CF_OK, "success") \
    X(CF_EINVAL, "invalid argument") \
    X(CF_ENOMEM, "out of memory") \
    X(CF_ESYS, "system call failed") \
    X(CF_EPROTO, "malformed or unexpected message") \
    X(CF_ETIMEDOUT, "timed out") \
    X(CF_ECANCELLED, "cancelled") \
    X(CF_ETASK, "task failed") \
    X(CF_ESHUTDOWN, "executor is shut down") \
    X(CF_EBUSY, "queue full") \
    X(CF_ETOOBIG, "message too large") \
    X(CF_ENOTFOUND, "not found") \
    X(CF_ETYPE, "wrong type") \
    X(CF_EAUTH, "authentication failed") \
    X(CF_ESTOP, "no more items")

typedef enum {
#define CF_ERR_ENUM_(name, text) name,
    CF_ERRORS(CF_ERR_ENUM_)
#undef CF_ERR_ENUM_
        CF_ERR_COUNT_
} cf_err_t;

//  A static description of err, never NULL.
const char *cf_strerror(cf_err_t err);

//  The code and one-line message of the last failed call in this thread that
//  returned NULL (constructors, cf_submit). The message is borrowed until the
//  next failing call in this thread.
cf_err_t cf_last_err(void);
const char *cf_last_error(void);

// ---------------------------------------------------------------------------
//  Values: a read-only view of decoded msgpack. Strings are NUL-terminated.
//  A value lives as long as what it came from (the future, the call, the map
//  iterator) and is never freed by the caller.

typedef enum {
    CF_TYPE_NIL,
    CF_TYPE_BOOL,
    CF_TYPE_INT,    //  any integer; cf_value_get_int/uint say if it fits
    CF_TYPE_FLOAT,
    CF_TYPE_STR,
    CF_TYPE_BIN,
    CF_TYPE_ARRAY,
    CF_TYPE_MAP,
    CF_TYPE_EXT
} cf_type_t;

typedef struct cf_value cf_value_t;

cf_type_t cf_value_type(const cf_value_t *v);
//  A static name: "nil", "bool", "int", "float", "str", "bin", "array", ...
const char *cf_type_name(cf_type_t type);
//  CF_OK, or CF_ETYPE when v is not of that type (or does not fit).
cf_err_t cf_value_get_int(const cf_value_t *v, int64_t *out);
cf_err_t cf_value_get_uint(const cf_value_t *v, uint64_t *out);
cf_err_t cf_value_get_double(const cf_value_t *v, double *out);    //  ints convert
cf_err_t cf_value_get_bool(const cf_value_t *v, bool *out);
//  NULL unless a string; len (may be NULL) gets its length in bytes.
const char *cf_value_str(const cf_value_t *v, size_t *len);
//  NULL unless bin; len gets its length.
const void *cf_value_bin(const cf_value_t *v, size_t *len);
//  Items of an array, pairs of a map, bytes of a str/bin; 0 otherwise.
size_t cf_value_len(const cf_value_t *v);
//  Array item i, or NULL when v is not an array or i is out of range.
const cf_value_t *cf_value_at(const cf_value_t *v, size_t i);
//  Map pair i, or NULL.
const cf_value_t *cf_value_key_at(const cf_value_t *v, size_t i);
const cf_value_t *cf_value_val_at(const cf_value_t *v, size_t i);
//  The value under a string key of a map, or NULL.
const cf_value_t *cf_value_get(const cf_value_t *v, const char *key);
//  A Python-like rendering ("[0, 2, 4]", "{'a': 1}", "'text'", "None"),
//  malloc'd: yours to free. NULL when out of memory.
char *cf_value_repr(const cf_value_t *v);

// ---------------------------------------------------------------------------
//  Argument formats. cf_submit, cf_returnf and cf_args_addf describe values
//  with a short format, like Python's Py_BuildValue. Each letter takes
//  C arguments (after default promotions):
//
//      n  nil                          (none)
//      b  bool                         int
//      i  int64 from int               int
//      l  int64 from long              long
//      L  int64                        int64_t
//      u  uint64 from unsigned         unsigned
//      U  uint64                       uint64_t
//      d  float64                      double
//      s  string (NULL packs nil)      const char *
//      y  bytes                        const void *, size_t
//      v  a copy of a value            const cf_value_t *
//      m  raw msgpack, one value       const void *, size_t   (validated)
//      [ ... ]  an array of what is inside
//      { ... }  a map: key, value, key, value, ...
//
//  Spaces and commas are ignored. For cf_submit the whole format is the
//  argument list: "ii" passes two ints, "" passes none.

// ---------------------------------------------------------------------------
//  Tasks: writing them

typedef struct cf_call cf_call_t;
typedef void(cf_task_fn)(cf_call_t *call);

//  Registers fn under its own name before main runs (a constructor), in a
//  program or in a task library that cf-worker loads. One line next to the
//  function:  CF_TASK(slow_double);
#define CF_TASK(fn) CF_TASK_NAMED(#fn, fn)
#define CF_TASK_NAMED(name, fn) \
    __attribute__((constructor)) static void cf_register_task_##fn(void) \
    { \
        cf_task_register(name, fn); \
    }

//  Adds or replaces a task by name. Names are 1..255 bytes; names starting
//  with "cf." are reserved for the library's own tasks (map's "cf.chunk")
//  and refused. Returns CF_OK, CF_EINVAL or CF_ENOMEM. Safe from any thread.
cf_err_t cf_task_register(const char *name, cf_task_fn *fn);

//  Arguments of the running call. A getter given a missing index or a value
//  of another type raises TypeError on the call (the task fails with a clear
//  message naming the function, the index and the types) and returns 0, "",
//  false or NULL, so a task can read all its arguments and check once with
//  cf_failed, or not at all: what it returns after a failed getter is ignored.
size_t cf_arg_count(cf_call_t *call);
int64_t cf_arg_int(cf_call_t *call, size_t i);
uint64_t cf_arg_uint(cf_call_t *call, size_t i);
double cf_arg_double(cf_call_t *call, size_t i);
bool cf_arg_bool(cf_call_t *call, size_t i);
const char *cf_arg_str(cf_call_t *call, size_t i);    //  NUL-terminated
const void *cf_arg_bytes(cf_call_t *call, size_t i, size_t *len);
const cf_value_t *cf_arg(cf_call_t *call, size_t i);    //  any type
const cf_value_t *cf_args(cf_call_t *call);             //  the array
//  The raw msgpack array of arguments.
const void *cf_args_raw(cf_call_t *call, size_t *len);
//  The function name this call runs under.
const char *cf_call_function(cf_call_t *call);
//  True once the call raised (explicitly or through a failed getter).
bool cf_failed(cf_call_t *call);

//  The result. The last return wins; no return means nil.
void cf_return_nil(cf_call_t *call);
void cf_return_int(cf_call_t *call, int64_t value);
void cf_return_uint(cf_call_t *call, uint64_t value);
void cf_return_double(cf_call_t *call, double value);
void cf_return_bool(cf_call_t *call, bool value);
void cf_return_str(cf_call_t *call, const char *value);
void cf_return_bytes(cf_call_t *call, const void *data, size_t len);
//  One value built from a format: cf_returnf(call, "[is]", 1, "one").
void cf_returnf(cf_call_t *call, const char *fmt, ...);
//  One raw msgpack value; validated, a malformed one raises ValueError.
void cf_return_raw(cf_call_t *call, const void *msgpack, size_t len);

//  Fails the call with an error type ("ValueError") and a message, like a
//  Python exception. The first raise wins.
void cf_raise(cf_call_t *call, const char *type, const char *fmt, ...) CF_PRINTF(3, 4);

//  True once the application asked this task to stop (cf_future_stop).
//  A long task calls it now and then (it is one atomic load) and returns
//  when it says true. The rule: once it has returned true to the task, the
//  task's outcome is the error CF_INTERRUPTED, whatever the task returns
//  or raises after; a task that never calls it, or only before the
//  request, ends with its own result. Inside cf.chunk (map's chunksize)
//  the whole chunk ends Interrupted and its later inputs are not run.
bool cf_stop_requested(cf_call_t *call);
//  The error type of a task stopped by cf_future_stop: it returned after
//  cf_stop_requested said true, or (worker processes only) it did not
//  return within the grace and its process was killed.
#define CF_INTERRUPTED             "Interrupted"
//  Progress from inside a task (Gearman's WORK_STATUS and WORK_DATA): the
//  client sees it through cf_future_on_progress and cf_future_progress.
//  done and total are the task's own units (total 0: not known). A partial
//  value is one value built from a format (as cf_returnf) that the client
//  gets decoded: the latest partial the task sent, a state rather than a
//  stream, since reports are coalesced (latest wins) on their way: a task
//  may report a million times a second, the client gets at most about one
//  report per task every CF_TASK_REPORT_INTERVAL_MS, always the newest, and
//  the task's last report before it returns reaches the client before its
//  result (see cf_future_on_progress). Reporting costs a mutex and a copy,
//  never a message: call it as often as is convenient. Both are no-ops
//  (cf_task_partialf returns CF_OK) when the executor takes no reports.
#define CF_TASK_REPORT_INTERVAL_MS 50
//  A partial value's encoded size limit: 64 KiB.
#define CF_TASK_MAX_PARTIAL        (64u * 1024)
void cf_task_progress(cf_call_t *call, uint64_t done, uint64_t total);
//  Sends a partial value with the last done and total. CF_OK, CF_EINVAL (a
//  bad format, see cf_last_error), CF_ETOOBIG (over CF_TASK_MAX_PARTIAL),
//  CF_ENOMEM. A failure does not fail the task.
cf_err_t cf_task_partialf(cf_call_t *call, const char *fmt, ...);
//  The same with one raw msgpack value (validated: CF_EINVAL when it is not
//  exactly one well-formed value).
cf_err_t cf_task_partial_raw(cf_call_t *call, const void *msgpack, size_t len);

// ---------------------------------------------------------------------------
//  Errors of tasks, as they come back in futures.
//
//  Runtime error types: "UnknownFunction", "TypeError" (bad arguments),
//  "WorkerLost" (retries used up), "TimeoutError" (task timeout),
//  "ProtocolError", "Busy", "AuthError" (CF_REMOTE: the broker refused this
//  client's key, or its lack of one; see curve_key), "ExecutorDestroyed"
//  (CF_PROCESSES, CF_REMOTE: the executor was destroyed while the task ran
//  and its result could no longer be received); any other type is what the
//  task raised.

typedef struct {
    const char *type;        //  "ValueError", "WorkerLost", ...
    const char *message;     //  human-readable
    const char *function;    //  the task's function name
    const char *host;        //  where it happened ("" when unknown)
    int pid;                 //  process that ran it (0 when unknown)
} cf_task_error_t;

// ---------------------------------------------------------------------------
//  Futures

typedef struct cf_future cf_future_t;

//  Block until done or timeout_ms passes (-1: no limit, 0: poll). Returns
//  CF_OK (done, whatever the outcome) or CF_ETIMEDOUT. A thread whose waits
//  have been short spins before it sleeps (see cf_set_wait_spin); so do the
//  result getters below, which wait through this call.
cf_err_t cf_future_wait(cf_future_t *f, int timeout_ms);

//  How long, at most, a thread waiting in cf_future_wait spins (yielding
//  the CPU to anything else runnable) before it sleeps, in microseconds,
//  for the whole process. A thread spins only while its recent waits were
//  shorter than this, for about twice their mean, only while the future it
//  waits for is the only one of the process not done yet (a consumer of
//  many leaves the CPU to the parts that bring them), and one thread of
//  the process spins at a time: one-at-a-time round trips to worker processes
//  or a broker get their result without paying a sleeping CPU's wake-up
//  (about 100 us in a VM), while threads that wait for long tasks never
//  spin. Default 500, or CF_WAIT_SPIN_US from the environment; 0 on a
//  one-CPU machine. 0 turns spinning off; -1 restores the default.
void cf_set_wait_spin(int max_us);

//  Block until done, then: CF_OK with *value (borrowed, lives as long as the
//  future), CF_ETASK (see cf_future_error), CF_ECANCELLED, or CF_ETIMEDOUT
//  when timeout_ms passed first; the timeout is never confused with a task's
//  own TimeoutError, which is CF_ETASK. value may be NULL.
cf_err_t cf_future_result(cf_future_t *f, int timeout_ms, const cf_value_t **value);
//  The same, converted; CF_ETYPE when the result is of another type.
cf_err_t cf_future_int(cf_future_t *f, int timeout_ms, int64_t *out);
cf_err_t cf_future_double(cf_future_t *f, int timeout_ms, double *out);
cf_err_t cf_future_bool(cf_future_t *f, int timeout_ms, bool *out);
//  *out is borrowed and lives as long as the future.
cf_err_t cf_future_str(cf_future_t *f, int timeout_ms, const char **out);
//  The raw msgpack result.
cf_err_t cf_future_raw(cf_future_t *f, int timeout_ms, const void **data, size_t *len);

//  The error of a failed future (Python's exception()), or NULL if it has not
//  failed (yet). Non-blocking; borrowed, lives as long as the future.
const cf_task_error_t *cf_future_error(cf_future_t *f);

//  Cancels a task whose function has not begun, wherever it waits (the
//  client, the broker's queue, a worker's prefetch queue): true if it is now
//  cancelled (or already was), and then it never runs; false if it began or
//  is done. On a remote or process executor it asks the holder and waits
//  for the answer (a broker round trip, a worker's too for a prefetched
//  task; at most 5 s, then false). From a callback it does not wait: false
//  unless the client still held the task. Callbacks run.
bool cf_future_cancel(cf_future_t *f);
bool cf_future_cancelled(cf_future_t *f);
//  True once the task's function has begun (cf-worker says so within about
//  10 ms of the start; a task done sooner goes straight to done), until done.
//  A task merely handed to a worker is not running.
bool cf_future_running(cf_future_t *f);
bool cf_future_done(cf_future_t *f);
//  The function name the future was submitted with (borrowed).
const char *cf_future_function(cf_future_t *f);

//  Stops a task, even a running one (Python cannot; cf_future_cancel stays
//  Python's and never touches a task that began). Never blocks.
//    - not begun (queued anywhere): cancelled, as cf_future_cancel does
//      (on CF_PROCESSES and CF_REMOTE the broker or the worker holding it
//      answers, so the future turns cancelled a round trip later);
//    - running: asked to stop. Cooperative on every kind: the task sees
//      cf_stop_requested true and returns, and the future fails with
//      CF_INTERRUPTED ("Interrupted"). Forced where that is safe: a task
//      in a worker process (CF_PROCESSES, `cf-worker --procs`) still
//      running grace_ms after the request has its process killed; the
//      process is replaced, the pool's other processes and their tasks are
//      untouched, the task is not retried, and the future fails with
//      "Interrupted" saying it was killed after the grace. On threads (CF_THREADS, a threaded cf-worker) only the
//      cooperative stop exists: a task that never checks runs to its end
//      and keeps its own result (a thread cannot be killed safely);
//    - done (result, error or cancelled): nothing changes.
//  On CF_REMOTE a worker too old to know STOP (docs/protocol.md) lets the
//  task run to its end. Returns CF_OK when the request was made (the task
//  was not done), CF_ENOTFOUND when the future was already done, CF_EINVAL
//  for a NULL future or grace_ms < 0. Safe from any thread and from
//  callbacks; a second call changes nothing but may shorten the grace.
cf_err_t cf_future_stop(cf_future_t *f, int grace_ms);

//  Attaches a pointer of the application's (Python users keep a dict from
//  future to input; this is that, without the dict).
void cf_future_set_tag(cf_future_t *f, void *tag);
void *cf_future_tag(cf_future_t *f);

//  Runs fn(f, arg) once the future is done, in the thread that completes it,
//  or at once in this thread when it is done already. A callback that
//  returns non-zero is logged and the others still run. Callbacks must not
//  block for long: they run on the executor's own thread.
typedef int(cf_done_fn)(cf_future_t *f, void *arg);
cf_err_t cf_future_add_done_callback(cf_future_t *f, cf_done_fn *fn, void *arg);

//  Drops the caller's reference; the future lives on while its executor
//  needs it. Safe with NULL and twice.
void cf_future_release(cf_future_t **f);

//  A task's progress as the client holds it (see cf_task_progress): an
//  immutable snapshot, shared, so a reader never sees it change.
typedef struct {
    uint32_t seq;      //  1, 2, ...: a later report has a larger seq (gaps: skipped ones)
    uint64_t done;     //  as the task said
    uint64_t total;    //  0: not known
    //  The latest partial value the task sent (with this report or an
    //  earlier one), decoded; NULL when none came. Lives as long as the
    //  report.
    const cf_value_t *partial;
    bool partial_new;    //  partial came with this report
} cf_task_report_t;

//  Called with each report of f that arrives, in seq order, one call at a
//  time per future; report is borrowed for the call (cf_future_report keeps
//  one). Where it runs: CF_THREADS, on the pool thread running the task,
//  inside its cf_task_progress / cf_task_partialf; CF_PROCESSES and
//  CF_REMOTE, on the executor's client thread (or a thread doing its work
//  for it), like done callbacks. Keep it short: it holds up the task
//  (threads) or every future of the executor (processes, remote).
//  Guarantees: reports arrive in order (an older report is never passed
//  after a newer one; a report may be skipped, coalesced into a newer one);
//  none arrives after f is done; the task's last report before it returned
//  is passed before f completes, unless something was lost on the way (a
//  refused send to a full peer, a lost worker or broker, out of memory).
//  At most about one call per CF_TASK_REPORT_INTERVAL_MS per task: the
//  first report at once, then the latest once per interval. On CF_THREADS
//  there is no timer: a report held back by the interval is passed with
//  the task's next report after it, or when the task returns; elsewhere it
//  waits an interval at most.
typedef void(cf_task_report_fn)(cf_future_t *f, const cf_task_report_t *report, void *arg);
//  Sets f's progress callback, replacing the previous one (fn NULL: none).
//  When a report arrived already and f is not done, fn is called at once
//  on this thread with the latest. Returns once no call of the previous
//  callback runs on another thread, so its arg may be freed then (from
//  inside the callback it cannot wait for itself). CF_OK or CF_ENOMEM.
cf_err_t cf_future_on_progress(cf_future_t *f, cf_task_report_fn *fn, void *arg);
//  The latest report's seq (0: none arrived yet), with its done and total
//  (each may be NULL; 0 when none). Non-blocking; still there once done.
uint32_t cf_future_progress(cf_future_t *f, uint64_t *done, uint64_t *total);
//  The latest report, partial value included, as a reference of yours (the
//  future may take newer ones meanwhile: this one does not change): release
//  it with cf_task_report_release. NULL when none arrived yet.
const cf_task_report_t *cf_future_report(cf_future_t *f);
//  Drops a reference from cf_future_report. Safe with NULL and twice.
void cf_task_report_release(const cf_task_report_t **report);

// ---------------------------------------------------------------------------
//  Executors

typedef enum {
    CF_THREADS = 1,    //  threads in this process (I/O-bound work)
    CF_PROCESSES,      //  worker processes on this host (CPU-bound work)
    CF_REMOTE          //  a cf-broker at options.endpoint
} cf_kind_t;

typedef struct cf_executor cf_executor_t;

typedef struct {
    //  Workers: 0 means the default (threads: min(32, cores + 4);
    //  processes: cores); negative is an error. Ignored by CF_REMOTE.
    int max_workers;
    //  Run once in each worker thread or process before its first task.
    //  Not used by CF_REMOTE (the workers belong to cf-worker).
    void (*initializer)(void *arg);
    void *initarg;
    //  CF_PROCESSES: replace a worker process after this many tasks (0: never).
    int max_tasks_per_worker;
    //  CF_THREADS: worker thread names are prefix-N (default "cf-worker").
    const char *thread_name_prefix;
    //  CF_REMOTE: the broker's client endpoint, "tcp://127.0.0.1:5555", or
    //  several brokers' as a comma-separated list ("tcp://a:5555,
    //  tcp://b:5555"; at most 16; spaces around the commas allowed). A bad
    //  endpoint is refused with CF_EINVAL naming it; a duplicate is ignored
    //  with a warning. With several, tasks are spread over the brokers that
    //  answer (each new task to the one holding the fewest of this
    //  executor's), and a broker's tasks move at once to the others when it
    //  is lost or restarts: a task running when its broker died may run
    //  twice (README, "Several brokers"). The brokers share nothing; a
    //  cf-worker may serve several of them (--broker with a list).
    const char *endpoint;
    //  CF_REMOTE: heartbeat interval with the broker (0: 1000 ms); the broker
    //  counts as lost after 3 silent intervals and pending tasks are resent.
    int heartbeat_ivl_ms;
    //  CF_REMOTE: how long cf_executor_new / cf_executor_connect wait for a
    //  first handshake with a broker at endpoint: 0 means the default,
    //  CF_CONNECT_TIMEOUT_MS (5 s); a negative value means do not wait (the
    //  executor then connects in the background, as before). When nothing
    //  answers in time the call returns NULL with CF_ETIMEDOUT and
    //  cf_last_error() naming the endpoint (every endpoint of a list). With
    //  a list the call returns at the first broker's handshake, and a
    //  warning names those still silent when the timeout has passed. A broker lost later never makes
    //  a call wait silently: while tasks are pending and no broker answers,
    //  or the broker reports no worker, the log gets a warning every 10 s,
    //  and cf_executor_destroy gives up on a broker lost (or never heard)
    //  for 3 heartbeat intervals (see cf_executor_destroy).
    int connect_timeout_ms;
    //  Task defaults; a cf_task_opts_t given to cf_submit_with overrides them.
    int retries;       //  retries after a lost worker: 0 = default 3, <0 = none
    int timeout_ms;    //  per-task run time limit: 0 = none
    //  CF_REMOTE with CurveZMQ (docs/security.md): paths of the broker's
    //  public key file (cf-keygen's BROKER.key) and of this client's secret
    //  key file (NAME.key_secret, mode 0600; its public half must be on the
    //  broker's client list). Both NULL: plaintext; one alone is CF_EINVAL.
    //  With several brokers each has its own key: curve_broker_key is then
    //  a comma-separated list of key files, one per endpoint in the same
    //  order (or a single file when every broker shares one key).
    //  With them the executor waits for the first handshake (up to 3
    //  heartbeat intervals): a refused key makes cf_executor_new return NULL
    //  with CF_EAUTH and cf_last_error() naming the key's fingerprint (with
    //  several brokers: when every one refuses it; one that refuses is
    //  dropped from the list with an error in the log). A
    //  refusal later (a plaintext client of a CURVE broker, a key dropped
    //  from the list before a reconnect) fails pending futures with
    //  "AuthError", and cf_submit then returns NULL with CF_EAUTH.
    const char *curve_broker_key;
    const char *curve_key;
    //  At most this many tasks submitted and not yet done (0: no bound;
    //  negative is an error), so a producer faster than the workers holds
    //  bounded memory. A submission over the bound waits until a task is
    //  done, or, with fail_when_full, fails at once with CF_EBUSY. It never
    //  waits on a thread of the executor's own (a callback, a progress hook,
    //  an actor): there it fails with CF_EBUSY. A shutdown wakes waiting
    //  submitters, which then fail with CF_ESHUTDOWN.
    int max_outstanding;
    bool fail_when_full;
} cf_options_t;

//  A new executor of the given kind; opts may be NULL for defaults. NULL on
//  error, with cf_last_error() saying why ("max_workers must be > 0, got -2").
cf_executor_t *cf_executor_new(cf_kind_t kind, const cf_options_t *opts);
//  Shorthand for CF_REMOTE at endpoint (one, or a comma-separated list:
//  see cf_options_t.endpoint).
cf_executor_t *cf_executor_connect(const char *endpoint, const cf_options_t *opts);

cf_kind_t cf_executor_kind(cf_executor_t *ex);
//  Workers this executor runs (CF_REMOTE: 0, the broker decides).
int cf_executor_max_workers(cf_executor_t *ex);
//  "threads", "processes" or "remote".
const char *cf_kind_name(cf_kind_t kind);

//  Per-task options.
typedef struct {
    int retries;            //  0 = executor default, <0 = none
    int timeout_ms;         //  0 = executor default
    bool retry_on_error;    //  also retry when the task itself raised
    //  Higher starts first: of this executor's tasks still queued, one of
    //  higher priority is handed to a worker before one of lower, equal
    //  ones in submission order (0: the default). CF_REMOTE: the broker
    //  keeps its clients' turns fair, so one client's priorities never hold
    //  another client back. A task a worker already took (prefetched) is
    //  not overtaken.
    int priority;
    //  CF_REMOTE: how long the task may wait while no connected worker
    //  serves its function (cf-worker says which functions it serves)
    //  before it fails with "NoWorker". 0 = the broker's default
    //  (cf-broker --no-worker-timeout, 60 s); negative is an error. Other
    //  kinds run every registered function and ignore it.
    int no_worker_timeout_ms;
} cf_task_opts_t;

//  Submits fn(args...) and returns a future at once, or NULL with
//  cf_last_error() (CF_ESHUTDOWN after shutdown, CF_EINVAL for a bad format,
//  CF_ETOOBIG for over-size arguments). Release the future when done with it.
cf_future_t *cf_submit(cf_executor_t *ex, const char *fn, const char *fmt, ...);
cf_future_t *cf_submit_with(cf_executor_t *ex, const cf_task_opts_t *opts, const char *fn,
                            const char *fmt, ...);
cf_future_t *cf_submitv(cf_executor_t *ex, const cf_task_opts_t *opts, const char *fn,
                        const char *fmt, va_list ap);
//  args is one msgpack array (validated).
cf_future_t *cf_submit_raw(cf_executor_t *ex, const cf_task_opts_t *opts, const char *fn,
                           const void *args, size_t len);

//  Stops accepting tasks. wait: block until every submitted task finished.
//  cancel_futures: cancel every task whose function has not begun,
//  prefetched ones included (as cf_future_cancel). Safe to call twice.
//  CF_REMOTE: with a broker that answers, a task at the broker or in a
//  worker's queue is cancelled when its holder removes it (one already
//  begun runs to its end); while the broker is unreachable (no connection,
//  or silent after having answered) a task not known to have begun is
//  cancelled at once.
cf_err_t cf_executor_shutdown(cf_executor_t *ex, bool wait, bool cancel_futures);
//  Shuts down (waiting for running and queued work) and frees the executor;
//  no thread or process is left behind. Futures stay valid until released.
//  CF_REMOTE: returns in bounded time even when the broker is gone or was
//  never there. Once the broker has been lost (or never heard) for 3
//  heartbeat intervals, destroy stops waiting: tasks never sent are
//  cancelled, tasks handed to the broker fail with "BrokerLost" (they may or
//  may not have run), and a warning in the log says how many. With a broker
//  that answers, destroy waits for every task as before; what is still
//  pending when it ends is cancelled if it never started and fails with
//  "ExecutorDestroyed" if it did.
void cf_executor_destroy(cf_executor_t **ex);

//  Progress of everything submitted to the executor. The hook runs on the
//  thread that completes each future, after its callbacks; keep it short.
//  cf_executor_on_progress replaces the hook (NULL: none) and returns once
//  no call of the old one is running, so its arg may be freed then (from
//  inside the hook itself it waits for the other calls only).
typedef struct {
    uint64_t submitted;
    uint64_t done;    //  finished in any way, including failed and cancelled
    uint64_t failed;
    uint64_t cancelled;
} cf_progress_t;
typedef void(cf_progress_fn)(const cf_progress_t *progress, void *arg);
void cf_executor_on_progress(cf_executor_t *ex, cf_progress_fn *fn, void *arg);
cf_progress_t cf_executor_progress(cf_executor_t *ex);

// ---------------------------------------------------------------------------
//  A text progress bar in tqdm's look, for any loop over as_completed, map or
//  the progress hook:
//
//      primes  42%|########4           | 42/100 [00:03<00:04, 12.31 it/s]
//
//  count, percent, elapsed, estimated time left and rate. On a terminal the
//  line is redrawn in place (at most 10 times a second, and at the end);
//  elsewhere (a pipe, a log file) it prints plain lines, one per 10 percent
//  and one at the end, so logs stay readable.

typedef struct cf_progress_bar cf_progress_bar_t;

typedef enum {
    CF_PROGRESS_BAR_AUTO,        //  in place when out is a terminal, else lines
    CF_PROGRESS_BAR_IN_PLACE,    //  redraw with '\r' whatever out is
    CF_PROGRESS_BAR_LINES        //  plain lines whatever out is
} cf_progress_bar_mode_t;

//  A bar for total items (0: unknown, no percent nor ETA) written to out
//  (NULL: stderr; borrowed, must outlive the bar). label may be NULL. NULL
//  when out of memory.
cf_progress_bar_t *cf_progress_bar_new(FILE *out, const char *label, uint64_t total,
                                       cf_progress_bar_mode_t mode);
//  Sets the count done (it never goes back) and redraws when due.
void cf_progress_bar_update(cf_progress_bar_t *bar, uint64_t done);
//  A cf_progress_fn: cf_executor_on_progress(ex, cf_progress_bar_on_progress,
//  bar) drives the bar with the executor's done count. Unset the hook
//  (cf_executor_on_progress(ex, NULL, NULL)) or destroy the executor before
//  destroying the bar.
void cf_progress_bar_on_progress(const cf_progress_t *progress, void *bar);
//  Draws the final state, ends the line, frees the bar. Safe with NULL and
//  twice.
void cf_progress_bar_destroy(cf_progress_bar_t **bar);

// ---------------------------------------------------------------------------
//  map: results in submission order, inputs consumed lazily within a window.

//  An argument list being built for one input of map.
typedef struct cf_args cf_args_t;
cf_err_t cf_args_add_int(cf_args_t *args, int64_t value);
cf_err_t cf_args_add_double(cf_args_t *args, double value);
cf_err_t cf_args_add_str(cf_args_t *args, const char *value);
cf_err_t cf_args_add_bytes(cf_args_t *args, const void *data, size_t len);
cf_err_t cf_args_addf(cf_args_t *args, const char *fmt, ...);

//  The source of map's inputs: fill args for input number index and return
//  1, return 0 at the end, or a negative number to stop with an error.
typedef int(cf_map_source_fn)(void *state, size_t index, cf_args_t *args);

typedef struct {
    size_t chunksize;       //  inputs per message (0 or 1: one task each)
    size_t window;          //  tasks in flight at most (0: threads 2 x workers,
                            //  at least 64; processes and remote 1024)
    int timeout_ms;         //  for the whole iteration (0 or -1: none)
    cf_task_opts_t task;    //  options of each task
} cf_map_opts_t;

typedef struct cf_map cf_map_t;

//  Starts mapping fn over the source; opts may be NULL. NULL on error.
cf_map_t *cf_map_new(cf_executor_t *ex, const char *fn, cf_map_source_fn *source, void *state,
                     const cf_map_opts_t *opts);
//  Conveniences: one int / one string argument per input, from an array the
//  caller keeps alive until the map is destroyed.
cf_map_t *cf_map_ints(cf_executor_t *ex, const char *fn, const int64_t *inputs, size_t count,
                      const cf_map_opts_t *opts);
cf_map_t *cf_map_strs(cf_executor_t *ex, const char *fn, const char *const *inputs, size_t count,
                      const cf_map_opts_t *opts);
//  The next result in order: CF_OK with *value (borrowed until the next
//  call), CF_ESTOP at the end, CF_ETASK at the first failed input (see
//  cf_map_error; iteration ends there), CF_ETIMEDOUT when the timeout passed,
//  or the error the source returned (CF_EINVAL).
cf_err_t cf_map_next(cf_map_t *map, const cf_value_t **value);
//  Input index of the last value or error returned.
size_t cf_map_index(cf_map_t *map);
//  The error that stopped iteration, or NULL.
const cf_task_error_t *cf_map_error(cf_map_t *map);
//  Cancels what is still queued and frees the map.
void cf_map_destroy(cf_map_t **map);

// ---------------------------------------------------------------------------
//  as_completed and wait. Futures are borrowed: the caller keeps its
//  references for as long as it uses the iterator or the result arrays.

typedef struct cf_as_completed cf_as_completed_t;

//  Yields each distinct future once as it finishes, those already done
//  first. timeout_ms counts from creation (-1: none). NULL on error.
cf_as_completed_t *cf_as_completed_new(cf_future_t *const *fs, size_t count, int timeout_ms);
//  CF_OK with *f, CF_ESTOP when all were yielded, CF_ETIMEDOUT when the
//  timeout passed (cf_as_completed_pending says how many are unfinished).
cf_err_t cf_as_completed_next(cf_as_completed_t *it, cf_future_t **f);
size_t cf_as_completed_pending(cf_as_completed_t *it);
void cf_as_completed_destroy(cf_as_completed_t **it);

typedef enum {
    CF_FIRST_COMPLETED,
    CF_FIRST_EXCEPTION,    //  or all completed, when none fails
    CF_ALL_COMPLETED
} cf_wait_mode_t;

//  Waits on count futures. done and not_done are caller arrays of count
//  slots (either may be NULL); n_done and n_not_done get how many were
//  filled. Returns CF_OK when the condition was met, CF_ETIMEDOUT otherwise
//  (the sets are filled either way), CF_EINVAL for bad arguments.
cf_err_t cf_wait(cf_future_t *const *fs, size_t count, int timeout_ms, cf_wait_mode_t mode,
                 cf_future_t **done, size_t *n_done, cf_future_t **not_done, size_t *n_not_done);

// ---------------------------------------------------------------------------
//  Logging: the library is silent unless a handler is set.

typedef enum { CF_LOG_DEBUG, CF_LOG_INFO, CF_LOG_WARN, CF_LOG_ERROR } cf_log_level_t;
typedef void(cf_log_fn)(cf_log_level_t level, const char *component, const char *message,
                        void *arg);
//  Sets the process-wide handler (NULL: silent) and the lowest level passed.
void cf_log_set_handler(cf_log_fn *fn, void *arg, cf_log_level_t min_level);
//  A ready handler writing "time L: component: message" lines to stderr.
void cf_log_to_stderr(cf_log_level_t level, const char *component, const char *message, void *arg);

#ifdef __cplusplus
}
#endif

#endif

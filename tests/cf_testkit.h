//  cf_testkit: what the integration and fault tests share. They run real
//  cf-broker and cf-worker processes (and example programs) on loopback, so
//  the kit starts children with stdout on a pipe and stderr in a log file
//  under a per-test temporary directory, waits for their "ready" line (never
//  a sleep), reads the endpoints the ready line reports, and stops children
//  by PID. Everything a test started is killed in the cmocka teardown, also
//  when an assertion failed half-way.
//
//  Deadlines here are generous on purpose (sanitizer builds on a busy two-core
//  machine): they bound a hang, they never assert speed.
//
//  Helpers named cf_testkit_start_* and cf_testkit_expect_* fail the running
//  cmocka test themselves (after dumping the children's logs); the others
//  return what happened and let the test decide.
//
//  Not thread-safe: use a kit from the test's own thread.

#ifndef CF_TESTKIT_H
#define CF_TESTKIT_H

#include "cfutures.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#if defined(__GNUC__)
#define CF_TESTKIT_SENTINEL __attribute__((sentinel))
#else
#define CF_TESTKIT_SENTINEL
#endif

//  How long a daemon may take to print its ready line.
#define CF_TESTKIT_READY_MS          30000
//  How long a stopped child may take to exit after SIGTERM before SIGKILL.
#define CF_TESTKIT_STOP_MS           10000
//  The default bound for anything a test waits for (a result, a condition).
#define CF_TESTKIT_DEADLINE_MS       60000
//  The heartbeat interval fault tests give every party, so a lost peer is
//  noticed within about a second.
#define CF_TESTKIT_FAST_HEARTBEAT_MS 200

typedef struct cf_testkit cf_testkit_t;
typedef struct cf_testkit_proc cf_testkit_proc_t;

// ---------------------------------------------------------------------------
//  The kit: one per test

//  cmocka setup and teardown: *state becomes a fresh kit; teardown kills and
//  reaps every child the test started and removes the temporary directory
//  (kept when CF_TEST_KEEP is set in the environment).
int cf_testkit_setup(void **state);
int cf_testkit_teardown(void **state);

//  A kit with its own temporary directory named after name. NULL on error.
cf_testkit_t *cf_testkit_new(const char *name);
void cf_testkit_destroy(cf_testkit_t **kit);

//  The kit's temporary directory (borrowed).
const char *cf_testkit_dir(cf_testkit_t *kit);
//  dir/name, owned by the kit (lives as long as it).
const char *cf_testkit_path(cf_testkit_t *kit, const char *name);

//  The value of an environment variable that cmake/cf_test.cmake sets
//  (CF_BROKER_BIN, CF_WORKER_BIN, CF_TASKS_LIB, CF_EXAMPLES_DIR,
//  CF_SOURCE_DIR); fails the test with a clear message when it is missing.
const char *cf_testkit_env(const char *name);
//  CF_EXAMPLES_DIR/name, owned by the kit.
const char *cf_testkit_example(cf_testkit_t *kit, const char *name);

//  Writes the last lines of every child's log to stderr (the kit does this
//  itself whenever one of its waits fails).
void cf_testkit_dump_logs(cf_testkit_t *kit);

// ---------------------------------------------------------------------------
//  Children

//  Starts argv[0] (a path) with argv (NULL-terminated) in its own process
//  group, stdout on a pipe the kit reads, stderr appended to
//  dir/<label>.log. The child dies with the test (PR_SET_PDEATHSIG). NULL
//  with errno on error.
cf_testkit_proc_t *cf_testkit_spawn(cf_testkit_t *kit, const char *label, const char *const *argv);

//  Runs fn(arg) in a forked copy of the test process, with the same stdout
//  pipe and stderr log as a spawned program; the child exits with fn's
//  return value. Fork before the test starts any thread (no executor yet):
//  only the forking thread exists in the child. fn must not use cmocka
//  assertions (they would jump into the child's copy of the test runner);
//  it reports through its exit code and stdout. NULL with errno on error.
typedef int(cf_testkit_child_fn)(void *arg);
cf_testkit_proc_t *cf_testkit_fork(cf_testkit_t *kit, const char *label, cf_testkit_child_fn *fn,
                                   void *arg);

//  Reads the child's stdout until a line starting with prefix arrives:
//  returns it (without the newline, owned by the proc, valid until the next
//  wait on it) or NULL when timeout_ms passed or the child closed stdout
//  first. Earlier lines are skipped.
const char *cf_testkit_wait_line(cf_testkit_proc_t *proc, const char *prefix, int timeout_ms);
//  The value of "key=value" in the last line wait_line returned, owned by
//  the proc (valid until its next wait), or NULL when absent.
const char *cf_testkit_field(cf_testkit_proc_t *proc, const char *key);

pid_t cf_testkit_pid(cf_testkit_proc_t *proc);
const char *cf_testkit_label(cf_testkit_proc_t *proc);
//  The child's stderr log, as a path (borrowed) and as text (malloc'd:
//  yours; NULL if unreadable).
const char *cf_testkit_log_path(cf_testkit_proc_t *proc);
char *cf_testkit_log(cf_testkit_proc_t *proc);

//  True while the child has not exited (reaps it if it has).
bool cf_testkit_alive(cf_testkit_proc_t *proc);
//  Sends sig to the child (not its group). Returns false if it has already
//  been reaped or kill() failed.
bool cf_testkit_signal(cf_testkit_proc_t *proc, int sig);
//  Waits up to timeout_ms for the child to exit and reaps it; *status (may
//  be NULL) gets its wait status. True if it exited (now or before).
bool cf_testkit_wait_exit(cf_testkit_proc_t *proc, int timeout_ms, int *status);
//  SIGTERM, then waits up to timeout_ms, then SIGKILL to its process group,
//  reaps. Returns the wait status (-1 only if it could not be reaped).
int cf_testkit_stop(cf_testkit_proc_t *proc, int timeout_ms);
//  SIGKILL to the child and reap it: a crash, as far as its peers can tell.
void cf_testkit_kill(cf_testkit_proc_t *proc);

// ---------------------------------------------------------------------------
//  The daemons. Each starts the program, waits for its ready line and fails
//  the test (with the logs) if it does not come.

//  cf-broker on fresh loopback ports ("tcp://127.0.0.1:*" for both unless
//  the extra arguments give --clients / --workers). Extra arguments are
//  NULL-terminated: cf_testkit_start_broker(kit, "--heartbeat-ms", "200", NULL).
cf_testkit_proc_t *cf_testkit_start_broker(cf_testkit_t *kit, ...) CF_TESTKIT_SENTINEL;
cf_testkit_proc_t *cf_testkit_start_brokerv(cf_testkit_t *kit, const char *const *extra);
//  The broker's endpoints from its ready line, owned by the proc (kept until
//  the proc is freed with the kit, unlike cf_testkit_field).
const char *cf_testkit_clients(cf_testkit_proc_t *broker);
const char *cf_testkit_workers(cf_testkit_proc_t *broker);

//  cf-worker connected to a broker's worker endpoint with the example task
//  library (--tasks $CF_TASKS_LIB) and the extra arguments.
cf_testkit_proc_t *cf_testkit_start_worker(cf_testkit_t *kit, const char *workers_endpoint,
                                           ...) CF_TESTKIT_SENTINEL;
cf_testkit_proc_t *cf_testkit_start_workerv(cf_testkit_t *kit, const char *workers_endpoint,
                                            const char *const *extra);
//  The same with another task library than the example one (extra may be
//  NULL).
cf_testkit_proc_t *cf_testkit_start_worker_tasks(cf_testkit_t *kit, const char *workers_endpoint,
                                                 const char *tasks_lib, const char *const *extra);

// ---------------------------------------------------------------------------
//  Clients and futures

//  A CF_REMOTE executor on a broker's client endpoint with the given
//  heartbeat interval (0: the default); fails the test if it cannot be made.
//  Destroy it before the test ends, while the broker still runs (destroy
//  waits for pending tasks).
cf_executor_t *cf_testkit_connect(const char *clients_endpoint, int heartbeat_ivl_ms);

//  Waits up to CF_TESTKIT_DEADLINE_MS for f to finish, failing the test
//  (with the daemons' logs) if it does not.
void cf_testkit_expect_done(cf_testkit_t *kit, cf_future_t *f);
//  f finished with this integer result / this boolean.
void cf_testkit_expect_int(cf_testkit_t *kit, cf_future_t *f, int64_t expected);
void cf_testkit_expect_bool(cf_testkit_t *kit, cf_future_t *f, bool expected);
//  f failed with this error type (and, when message is not NULL, a message
//  containing it); returns the error (borrowed from f).
const cf_task_error_t *cf_testkit_expect_error(cf_testkit_t *kit, cf_future_t *f, const char *type,
                                               const char *message);

// ---------------------------------------------------------------------------
//  Programs run to completion

typedef struct {
    bool exited;        //  false: killed after the timeout
    int status;         //  wait status
    int exit_code;      //  WEXITSTATUS, or 128 + signal, or -1 when !exited
    const char *out;    //  everything it wrote to stdout, NUL-terminated
    const char *err;    //  everything it wrote to stderr
} cf_testkit_output_t;

//  Runs argv (NULL-terminated; argv[0] a path) with stdin from /dev/null
//  and captures stdout and stderr; kills it after timeout_ms. Returns false
//  if it could not be started. The texts belong to the kit (freed with it,
//  so a failing assertion leaks nothing).
bool cf_testkit_run(cf_testkit_t *kit, const char *const *argv, int timeout_ms,
                    cf_testkit_output_t *output);

// ---------------------------------------------------------------------------
//  Waiting and looking

//  Calls cond(arg) until it returns true or timeout_ms passes, napping a
//  few milliseconds between calls. True if the condition was met.
typedef bool(cf_testkit_cond_fn)(void *arg);
bool cf_testkit_wait_until(cf_testkit_cond_fn *cond, void *arg, int timeout_ms);

//  A short nap (inside wait loops only).
void cf_testkit_nap_ms(int ms);

//  Milliseconds on CLOCK_MONOTONIC.
int64_t cf_testkit_now_ms(void);

//  The whole file, NUL-terminated, malloc'd; NULL if unreadable.
char *cf_testkit_read_file(const char *path);
//  Parses a file holding one decimal number (a pid a task wrote); -1 if the
//  file is missing, empty or not a complete number yet.
long cf_testkit_read_number(const char *path);

//  The line of text that contains needle, as a malloc'd copy without its
//  newline, or NULL.
char *cf_testkit_line_with(const char *text, const char *needle);
//  True when the needles (NULL-terminated) appear in text in this order.
bool cf_testkit_in_order(const char *text, const char *const *needles);
//  How many times needle occurs in text.
size_t cf_testkit_count(const char *text, const char *needle);

//  Resident memory of pid in KiB (VmRSS), -1 if unknown.
long cf_testkit_rss_kib(pid_t pid);

//  A broker counter ("queued", "clients", ...) read with a STATS request on
//  its client endpoint; false when no reply came within timeout_ms or the
//  reply has no such counter.
bool cf_testkit_broker_stat(const char *clients_endpoint, const char *name, int timeout_ms,
                            uint64_t *value);

#endif

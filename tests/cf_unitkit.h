//  cf_unitkit: what several unit tests need beside tests/cf_fakebroker, so
//  it is written once: a gate that tasks running in this process wait at
//  until the test opens it (the test learns how many reached it, so nothing
//  depends on timing), a future's int result or task error, releasing an
//  array of futures, a directory for a test program's files, and the
//  CF_TEST_* environment. Failures are cmocka
//  assertions: call the cf_unitkit_expect_* functions from the test's own
//  thread; tasks call only cf_unitkit_gate_pass (or run
//  cf_unitkit_gate_task).

#ifndef CF_UNITKIT_H
#define CF_UNITKIT_H

#include "cfutures.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

//  What the environment asks of a test program: CF_TEST_LOG=1 logs what
//  the library does to stderr (debug and up), CF_TEST_FILTER=pattern runs
//  only the tests whose names match. Call first in main().
void cf_unitkit_use_env(void);

//  Makes a fresh directory /tmp/<name>.XXXXXX for the test program's files
//  and returns its path, or NULL (errno says why). It is removed with all
//  in it by cf_unitkit_dir_remove and also at exit, since a failed run may
//  skip the group teardown. One at a time.
const char *cf_unitkit_dir_make(const char *name);
void cf_unitkit_dir_remove(void);

//  The directory's path, or "" when there is none.
const char *cf_unitkit_dir(void);

//  name's path in the directory; four rotating buffers, so a test can hold
//  several at once.
const char *cf_unitkit_dir_path(const char *name);

//  Closes the gate and forgets the tasks that reached it.
void cf_unitkit_gate_close(void);

//  Opens the gate: the tasks at it go on, later ones pass. It starts open.
void cf_unitkit_gate_open(void);

//  Called by a task: counts itself as having reached the gate, then waits
//  until the gate is open.
void cf_unitkit_gate_pass(void);

//  A task to register under a name of the test's (CF_TASK_NAMED): passes
//  the gate, then returns its int argument.
void cf_unitkit_gate_task(cf_call_t *call);

//  Waits until n tasks reached the gate since it was closed; fails the test
//  if they did not within timeout_ms (a hang guard, not a timing check).
void cf_unitkit_expect_at_gate(int n, int timeout_ms);

//  The int result of f within timeout_ms; fails the test with the future's
//  function, the error and the task's error type and message otherwise.
int64_t cf_unitkit_expect_int(cf_future_t *f, int timeout_ms);

//  Releases n futures (each cf_future_release, which NULLs it).
void cf_unitkit_release_all(cf_future_t **fs, size_t n);

//  Expects f to fail within timeout_ms with a task error of type (the
//  exception's class name, "WorkerLost", "TimeoutError", ...); returns
//  the error, which lives as long as f.
const cf_task_error_t *cf_unitkit_expect_task_error(cf_future_t *f, int timeout_ms,
                                                    const char *type);

//  Captures the library's log lines (info and up; with CF_TEST_DEBUG set,
//  debug too, echoed to stderr), forgetting what was captured before;
//  cf_unitkit_log_stop puts the default handler back.
void cf_unitkit_log_start(void);
void cf_unitkit_log_stop(void);
//  Whether a captured line holds needle; the await form waits up to
//  timeout_ms for one (a hang guard, not a timing check).
bool cf_unitkit_log_has(const char *needle);
bool cf_unitkit_log_await(const char *needle, int timeout_ms);

#endif

//  cf_unitkit: what several unit tests need beside tests/cf_fakebroker, so
//  it is written once. A gate that tasks running in this process wait at
//  until the test opens it (the test learns how many reached it, so nothing
//  depends on timing), and the int result of a future. Failures are cmocka
//  assertions: call the cf_unitkit_expect_* functions from the test's own
//  thread; tasks call only cf_unitkit_gate_pass.

#ifndef CF_UNITKIT_H
#define CF_UNITKIT_H

#include "cfutures.h"

#include <stdint.h>

//  Closes the gate and forgets the tasks that reached it.
void cf_unitkit_gate_close(void);

//  Opens the gate: the tasks at it go on, later ones pass. It starts open.
void cf_unitkit_gate_open(void);

//  Called by a task: counts itself as having reached the gate, then waits
//  until the gate is open.
void cf_unitkit_gate_pass(void);

//  Waits until n tasks reached the gate since it was closed; fails the test
//  if they did not within timeout_ms (a hang guard, not a timing check).
void cf_unitkit_expect_at_gate(int n, int timeout_ms);

//  The int result of f within timeout_ms; fails the test with the future's
//  function, the error and the task's error type and message otherwise.
int64_t cf_unitkit_expect_int(cf_future_t *f, int timeout_ms);

#endif

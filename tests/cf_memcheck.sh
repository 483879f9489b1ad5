#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#  Runs a test program under valgrind's memcheck, following the processes it
#  forks (cf_procs' zygote and worker processes are forked copies of the
#  test, never exec'd, so memcheck stays in each of them), and fails when
#  any of those processes reported an error: an invalid read or write, a
#  use of uninitialised memory, a bad free, or memory definitely lost.
#
#  This is how the worker-process code gets memory checks at all: GCC 12's
#  AddressSanitizer allocator is not fork-safe (see worker/cf_procs_test.c),
#  so the ASan build skips those tests. tests/memcheck.supp holds the known
#  false reports (memory a parent's threads own that a forked child still
#  sees allocated, with no thread left to free it).
#
#  usage: tests/cf_memcheck.sh PROGRAM [ARGS...]     (exit status: the
#  program's, else 1 when valgrind reported an error in any process)
#  --fair-sched=yes: valgrind runs one thread at a time, and by default a
#  busy thread keeps the CPU; cf_procs_test's "caller runs threads" test then
#  starved its supervisor and fake broker (138 s, a READY where a RESULT was
#  due). Fair scheduling: 4 s, and the test means what it says.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
logs=$(mktemp -d "${TMPDIR:-/tmp}/cf_memcheck.XXXXXX")
trap 'rm -rf "$logs"' EXIT

valgrind -q --fair-sched=yes --log-file="$logs/vg.%p" --leak-check=full --errors-for-leak-kinds=definite \
    --show-leak-kinds=definite --track-origins=no --child-silent-after-fork=no \
    --suppressions="$here/memcheck.supp" --error-exitcode=97 "$@"
status=$?

bad=0
for log in "$logs"/vg.*; do
    [ -s "$log" ] || continue
    if grep -q "ERROR SUMMARY: [1-9]\|Invalid \|uninitialised\|definitely lost" "$log"; then
        echo "cf_memcheck: valgrind reported errors in process ${log##*.}:" >&2
        cat "$log" >&2
        bad=1
    fi
done
if [ "$status" -ne 0 ]; then
    echo "cf_memcheck: $1 exited with status $status" >&2
    exit "$status"
fi
exit "$bad"

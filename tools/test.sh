#!/usr/bin/env bash
#  Builds cfutures and runs the whole test suite, three ways:
#    build-test   the normal build (RelWithDebInfo): every unit, integration
#                 and fault test, and every example run by tests/test_examples
#    build-asan   AddressSanitizer + UndefinedBehaviorSanitizer (and
#                 LeakSanitizer): the same tests, so the daemons, the examples
#                 and the tests themselves are all checked
#    build-tsan   ThreadSanitizer: the unit tests, where the threads are
#                 (futures, pool, actors); libzmq is not instrumented, so
#                 tests/tsan.supp hides what happens inside it
#  First, tools/check_layers.py checks that no #include breaks the layers.
#  Uses gcc's sanitizers (no extra package). Stops at the first failing
#  step. Run from anywhere; build directories go in the repository root.
#
#  Environment: CF_JOBS (default: nproc) parallel build and test jobs;
#  CF_TEST_ONLY="test asan" to run some of the three builds only.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
jobs=${CF_JOBS:-$(nproc)}
only=${CF_TEST_ONLY:-test asan tsan}

step() {
    printf '\n==== %s ====\n' "$*"
}

#  build NAME CTEST_ARGS... -- CMAKE_ARGS...
build_and_test() {
    local name=$1
    shift
    local ctest_args=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do
        ctest_args+=("$1")
        shift
    done
    shift
    local dir="$root/build-$name"
    step "$name: configure"
    cmake -S "$root" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@"
    step "$name: build"
    cmake --build "$dir" -j "$jobs"
    step "$name: test"
    (cd "$dir" && ctest --output-on-failure --no-tests=error -j "${test_jobs:-$jobs}" \
        "${ctest_args[@]}")
}

start=$(date +%s)
step "layers: includes keep the layers of docs/architecture.md"
python3 "$root/tools/check_layers.py"
for kind in $only; do
    case $kind in
    test)
        build_and_test test -- -DCF_SANITIZE=
        ;;
    asan)
        #  abort_on_error gives a core-like stop at the first report;
        #  detect_leaks makes a leak fail the program that leaked (a daemon
        #  exiting non-zero on SIGTERM fails its test).
        ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1} \
        UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
            build_and_test asan -- -DCF_SANITIZE=address,undefined
        ;;
    tsan)
        #  Unit tests only, one at a time (TSan slows each 5-15x; several at
        #  once on two cores turn deadlines into noise). cf_procs_test is
        #  left out: its worker processes are forked by a zygote that was
        #  itself forked from a threaded process and then start threads,
        #  which TSan cannot follow ("starting new threads after
        #  multi-threaded fork is not supported"); the ASan build runs it.
        test_jobs=1 \
        TSAN_OPTIONS=${TSAN_OPTIONS:-suppressions=$root/tests/tsan.supp:halt_on_error=1:second_deadlock_stack=1} \
            build_and_test tsan -L unit -E '^cf_procs_test$' -- -DCF_SANITIZE=thread
        ;;
    *)
        echo "tools/test.sh: unknown build '$kind' in CF_TEST_ONLY (test, asan, tsan)" >&2
        exit 2
        ;;
    esac
done
step "all passed in $(( $(date +%s) - start )) s: $only"

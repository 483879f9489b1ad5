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
#    build-fuzz   clang's libFuzzer with ASan+UBSan: the fuzz targets of
#                 fuzz/ (every decoder of network input), a few seconds
#                 each from seeds made of real frames; skipped, saying so,
#                 when clang (with its libFuzzer runtime) is not installed
#  First, tools/check_layers.py checks that no #include breaks the layers.
#  The three cfutures builds use gcc's sanitizers. Stops at the first
#  failing step. A test that could not run in a build (exit 77: CTest says
#  Skipped) is counted and named in the summary, never passed silently.
#  Run from anywhere; build directories go in the repository root.
#
#  Environment: CF_JOBS (default: nproc) parallel build and test jobs;
#  CF_TEST_ONLY="test asan" to run some of the four builds only;
#  CF_FUZZ_SECONDS (default 5) how long each fuzzer runs.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
jobs=${CF_JOBS:-$(nproc)}
only=${CF_TEST_ONLY:-test asan tsan fuzz}
skipped_tests=()
skipped_steps=()

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
        "${ctest_args[@]}") 2>&1 | tee "$dir/ctest.out"
    count_skips "$name" "$dir/ctest.out"
}

#  count_skips BUILD CTEST_OUTPUT: remembers the tests CTest listed as
#  Skipped ("The following tests did not run: ... (Skipped)").
count_skips() {
    local name
    while read -r name; do
        skipped_tests+=("$1:$name")
    done < <(sed -n 's/^[[:space:]]*[0-9][0-9]* - \(.*\) (Skipped)$/\1/p' "$2")
}

#  True when clang can build and link a libFuzzer target here.
have_libfuzzer() {
    command -v clang > /dev/null || return 1
    local probe
    probe=$(mktemp -d)
    printf '%s\n' '#include <stddef.h>' '#include <stdint.h>' \
        'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }' \
        > "$probe/probe.c"
    clang -fsanitize=fuzzer,address,undefined "$probe/probe.c" -o "$probe/probe" 2> /dev/null
    local rc=$?
    rm -rf "$probe"
    return $rc
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
        #  history_size=7: a reader on one actor of a message another wrote
        #  long before (a STARTED or RESULT held 10 ms) needs the writer's
        #  stack restored for tests/tsan.supp to match it.
        test_jobs=1 \
        TSAN_OPTIONS=${TSAN_OPTIONS:-suppressions=$root/tests/tsan.supp:halt_on_error=1:second_deadlock_stack=1:history_size=7} \
            build_and_test tsan -L unit -E '^cf_procs_test$' -- -DCF_SANITIZE=thread
        ;;
    fuzz)
        #  A project of its own (fuzz/CMakeLists.txt): gcc builds never see
        #  it. docs/reliability.md gives the long run.
        if ! have_libfuzzer; then
            step "fuzz: SKIPPED: clang with libFuzzer is not installed" \
                "(apt-get install clang libclang-rt-dev)"
            skipped_steps+=(fuzz)
            continue
        fi
        dir="$root/build-fuzz"
        step "fuzz: configure"
        CC=clang cmake -S "$root/fuzz" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
            -DCF_FUZZ_SECONDS="${CF_FUZZ_SECONDS:-5}"
        step "fuzz: build"
        cmake --build "$dir" -j "$jobs"
        step "fuzz: run each target for ${CF_FUZZ_SECONDS:-5} s"
        #  One at a time: each fuzzer is given its seconds of a whole CPU.
        (cd "$dir" && ctest --output-on-failure --no-tests=error -j 1) 2>&1 | tee "$dir/ctest.out"
        #  What each fuzzer did (libFuzzer's last line, from CTest's log).
        grep -h "^[0-9]*/[0-9]* Test: \|^Done [0-9]* runs" \
            "$dir/Testing/Temporary/LastTest.log" || true
        count_skips fuzz "$dir/ctest.out"
        ;;
    *)
        echo "tools/test.sh: unknown build '$kind' in CF_TEST_ONLY (test, asan, tsan, fuzz)" >&2
        exit 2
        ;;
    esac
done
step "skipped: ${#skipped_tests[@]} tests, ${#skipped_steps[@]} builds"
for name in "${skipped_tests[@]}" "${skipped_steps[@]}"; do
    echo "  skipped: $name"
done
step "all passed in $(( $(date +%s) - start )) s: $only" \
    "(${#skipped_tests[@]} tests and ${#skipped_steps[@]} builds skipped)"

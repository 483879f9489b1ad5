#!/bin/sh
# SPDX-License-Identifier: MIT
#
# consumer.sh BUILD_DIR THIS_DIR CC CXX
#
# What a user does after `cmake --install`: installs the build into a
# temporary prefix, then MOVES the tree elsewhere (so nothing may depend on
# the prefix it was installed to), and from there
#   1. compiles and runs a C and a C++ program with `pkg-config cfutures`;
#   2. builds the same programs, and the C one on the static library, with
#      find_package(cfutures) in a CMake project, and runs them;
#   3. runs the installed cf-broker --version and every tool's --version
#      (the install RPATH: no LD_LIBRARY_PATH anywhere), then starts the
#      installed broker and asks it for STATS with the installed cf-admin.
# Any failure stops the script with a message and exit status 1.
set -eu

build=$1
here=$2
cc=$3
cxx=${4:-}
[ -n "$cxx" ] || { echo "consumer.sh: no C++ compiler found (apt-get install g++)" >&2; exit 1; }
command -v pkg-config >/dev/null || { echo "consumer.sh: pkg-config is missing" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/cf-consumer.XXXXXX")
broker_pid=
cleanup() {
    [ -z "$broker_pid" ] || kill "$broker_pid" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
    echo "consumer.sh: $*" >&2
    exit 1
}
unset LD_LIBRARY_PATH PKG_CONFIG_PATH CMAKE_PREFIX_PATH || true

version=$(sed -n 's/^#define CF_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\)$/\2/p' \
          "$here/../../include/cfutures.h" | paste -sd.)

echo "== install into $tmp/first, then move it to $tmp/moved"
cmake --install "$build" --prefix "$tmp/first" >"$tmp/install.log" || {
    cat "$tmp/install.log"; fail "cmake --install failed"; }
mv "$tmp/first" "$tmp/moved"
prefix=$tmp/moved
libdir=$(cd "$prefix" && ls -d lib*/pkgconfig | head -n1 | xargs dirname)
for f in include/cfutures.h "$libdir/libcfutures.a" "$libdir/pkgconfig/cfutures.pc" \
         "$libdir/cmake/cfutures/cfutures-config.cmake" \
         "$libdir/cmake/cfutures/cfutures-config-version.cmake" \
         bin/cf-broker bin/cf-worker bin/cf-keygen bin/cf-admin; do
    [ -e "$prefix/$f" ] || fail "not installed: $f"
done

echo "== pkg-config"
export PKG_CONFIG_PATH="$prefix/$libdir/pkgconfig"
[ "$(pkg-config --modversion cfutures)" = "$version" ] || fail "cfutures.pc says $(pkg-config --modversion cfutures), not $version"
cflags=$(pkg-config --cflags cfutures)
libs=$(pkg-config --libs cfutures)
pc_libdir=$(pkg-config --variable=libdir cfutures)
case "$cflags $libs" in
    *"$prefix"*) ;;
    *) fail "pkg-config does not point into the moved tree: $cflags $libs" ;;
esac
# shellcheck disable=SC2086
"$cc" -Wall -Werror "$here/consumer/consumer.c" -o "$tmp/pc_c" $cflags $libs -Wl,-rpath,"$pc_libdir"
# shellcheck disable=SC2086
"$cxx" -std=c++11 -Wall -Werror "$here/consumer/consumer.cpp" -o "$tmp/pc_cxx" $cflags $libs -Wl,-rpath,"$pc_libdir"
"$tmp/pc_c"
"$tmp/pc_cxx"

echo "== find_package(cfutures)"
cmake -S "$here/consumer" -B "$tmp/cmake-build" -DCMAKE_PREFIX_PATH="$prefix" \
      -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" >"$tmp/configure.log" 2>&1 || {
    cat "$tmp/configure.log"; fail "the consumer project does not configure"; }
grep -q "cfutures $version from $prefix" "$tmp/configure.log" || {
    cat "$tmp/configure.log"; fail "find_package did not find cfutures $version in the moved tree"; }
cmake --build "$tmp/cmake-build" >"$tmp/build.log" 2>&1 || {
    cat "$tmp/build.log"; fail "the consumer project does not build"; }
"$tmp/cmake-build/consumer_c"
"$tmp/cmake-build/consumer_cxx"
"$tmp/cmake-build/consumer_static"
if readelf -d "$tmp/cmake-build/consumer_static" | grep -q 'libcfutures\.so'; then
    fail "consumer_static links libcfutures.so, not the static library"
fi

echo "== the installed programs"
for tool in cf-broker cf-worker cf-keygen cf-admin; do
    out=$("$prefix/bin/$tool" --version) || fail "$tool --version failed"
    [ "$out" = "$tool (cfutures) $version" ] || fail "$tool --version says '$out'"
    echo "$out"
done
: >"$tmp/broker.out"
"$prefix/bin/cf-broker" --clients 'tcp://127.0.0.1:*' --workers 'tcp://127.0.0.1:*' \
    >"$tmp/broker.out" 2>"$tmp/broker.err" &
broker_pid=$!
# The ready line, read as it comes (a bounded wait, not a guess).
tries=0
until grep -q '^ready ' "$tmp/broker.out"; do
    kill -0 "$broker_pid" 2>/dev/null || { cat "$tmp/broker.err"; fail "the installed cf-broker exited"; }
    tries=$((tries + 1))
    [ "$tries" -lt 600 ] || fail "no ready line from the installed cf-broker in 30 s"
    sleep 0.05
done
clients=$(sed -n 's/^ready clients=\([^ ]*\) .*/\1/p' "$tmp/broker.out")
"$prefix/bin/cf-admin" --broker "$clients" status | tee "$tmp/status.out"
grep -q "^cf-broker at $clients" "$tmp/status.out" || fail "cf-admin status did not show the broker"
kill "$broker_pid"
wait "$broker_pid" || fail "the installed cf-broker did not exit 0 on SIGTERM"
broker_pid=
echo "consumer.sh: all good"

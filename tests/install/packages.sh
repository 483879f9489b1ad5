#!/bin/sh
# SPDX-License-Identifier: MIT
#
# packages.sh BUILD_DIR VERSION SOVERSION
#
# Builds the Debian packages as the README says (cpack -G DEB in the build
# directory; here into a temporary directory) and checks each one with
# dpkg-deb: its name and version, its dependencies, the files it must hold
# and the files it must not (each file in exactly one package), the
# daemons' conffiles and maintainer scripts, the units naming /usr/bin and
# /etc/default, and the library's soname. Exit status 1 with what is wrong.
set -eu

build=$1
version=$2
so=$3
for tool in cpack dpkg-deb dpkg-shlibdeps readelf; do
    command -v "$tool" >/dev/null || {
        echo "packages.sh: $tool is missing (apt-get install dpkg-dev binutils cmake)" >&2
        exit 1
    }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/cf-packages.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail() {
    echo "packages.sh: $*" >&2
    exit 1
}

(cd "$build" && cpack -G DEB -B "$tmp" >"$tmp/cpack.log" 2>&1) || {
    cat "$tmp/cpack.log"; fail "cpack -G DEB failed"; }
arch=$(dpkg --print-architecture)
runtime=$tmp/libcfutures${so}_${version}_$arch.deb
dev=$tmp/libcfutures-dev_${version}_$arch.deb
daemons=$tmp/cfutures_${version}_$arch.deb
for deb in "$runtime" "$dev" "$daemons"; do
    [ -f "$deb" ] || { ls "$tmp"; fail "no $(basename "$deb")"; }
    dpkg-deb -c "$deb" | awk '{print $6}' | sed 's,/$,,' >"$deb.files"
    [ "$(dpkg-deb -f "$deb" Version)" = "$version" ] || fail "$(basename "$deb"): version $(dpkg-deb -f "$deb" Version)"
done

# has DEB PATH...: every PATH (a regular expression, anchored) is in DEB.
has() {
    deb=$1
    shift
    for path; do
        grep -qx "\./$path" "$deb.files" || {
            cat "$deb.files"; fail "$(basename "$deb") lacks $path"; }
    done
}
# lacks DEB PATTERN...: no file of DEB matches PATTERN.
lacks() {
    deb=$1
    shift
    for pattern; do
        ! grep -q "$pattern" "$deb.files" || fail "$(basename "$deb") holds $(grep "$pattern" "$deb.files" | head -n1)"
    done
}

lib='usr/lib\(/[a-z0-9_-]*\)\?'
has "$runtime" "$lib/libcfutures\.so\.$so" "$lib/libcfutures\.so\.$version" \
    "usr/share/doc/libcfutures$so/copyright"
lacks "$runtime" 'include/' 'libcfutures\.a$' 'libcfutures\.so$' 'bin/'
has "$dev" 'usr/include/cfutures\.h' "$lib/libcfutures\.so" "$lib/libcfutures\.a" \
    "$lib/pkgconfig/cfutures\.pc" "$lib/cmake/cfutures/cfutures-config\.cmake" \
    "$lib/cmake/cfutures/cfutures-config-version\.cmake" \
    "$lib/cmake/cfutures/cfutures-targets\.cmake" "usr/share/doc/libcfutures-dev/copyright"
lacks "$dev" "libcfutures\.so\.$so" 'bin/' 'cfutures-programs'
has "$daemons" usr/bin/cf-broker usr/bin/cf-worker usr/bin/cf-keygen usr/bin/cf-admin \
    usr/share/man/man1/cf-broker\.1\.gz usr/share/man/man1/cf-worker\.1\.gz \
    usr/share/man/man1/cf-keygen\.1\.gz usr/share/man/man1/cf-admin\.1\.gz \
    'usr/lib/systemd/system/cf-broker\.service' 'usr/lib/systemd/system/cf-worker@\.service' \
    etc/default/cf-broker etc/default/cf-worker usr/share/doc/cfutures/copyright \
    usr/share/doc/cfutures/operations\.md "$lib/cmake/cfutures/cfutures-programs\.cmake"
lacks "$daemons" 'include/' 'libcfutures\.so' 'libcfutures\.a'

# Dependencies: the runtime's from dpkg-shlibdeps, the others exact.
depends=$(dpkg-deb -f "$runtime" Depends)
case "$depends" in *libzmq5*) ;; *) fail "libcfutures$so Depends lacks libzmq5: $depends" ;; esac
for deb in "$dev" "$daemons"; do
    case "$(dpkg-deb -f "$deb" Depends)" in
        *"libcfutures$so (= $version)"*) ;;
        *) fail "$(basename "$deb") does not depend on libcfutures$so (= $version)" ;;
    esac
done

# The daemons package: conffiles, maintainer scripts, units for /usr.
dpkg-deb -e "$daemons" "$tmp/control"
grep -qx /etc/default/cf-broker "$tmp/control/conffiles" || fail "cfutures: /etc/default/cf-broker is not a conffile"
[ -x "$tmp/control/postinst" ] || fail "cfutures: no executable postinst"
grep -q 'adduser --system' "$tmp/control/postinst" || fail "cfutures: postinst makes no system user"
dpkg-deb -x "$daemons" "$tmp/daemons"
unit=$tmp/daemons/usr/lib/systemd/system/cf-broker.service
grep -qx 'ExecStart=/usr/bin/cf-broker $CF_BROKER_OPTS' "$unit" || fail "cf-broker.service: $(grep ExecStart "$unit")"
grep -qx 'EnvironmentFile=-/etc/default/cf-broker' "$unit" || fail "cf-broker.service does not read /etc/default/cf-broker"
grep -qx 'ExecStart=/usr/bin/cf-worker $CF_WORKER_OPTS' \
    "$tmp/daemons/usr/lib/systemd/system/cf-worker@.service" || fail "cf-worker@.service ExecStart"
if grep -q '@[A-Z_]*@' "$unit"; then fail "cf-broker.service has an unreplaced @VARIABLE@"; fi
for tool in cf-broker cf-worker cf-keygen cf-admin; do
    page=$tmp/daemons/usr/share/man/man1/$tool.1.gz
    zcat "$page" | grep -q '^\.SH "EXIT STATUS"' || fail "$tool.1 has no EXIT STATUS section"
    zcat "$page" | grep -q -- '-\\-version' || fail "$tool.1 does not list --version"
done

# The units as systemd reads them (where systemd-analyze exists: not in a
# minimal container), with ExecStart pointed at the extracted programs.
if command -v systemd-analyze >/dev/null; then
    mkdir "$tmp/units"
    units=$tmp/daemons/usr/lib/systemd/system
    sed "s,ExecStart=/usr/bin/,ExecStart=$tmp/daemons/usr/bin/," "$units/cf-broker.service" \
        >"$tmp/units/cf-broker.service"
    sed "s,ExecStart=/usr/bin/,ExecStart=$tmp/daemons/usr/bin/," "$units/cf-worker@.service" \
        >"$tmp/units/cf-worker@main.service"
    # verify exits 0 on lines it ignores ("Failed to parse ..."): any output
    # is a problem.
    problems=$(cd "$tmp/units" && systemd-analyze verify --man=no ./cf-broker.service \
               ./cf-worker@main.service 2>&1) || true
    [ -z "$problems" ] || fail "systemd-analyze verify: $problems"
else
    echo "packages.sh: no systemd-analyze here: the units' syntax is not verified"
fi

# The library in the runtime package: its soname.
dpkg-deb -x "$runtime" "$tmp/runtime"
soname=$(readelf -d "$(find "$tmp/runtime" -name "libcfutures.so.$version")" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[ "$soname" = "libcfutures.so.$so" ] || fail "soname $soname, not libcfutures.so.$so"

for deb in "$runtime" "$dev" "$daemons"; do
    echo "$(basename "$deb"): $(wc -l <"$deb.files") entries; Depends: $(dpkg-deb -f "$deb" Depends)"
done
echo "packages.sh: all good"

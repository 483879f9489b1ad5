#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Checks what libcfutures.so exports against what cfutures.h declares.

    check_symbols.py CC HEADER LIBRARY MAP

- The functions the header declares come from the compiler itself
  (CC -aux-info writes every prototype it saw, with its file and line), so
  macros, comments and line breaks cannot fool the count.
- The symbols the library exports come from objdump -T, with their symbol
  version.

Passes when the public version node (CFUTURES_1) holds exactly the header's
functions, every one of them defined; every other exported symbol is in
CFUTURES_PRIVATE, none of which the header declares; and the MAP file's
public node agrees with the header too (so an addition to one is noticed
before the next build). Prints what differs otherwise and exits 1.
"""

import os
import re
import subprocess
import sys
import tempfile

PUBLIC = "CFUTURES_1"
PRIVATE = "CFUTURES_PRIVATE"


def header_functions(cc, header):
    with tempfile.TemporaryDirectory() as tmp:
        aux = os.path.join(tmp, "aux.txt")
        source = os.path.join(tmp, "h.c")
        with open(source, "w") as f:
            f.write(f'#include "{os.path.abspath(header)}"\n')
        subprocess.run([cc, "-fsyntax-only", "-aux-info", aux, source], check=True)
        names = set()
        base = os.path.basename(header)
        with open(aux) as f:
            for line in f:
                where, _, decl = line.partition("*/")
                if base not in where:
                    continue
                m = re.search(r"(\w+) \(", decl)
                if m:
                    names.add(m.group(1))
        return names


def exported(library):
    out = subprocess.run(["objdump", "-T", library], check=True, capture_output=True,
                         text=True).stdout
    symbols = {}
    for line in out.splitlines():
        # 0000000000012340 g    DF .text  0000000000000020  CFUTURES_1  cf_submit
        fields = line.split()
        if len(fields) < 6 or " g " not in f" {line} " or "*UND*" in line:
            continue
        name = fields[-1]
        version = fields[-2].strip("()")
        if name == version:         # the version definition itself
            continue
        symbols[name] = version
    return symbols


def map_public(path):
    text = re.sub(r"/\*.*?\*/", "", open(path).read(), flags=re.S)
    node = re.search(PUBLIC + r"\s*\{(.*?)\}", text, flags=re.S).group(1)
    globals_ = node.split("global:")[1].split("local:")[0]
    return {s.strip() for s in globals_.split(";") if s.strip()}


def main():
    if len(sys.argv) != 5:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    cc, header, library, mapfile = sys.argv[1:]
    declared = header_functions(cc, header)
    symbols = exported(library)
    public = {n for n, v in symbols.items() if v == PUBLIC}
    private = {n for n, v in symbols.items() if v == PRIVATE}
    other = {n: v for n, v in symbols.items() if v not in (PUBLIC, PRIVATE)}
    listed = map_public(mapfile)
    problems = []
    for name in sorted(declared - public):
        problems.append(f"{name}: declared in {os.path.basename(header)} but not exported "
                        f"as {PUBLIC} (missing from {os.path.basename(mapfile)}, or not defined)")
    for name in sorted(public - declared):
        problems.append(f"{name}: exported as {PUBLIC} but not declared in the header")
    for name in sorted(declared & private):
        problems.append(f"{name}: declared in the header but exported as {PRIVATE}")
    for name, version in sorted(other.items()):
        problems.append(f"{name}: exported outside the version nodes ({version or 'no version'})")
    for name in sorted(listed ^ declared):
        problems.append(f"{name}: the map's {PUBLIC} and the header disagree")
    for line in problems:
        print(f"check_symbols: {line}", file=sys.stderr)
    if problems:
        return 1
    print(f"check_symbols: {len(public)} public symbols = the header's {len(declared)} "
          f"functions; {len(private)} {PRIVATE} symbols for the shipped programs; "
          f"nothing else exported")
    return 0


if __name__ == "__main__":
    sys.exit(main())

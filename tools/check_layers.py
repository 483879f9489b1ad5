#!/usr/bin/env python3
"""Checks that the #include lines keep the layers of the source tree.

The rules (docs/architecture.md, "The map"): each folder may include
headers from the folders listed after it, and from nothing else of ours.
System headers (<...>) are not ours and are not checked.

    include   the public header, cfutures.h: nothing of ours
    core      include core
    broker    include core broker
    worker    include core worker
    lib       include core broker worker lib
    tools     include core broker worker lib tools
    bench     include core lib bench
    fuzz      include core fuzz
    examples  include examples
    tests     every folder

A unit test beside the code (NAME_test.c) may also include tests/ (the fake
broker, the sanitizer check). Besides the folder rules, no module may depend
on itself through others: modules (a .h and its .c, by name) must form no
cycle through their includes, and files no include cycle either.

Exit status: 0 when every include keeps the rules, 1 with one line per
broken rule, 2 on a usage error.  Run from anywhere: tools/check_layers.py
"""

import os
import re
import sys

LAYERS = {
    "include": [],
    "core": ["include", "core"],
    "broker": ["include", "core", "broker"],
    "worker": ["include", "core", "worker"],
    "lib": ["include", "core", "broker", "worker", "lib"],
    "tools": ["include", "core", "broker", "worker", "lib", "tools"],
    "bench": ["include", "core", "lib", "bench"],
    "fuzz": ["include", "core", "fuzz"],
    "examples": ["include", "examples"],
    "tests": ["include", "core", "broker", "worker", "lib", "tests", "examples"],
}
#  Where "#include "x.h"" is looked up after the including file's own
#  folder: the compiler's include path (CMakeLists.txt).
SEARCH = ["include", "core", "broker", "worker", "lib", "tests"]
INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def source_files(root):
    for folder in LAYERS:
        top = os.path.join(root, folder)
        for dirpath, _, names in os.walk(top):
            for name in sorted(names):
                if name.endswith((".c", ".h")):
                    yield os.path.relpath(os.path.join(dirpath, name), root)


def resolve(root, including, target):
    here = os.path.dirname(including)
    candidates = [os.path.normpath(os.path.join(here, target))]
    candidates += [os.path.join(folder, target) for folder in SEARCH]
    for rel in candidates:
        if os.path.isfile(os.path.join(root, rel)):
            return rel
    return None


def folder_of(rel):
    return rel.split(os.sep)[0]


def module_of(rel):
    name = os.path.splitext(os.path.basename(rel))[0]
    return os.path.join(folder_of(rel), re.sub(r"_test$", "", name))


def find_cycle(graph):
    """One cycle of graph (dict node -> set of nodes) as a list, or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {node: WHITE for node in graph}
    for start in sorted(graph):
        if colour[start] != WHITE:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        colour[start] = GREY
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = BLACK
                stack.pop()
                path.pop()
            elif colour.get(child, BLACK) == GREY:
                return path[path.index(child):] + [child]
            elif colour.get(child) == WHITE:
                colour[child] = GREY
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return None


def main():
    if len(sys.argv) > 1:
        print("usage: tools/check_layers.py   (no arguments)", file=sys.stderr)
        return 2
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    problems = []
    files = {}
    modules = {}
    for rel in source_files(root):
        deps = set()
        with open(os.path.join(root, rel), encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                m = INCLUDE_RE.match(line)
                if not m:
                    continue
                target = resolve(root, rel, m.group(1))
                where = f"{rel}:{number}"
                if target is None:
                    problems.append(f"{where}: cannot find \"{m.group(1)}\"")
                    continue
                deps.add(target)
                allowed = list(LAYERS[folder_of(rel)])
                if rel.endswith("_test.c"):
                    allowed.append("tests")
                if folder_of(target) not in allowed:
                    problems.append(f"{where}: {folder_of(rel)}/ may not include "
                                    f"{target} ({folder_of(target)}/ is not below it)")
        files[rel] = deps
        if not rel.endswith("_test.c") and folder_of(rel) not in ("tests", "examples"):
            mod = modules.setdefault(module_of(rel), set())
            mod.update(module_of(d) for d in deps if module_of(d) != module_of(rel)
                       and not d.endswith("_test.c"))
    cycle = find_cycle(files)
    if cycle:
        problems.append("include cycle between files: " + " -> ".join(cycle))
    cycle = find_cycle({m: {d for d in deps if d in modules} for m, deps in modules.items()})
    if cycle:
        problems.append("dependency cycle between modules: " + " -> ".join(cycle))
    for line in problems:
        print(f"check_layers: {line}", file=sys.stderr)
    if problems:
        return 1
    print(f"check_layers: {len(files)} files, {len(modules)} modules: every include keeps the layers")
    return 0


if __name__ == "__main__":
    sys.exit(main())

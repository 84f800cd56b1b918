#!/usr/bin/env python3
"""scripts/check_layout.py — the module graph of src/ has no import cycle (issue 19).

A module depends on another when its source names it as `crate::<module>` (in a `use` or a path, grouped imports
`use crate::{a::x, b}` included). Modules are the files of src/ and the folders of src/ with a mod.rs; a folder's
own files count as the folder. The script prints every cycle (a strongly connected component of more than one module,
and the modules of it that import each other) and exits 1 if there is one; it first proves on a made-up tree that it
finds cycles. `make test` runs it first.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def modules(root):
    """Module name -> the .rs files that belong to it."""
    found = {}
    for entry in sorted(os.listdir(root)):
        path = os.path.join(root, entry)
        if entry.endswith(".rs") and entry not in ("lib.rs",):
            found[entry[:-3]] = [path]
        elif os.path.isdir(path):
            found[entry] = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".rs")]
    return found


def named_modules(source):
    """Top-level module names a source file reaches through `crate::`."""
    names = set(re.findall(r"\bcrate::(\w+)", source))
    for group in re.findall(r"\bcrate::\{([^}]*)\}", source, flags=re.S):
        names.update(re.findall(r"(?:^|,)\s*(\w+)", group))
    return names


def strongly_connected(graph):
    index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            result.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return result


def cycles_in(root):
    """The import cycles among the modules under `root`, each with the graph's edges."""
    mods = modules(root)
    graph = {}
    for name, files in mods.items():
        deps = set()
        for path in files:
            with open(path, encoding="utf-8") as f:
                deps |= named_modules(f.read())
        graph[name] = {d for d in deps if d in mods and d != name}
    return [c for c in strongly_connected(graph) if len(c) > 1], graph


def self_test():
    """The check must be able to fail: a made-up tree with a cycle of three (a grouped import among them) and one
    module that imports each other one, and a tree without a cycle."""
    import tempfile
    with tempfile.TemporaryDirectory() as root:
        files = {"a.rs": "use crate::b::x;", "b.rs": "use crate::{c::y, d};", "c.rs": "fn f() { crate::a::g() }",
                 "d.rs": "", "lib.rs": "use crate::a;"}
        for name, text in files.items():
            with open(os.path.join(root, name), "w", encoding="utf-8") as f:
                f.write(text)
        os.mkdir(os.path.join(root, "e"))
        with open(os.path.join(root, "e", "mod.rs"), "w", encoding="utf-8") as f:
            f.write("use crate::d;")
        with open(os.path.join(root, "d.rs"), "w", encoding="utf-8") as f:
            f.write("use crate::e::z;")
        found, _ = cycles_in(root)
        assert sorted(map(tuple, found)) == [("a", "b", "c"), ("d", "e")], found
        os.remove(os.path.join(root, "c.rs"))
        with open(os.path.join(root, "d.rs"), "w", encoding="utf-8") as f:
            f.write("")
        found, _ = cycles_in(root)
        assert found == [], found


def main():
    self_test()
    cycles, graph = cycles_in(ROOT)
    for cycle in cycles:
        mutual = sorted({tuple(sorted((a, b))) for a in cycle for b in graph[a] if a in graph[b]})
        print(f"check_layout: import cycle among {', '.join(cycle)}"
              + (f"; importing each other: {', '.join(a + ' <-> ' + b for a, b in mutual)}" if mutual else ""))
    if cycles:
        sys.exit(1)
    print(f"check_layout: {len(graph)} modules of src/, no import cycle")


if __name__ == "__main__":
    main()

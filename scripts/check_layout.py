#!/usr/bin/env python3
"""scripts/check_layout.py — the module graph of src/ has no import cycle, and the module lists match the tree (issue 19).

A module depends on another when its source names it as `crate::<module>` (in a `use` or a path, grouped imports
`use crate::{a::x, b}` included). Modules are the files of src/ and the folders of src/ with a mod.rs; a folder's
own files count as the folder. Inside each folder the same holds for its files, which name each other as
`super::<file>` or `crate::<folder>::<file>`. The script prints every cycle (a strongly connected component of more
than one module, and the modules of it that import each other) and exits 1 if there is one; it first proves on a
made-up tree that it finds cycles.

It also checks that the module lists match the tree: src/lib.rs declares (`mod x;`) and its header lists (`- `x``)
exactly the modules of src/, and each folder's mod.rs declares and lists exactly its files. `make test` runs it first.
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


def named_modules(source, prefixes=("crate",)):
    """Module names a source file reaches through one of `prefixes` (`crate` for the top level; `super` and
    `crate::<folder>` inside a folder)."""
    names = set()
    for prefix in prefixes:
        names.update(re.findall(r"\b%s::(\w+)" % re.escape(prefix), source))
        for group in re.findall(r"\b%s::\{([^}]*)\}" % re.escape(prefix), source, flags=re.S):
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


def folder_modules(folder):
    """File name (without .rs) -> [path], for the files of one folder of src/ other than its mod.rs."""
    return {entry[:-3]: [os.path.join(folder, entry)] for entry in sorted(os.listdir(folder))
            if entry.endswith(".rs") and entry != "mod.rs"}


def graph_of(mods, prefixes):
    graph = {}
    for name, files in mods.items():
        deps = set()
        for path in files:
            with open(path, encoding="utf-8") as f:
                deps |= named_modules(f.read(), prefixes)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def cycles_in(root):
    """The import cycles among the modules under `root` (the top level, then inside each folder, whose modules are
    named `folder/file`), with the graph's edges."""
    graph = graph_of(modules(root), ("crate",))
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    for folder in sorted(e for e in os.listdir(root) if os.path.isfile(os.path.join(root, e, "mod.rs"))):
        inner = graph_of(folder_modules(os.path.join(root, folder)), ("super", f"crate::{folder}"))
        cycles += [[f"{folder}/{m}" for m in c] for c in strongly_connected(inner) if len(c) > 1]
        graph.update({f"{folder}/{m}": {f"{folder}/{d}" for d in deps} for m, deps in inner.items()})
    return cycles, graph


def list_mismatches(root):
    """Where a module list (lib.rs for src/, mod.rs for each folder: its `mod` declarations and its header's `- `x``
    items) differs from the files on disk."""
    problems = []

    def compare(list_file, on_disk, ignore=()):
        with open(list_file, encoding="utf-8") as f:
            text = f.read()
        declared = set(re.findall(r"^\s*(?:pub(?:\([^)]*\))? )?mod (\w+);", text, flags=re.M)) - set(ignore)
        header = "\n".join(line for line in text.splitlines() if line.startswith("//!"))
        listed = set(re.findall(r"^//! - `(\w+)/?`", header, flags=re.M))
        name = os.path.relpath(list_file, os.path.dirname(root))
        for what, found in (("declares", declared), ("lists in its header", listed)):
            if found != on_disk:
                problems.append(f"{name} {what} {sorted(found)}, the tree has {sorted(on_disk)}")

    compare(os.path.join(root, "lib.rs"), set(modules(root)) - {"pg_tests"}, ignore=("pg_tests",))
    for folder in sorted(e for e in os.listdir(root) if os.path.isfile(os.path.join(root, e, "mod.rs"))):
        compare(os.path.join(root, folder, "mod.rs"), set(folder_modules(os.path.join(root, folder))))
    return problems


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
        # Inside a folder: two files that import each other (one through super::, one through crate::e::).
        with open(os.path.join(root, "e", "f.rs"), "w", encoding="utf-8") as f:
            f.write("use super::g::x;")
        with open(os.path.join(root, "e", "g.rs"), "w", encoding="utf-8") as f:
            f.write("use crate::e::{f, h};")
        found, _ = cycles_in(root)
        assert found == [["e/f", "e/g"]], found
        # The lists: lib.rs without `mod e;`, and e/mod.rs declaring f only and listing nothing.
        with open(os.path.join(root, "lib.rs"), "w", encoding="utf-8") as f:
            f.write("//! - `a`\n//! - `b`\n//! - `d`\n//! - `e/`\nmod a;\nmod b;\nmod d;\n")
        with open(os.path.join(root, "e", "mod.rs"), "w", encoding="utf-8") as f:
            f.write("//! e\nmod f;\n")
        problems = list_mismatches(root)
        assert len(problems) == 3 and problems[0].endswith("lib.rs declares ['a', 'b', 'd'], the tree has "
                                                         "['a', 'b', 'd', 'e']"), problems


def main():
    self_test()
    cycles, graph = cycles_in(ROOT)
    for cycle in cycles:
        mutual = sorted({tuple(sorted((a, b))) for a in cycle for b in graph[a] if a in graph[b]})
        print(f"check_layout: import cycle among {', '.join(cycle)}"
              + (f"; importing each other: {', '.join(a + ' <-> ' + b for a, b in mutual)}" if mutual else ""))
    problems = list_mismatches(ROOT)
    for problem in problems:
        print(f"check_layout: {problem}")
    if cycles or problems:
        sys.exit(1)
    print(f"check_layout: {len(graph)} modules and files of src/, no import cycle; lib.rs and every mod.rs list the "
          "tree")


if __name__ == "__main__":
    main()

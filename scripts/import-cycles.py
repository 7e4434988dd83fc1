#!/usr/bin/env python3
"""Import cycles between the modules of each crate: prints them and exits 1 if there is one.

A module is a file (`a/b.rs` or `a/b/mod.rs` is `a::b`); a module imports another when it names
it through `crate::…` or `super::…`, in a `use` or a path. The crate root (its module list and
re-exports) is no node: only the modules under it are. Used by `make lint-host`.

    scripts/import-cycles.py [ROOT_FILE ...]   (default: every crate of the project)
"""
import os
import re
import sys

# The crate roots checked by default: every crate in the workspace plus the kernel module.
DEFAULT_ROOTS = [
    "abi/src/lib.rs",
    "device/src/lib.rs",
    "guest-driver/agent/src/main.rs",
    "guest-driver/module/dmalab.rs",
    "harness/src/lib.rs",
    "oracle/src/lib.rs",
    "ownership/src/lib.rs",
    "report/src/lib.rs",
]

COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
STRING = re.compile(r'"(?:\\.|[^"\\])*"')
PATH_START = re.compile(r"\b(crate|super)::")


def modules(root_file):
    """Maps each module path (tuple) of the crate rooted at `root_file` to its file."""
    src = os.path.dirname(root_file)
    found = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            full = os.path.join(dirpath, f)
            if os.path.samefile(full, root_file):
                continue
            rel = os.path.relpath(full, src)[:-3].split(os.sep)
            if rel[-1] == "mod":
                rel = rel[:-1]
            if rel and rel[0] == "bin":
                continue  # binaries are crates of their own
            found[tuple(rel)] = full
    return found


def inline_modules(text):
    """The root's inline modules (`mod abi { … }`): nodes without a file of their own."""
    return {m.group(1) for m in re.finditer(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*\{", text, re.M)}


def path_heads(text, pos):
    """The paths starting at `pos` (just after `crate::`/`super::`): brace groups expanded to
    their items, each as a list of segments."""
    out = []

    def parse(i, prefix):
        segs = list(prefix)
        while True:
            m = re.compile(r"\s*(\w+)\s*").match(text, i)
            if m:
                segs.append(m.group(1))
                i = m.end()
                if text.startswith("::", i):
                    i += 2
                    continue
                out.append(segs)
                return i
            m = re.compile(r"\s*\{").match(text, i)
            if m:
                i = m.end()
                while True:
                    i = parse(i, segs)
                    m2 = re.compile(r"\s*(?:as\s+\w+\s*)?,?\s*").match(text, i)
                    i = m2.end()
                    if text.startswith("}", i):
                        return i + 1
                    if i >= len(text):
                        return i
            if segs:
                out.append(segs)
            return i

    parse(pos, [])
    return out


def edges(root_file):
    mods = modules(root_file)
    with open(root_file) as f:
        root_text = f.read()
    nodes = set(mods) | {(m,) for m in inline_modules(root_text)}
    graph = {m: set() for m in nodes}

    def resolve(segs):
        # the longest module prefix of the path
        for n in range(len(segs), 0, -1):
            if tuple(segs[:n]) in nodes:
                return tuple(segs[:n])
        return None

    for mod, path in mods.items():
        with open(path) as f:
            text = STRING.sub('""', COMMENT.sub("", f.read()))
        # `mod tests { … }` blocks test the module itself; what they import is not the
        # module's structure
        cut = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text)
        if cut:
            text = text[: cut.start()]
        for m in PATH_START.finditer(text):
            base = [] if m.group(1) == "crate" else list(mod[:-1])
            for segs in path_heads(text, m.end()):
                target = resolve(base + segs)
                if target and target != mod and not (mod[: len(target)] == target):
                    graph[mod].add(target)
    return graph


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def one_cycle(graph, comp):
    """One concrete loop through the component, for the message."""
    comp = set(comp)
    start = min(comp)
    path, seen = [start], {start}
    while True:
        nxt = sorted(w for w in graph[path[-1]] if w in comp)
        back = [w for w in nxt if w in path]
        if back:
            return path[path.index(back[0]):] + [back[0]]
        fresh = [w for w in nxt if w not in seen]
        if not fresh:
            return path
        path.append(fresh[0])
        seen.add(fresh[0])


def main():
    roots = sys.argv[1:] or [r for r in DEFAULT_ROOTS if os.path.exists(r)]
    bad = 0
    for root in roots:
        graph = edges(root)
        found = cycles(graph)
        name = os.path.dirname(root)
        n_edges = sum(len(v) for v in graph.values())
        if not found:
            print(f"import cycles: {name}: none ({len(graph)} modules, {n_edges} imports)")
        for comp in found:
            bad += 1
            loop = " -> ".join("::".join(m) for m in one_cycle(graph, comp))
            print(f"import cycle in {name}: {loop}")
    if bad:
        print(f"{bad} import cycle(s): a module's imports must run one way (ARCHITECTURE.md)")
        sys.exit(1)


if __name__ == "__main__":
    main()

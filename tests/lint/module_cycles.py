#!/usr/bin/env python3
"""Fails when the top-level modules of a crate import each other in a cycle.

For every crate below, each top-level module (`foo.rs` or `foo/`) is a node
and every `crate::bar` path in it (in `use` lines or inline, `use
crate::{bar, baz}` groups included) an edge to `bar`. The children of a
module that is a directory (`daemon/lease.rs`, `daemon/state.rs`) are checked
the same way, through their `super::x` and `crate::daemon::x` paths. A module that imports
another module which, directly or through others, imports it back is
reported with the path of the cycle. Test code counts too: a test that needs
a module's dependant is a sign the code sits in the wrong module.

    tests/lint/module_cycles.py            checks the workspace's crates
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CRATES = ["agent/model/src", "agent/core/src", "agent/src", "coordinator/src"]

def path_re(prefix: str) -> re.Pattern:
    return re.compile(r"\b" + prefix + r"::(\{[^}]*\}|[a-z_][a-z0-9_]*)", re.S)
COMMENT = re.compile(r"//.*")


def module_of(scope: Path, file: Path) -> str | None:
    """The child of `scope` that `file` belongs to (None for the scope's own
    lib.rs, main.rs or mod.rs)."""
    rel = file.relative_to(scope)
    if rel.parts[0] in ("lib.rs", "main.rs", "mod.rs"):
        return None
    return rel.parts[0].removesuffix(".rs")


def edges(scope: Path, patterns: list[tuple[re.Pattern, int]]) -> dict[str, set[str]]:
    """Import edges between the children of `scope`. A pattern counts in
    files at the given depth below a child (0: `child.rs` itself), or at any
    depth when it is None."""
    files = sorted(scope.rglob("*.rs"))
    modules = {m for f in files if (m := module_of(scope, f))}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for f in files:
        m = module_of(scope, f)
        if m is None:
            continue
        depth = len(f.relative_to(scope).parts) - 1
        text = COMMENT.sub("", f.read_text())
        for pattern, at in patterns:
            if at is not None and at != depth:
                continue
            for hit in pattern.finditer(text):
                for name in re.split(r"[,\s]+", hit.group(1).strip("{}")):
                    name = name.split("::")[0]
                    if name in modules and name != m:
                        graph[m].add(name)
    return graph


def scopes(src: Path):
    """The crate root, then every module that is a directory."""
    yield src, [(path_re("crate"), None)]
    for mod_rs in sorted(src.rglob("mod.rs")):
        d = mod_rs.parent
        modpath = "::".join(d.relative_to(src).parts)
        yield d, [(path_re("super"), 0), (path_re("crate::" + modpath), None)]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, seen = [], set()
    for start in sorted(graph):
        # Depth-first from `start`, looking for a way back to it.
        stack = [(start, [start])]
        visited = set()
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph[node]):
                if nxt == start:
                    key = frozenset(path)
                    if key not in seen:
                        seen.add(key)
                        found.append(path + [start])
                elif nxt not in visited:
                    visited.add(nxt)
                    stack.append((nxt, path + [nxt]))
    return found


def main() -> int:
    bad = 0
    for crate in CRATES:
        src = ROOT / crate
        for scope, patterns in scopes(src):
            for cycle in cycles(edges(scope, patterns)):
                where = scope.relative_to(ROOT)
                print(f"{where}: import cycle: {' -> '.join(cycle)}")
                bad += 1
    if bad:
        print("move what both modules need into the one it belongs to, so imports go one way")
        return 1
    print(f"no import cycles between the modules of {', '.join(CRATES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

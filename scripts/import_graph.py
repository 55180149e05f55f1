"""Import-graph figures for one or more packages: modules, import cycles and levels.

    PYTHONPATH=. .venv/bin/python scripts/import_graph.py server fleet.controller

A cycle is a strongly connected set of modules (each reaches the others through imports); a
level is a module's place in the longest chain of imports below it (1: imports nothing of the
package). `make lint` holds the layers themselves (.importlinter); this prints the figures the
layout is judged by.
"""

from __future__ import annotations

import sys

import grimp


def module_edges(graph: grimp.ImportGraph, package: str) -> dict[str, set[str]]:
    inside = sorted(m for m in graph.modules if m == package or m.startswith(package + "."))
    return {
        module: {
            imported
            for imported in graph.find_modules_directly_imported_by(module)
            if imported in inside and imported != module
        }
        for module in inside
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def levels(edges: dict[str, set[str]], circular: list[list[str]]) -> dict[str, int]:
    """Longest import chain below each module, a cycle counted as one module."""
    group = {module: module for module in edges}
    for component in circular:
        for module in component:
            group[module] = component[0]
    condensed: dict[str, set[str]] = {g: set() for g in set(group.values())}
    for module, imported in edges.items():
        condensed[group[module]] |= {group[i] for i in imported} - {group[module]}
    memo: dict[str, int] = {}
    for start in condensed:
        pending = [start]
        while pending:
            node = pending[-1]
            missing = [d for d in condensed[node] if d not in memo]
            if missing:
                pending.extend(missing)
                continue
            pending.pop()
            memo[node] = 1 + max((memo[d] for d in condensed[node]), default=0)
    return {module: memo[group[module]] for module in edges}


def main(packages: list[str]) -> None:
    tops = sorted({package.split(".")[0] for package in packages})
    graph = grimp.build_graph(*tops, include_external_packages=False)
    for package in packages:
        edges = module_edges(graph, package)
        circular = cycles(edges)
        depth = levels(edges, circular)
        imports = sum(len(imported) for imported in edges.values())
        print(
            f"{package}: {len(edges)} modules, {imports} imports, "
            f"{max(depth.values(), default=0)} levels, {len(circular)} cycles"
        )
        for component in circular:
            print(f"  cycle of {len(component)}: {', '.join(component)}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["server", "fleet.controller"])

"""Pure planning: turn systems and a dependency map into ordered stages.

No database, no Django: plain strings (system slugs) in, lists of lists out. The rules:

- ``Before(first, then)``: ``first`` is unwound in an earlier stage than ``then``
  ("unwind B before A" is ``Before("B", "A")``: dependents first).
- ``Tandem(a, b)``: ``a`` and ``b`` are unwound in the same stage.

A cycle of ``Before`` edges, or a ``Before`` edge inside a tandem group, has no order; it is
reported as :class:`CycleError` naming the systems on the cycle.
"""

from __future__ import annotations

import graphlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Before:
    first: str
    then: str


@dataclass(frozen=True)
class Tandem:
    a: str
    b: str


Edge = Before | Tandem


def endpoints(edge: Edge) -> tuple[str, str]:
    """The two systems an edge joins."""
    return (edge.first, edge.then) if isinstance(edge, Before) else (edge.a, edge.b)


class CycleError(ValueError):
    """The map has no order.

    ``cycle`` lists the systems on one cycle, the first repeated last; between neighbours
    there is either a ``Before`` edge or the two are in one tandem group (shown as ``=``).
    """

    def __init__(self, cycle: list[str], tandem_links: set[tuple[str, str]] | None = None):
        self.cycle = cycle
        links = tandem_links or set()
        text = cycle[0]
        for a, b in zip(cycle, cycle[1:], strict=False):
            text += (" = " if (a, b) in links else " → ") + b
        super().__init__(f"dependency cycle: {text}")


def _tandem_groups(systems: Iterable[str], edges: Iterable[Edge]) -> dict[str, str]:
    """Union-find over tandem edges: system -> representative of its group."""
    parent: dict[str, str] = {s: s for s in systems}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for edge in edges:
        if isinstance(edge, Tandem):
            ra, rb = find(edge.a), find(edge.b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return {s: find(s) for s in list(parent)}


def _members(group_of: dict[str, str]) -> dict[str, list[str]]:
    members: dict[str, list[str]] = defaultdict(list)
    for system, group in group_of.items():
        members[group].append(system)
    return {g: sorted(ms) for g, ms in members.items()}


def _describe_cycle(
    group_cycle: list[str], edges: list[Edge], group_of: dict[str, str]
) -> CycleError:
    """Turn a cycle of tandem groups into a cycle of the systems whose edges make it."""
    names: list[str] = []
    links: set[tuple[str, str]] = set()
    for g_from, g_to in zip(group_cycle, group_cycle[1:], strict=False):
        edge = next(
            e
            for e in edges
            if isinstance(e, Before) and group_of[e.first] == g_from and group_of[e.then] == g_to
        )
        if names and names[-1] != edge.first:
            links.add((names[-1], edge.first))  # arrived in this group through a tandem member
            names.append(edge.first)
        elif not names:
            names.append(edge.first)
        names.append(edge.then)
    if names[-1] != names[0]:
        links.add((names[-1], names[0]))
        names.append(names[0])
    return CycleError(names, links)


def check_acyclic(edges: Iterable[Edge]) -> None:
    """Raise :class:`CycleError` if the map (all of it) has no order."""
    edges = list(edges)
    systems = {s for e in edges for s in endpoints(e)}
    plan_stages(systems, edges)


def plan_stages(systems: Iterable[str], edges: Iterable[Edge]) -> list[list[str]]:
    """Group ``systems`` into stages that respect every edge of the map.

    1. Merge systems joined by tandem edges into groups (union-find over the whole map).
    2. Build the group graph of ``Before`` edges; a ``Before`` edge inside one group is a cycle.
    3. Keep order through systems that are not being unwound: if the plan holds C and A, and
       the map says C before B before A, C still comes before A.
    4. Layer the groups with :mod:`graphlib` (each stage is everything ready at once) and
       return the stages as sorted lists of the requested systems.
    """
    edges = list(edges)
    wanted = set(systems)
    everything = set(wanted)
    for e in edges:
        everything.update(endpoints(e))
    group_of = _tandem_groups(sorted(everything), edges)
    members = _members(group_of)

    successors: dict[str, set[str]] = defaultdict(set)
    for e in edges:
        if isinstance(e, Before):
            gf, gt = group_of[e.first], group_of[e.then]
            if gf == gt:
                raise CycleError([e.first, e.then, e.first], {(e.then, e.first)})
            successors[gf].add(gt)

    # Full check first so that a cycle anywhere in the map is named, even outside the plan.
    full = graphlib.TopologicalSorter({g: set() for g in members})
    for g_from, tos in successors.items():
        for g_to in tos:
            full.add(g_to, g_from)
    try:
        full.prepare()
    except graphlib.CycleError as exc:
        # graphlib lists the cycle so that each node is a predecessor of the next.
        raise _describe_cycle(exc.args[1], edges, group_of) from None

    wanted_groups = {group_of[s] for s in wanted}
    # Reachability between wanted groups through groups not in the plan (step 3).
    reduced: dict[str, set[str]] = {g: set() for g in wanted_groups}
    for start in wanted_groups:
        stack, seen = list(successors.get(start, ())), set()
        while stack:
            g = stack.pop()
            if g in seen:
                continue
            seen.add(g)
            if g in wanted_groups:
                reduced[g].add(start)  # start must come first: it is g's predecessor
            else:
                stack.extend(successors.get(g, ()))
    sorter = graphlib.TopologicalSorter(reduced)
    sorter.prepare()
    stages: list[list[str]] = []
    while sorter.is_active():
        ready = sorter.get_ready()
        stages.append(sorted(s for g in ready for s in members[g] if s in wanted))
        sorter.done(*ready)
    return stages

"""Pure planning: stages from a dependency map. No database.

``Before(first, then)``: ``first`` is unwound in an earlier stage than ``then``.
``Tandem(a, b)``: ``a`` and ``b`` are unwound in the same stage.
"""

from __future__ import annotations

import re
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollbacks.planning import Before, CycleError, Tandem, check_acyclic, plan_stages

# --------------------------------------------------------------------------- helpers


def stage_of(stages: list[list[str]]) -> dict[str, int]:
    return {s: i for i, stage in enumerate(stages) for s in stage}


def tandem_components(nodes, edges) -> dict[str, str]:
    """An independent union-find over tandem edges (not the product's)."""
    parent = {n: n for n in nodes}

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for e in edges:
        if isinstance(e, Tandem):
            ra, rb = find(e.a), find(e.b)
            if ra != rb:
                parent[ra] = rb
    return {n: find(n) for n in parent}


def must_precede(edges, comp) -> dict[str, set[str]]:
    """Component -> every component that must come strictly later (transitive, through anything)."""
    succ: dict[str, set[str]] = defaultdict(set)
    for e in edges:
        if isinstance(e, Before):
            succ[comp[e.first]].add(comp[e.then])
    later: dict[str, set[str]] = {}
    for start in set(comp.values()):
        seen: set[str] = set()
        stack = list(succ[start])
        while stack:
            g = stack.pop()
            if g not in seen:
                seen.add(g)
                stack.extend(succ[g])
        later[start] = seen
    return later


def assert_valid_plan(wanted, edges, stages):
    flat = [s for stage in stages for s in stage]
    assert sorted(flat) == sorted(wanted), "every requested system appears exactly once"
    assert all(stages), "no stage is empty"
    assert all(stage == sorted(stage) for stage in stages), "each stage is sorted"
    where = stage_of(stages)
    nodes = set(wanted) | {
        x for e in edges for x in ((e.first, e.then) if isinstance(e, Before) else (e.a, e.b))
    }
    comp = tandem_components(nodes, edges)
    for e in edges:
        if isinstance(e, Before) and e.first in where and e.then in where:
            assert where[e.first] < where[e.then], f"{e} violated: {stages}"
        if isinstance(e, Tandem) and e.a in where and e.b in where:
            assert where[e.a] == where[e.b], f"{e} violated: {stages}"
    # Order kept through systems not in the plan, and tandem groups held together transitively.
    later = must_precede(edges, comp)
    for x in wanted:
        for y in wanted:
            if comp[y] in later[comp[x]]:
                assert where[x] < where[y], f"{x} must precede {y} (through the map): {stages}"
            if comp[x] == comp[y]:
                assert where[x] == where[y], f"{x} and {y} are in one tandem group: {stages}"
    # Stages are as early as possible: each system after the first stage waits for something
    # in the stage just before it.
    for x in wanted:
        if where[x] > 0:
            assert any(where[y] == where[x] - 1 and comp[x] in later[comp[y]] for y in wanted), (
                f"{x} could have gone in an earlier stage: {stages}"
            )


# --------------------------------------------------------------------------- examples


def test_no_systems_give_no_stages():
    assert plan_stages([], [Before("a", "b")]) == []


def test_systems_without_edges_share_one_sorted_stage():
    assert plan_stages(["c", "a", "b"], []) == [["a", "b", "c"]]


def test_before_edge_puts_first_in_an_earlier_stage():
    assert plan_stages(["orders-db", "orders-api"], [Before("orders-api", "orders-db")]) == [
        ["orders-api"],
        ["orders-db"],
    ]


def test_chain_gives_one_stage_per_system():
    edges = [Before("a", "b"), Before("b", "c"), Before("c", "d")]
    assert plan_stages(["d", "c", "b", "a"], edges) == [["a"], ["b"], ["c"], ["d"]]


def test_independent_branches_run_in_parallel_stages():
    edges = [
        Before("flags", "orders-api"),
        Before("flags", "billing-api"),
        Before("orders-api", "orders-db"),
        Before("billing-api", "billing-db"),
    ]
    stages = plan_stages(["flags", "orders-api", "billing-api", "orders-db", "billing-db"], edges)
    assert stages == [["flags"], ["billing-api", "orders-api"], ["billing-db", "orders-db"]]


def test_only_requested_systems_appear_in_the_plan():
    edges = [Before("a", "b"), Before("b", "c"), Tandem("c", "d")]
    assert plan_stages(["b"], edges) == [["b"]]


def test_order_is_kept_through_systems_not_being_unwound():
    # C before B before A; the plan holds only A and C: C still comes first.
    stages = plan_stages(["A", "C"], [Before("C", "B"), Before("B", "A")])
    assert stages == [["C"], ["A"]]
    where = stage_of(stages)
    assert where["C"] < where["A"]


def test_order_is_kept_through_a_long_chain_of_systems_not_being_unwound():
    edges = [Before(f"s{i}", f"s{i + 1}") for i in range(20)]
    assert plan_stages(["s20", "s0"], edges) == [["s0"], ["s20"]]


def test_order_is_kept_through_a_tandem_group_not_being_unwound():
    # x before m1, m1 in tandem with m2, m2 before y: x precedes y though neither m is planned.
    edges = [Before("x", "m1"), Tandem("m1", "m2"), Before("m2", "y")]
    assert plan_stages(["y", "x"], edges) == [["x"], ["y"]]


def test_tandem_systems_share_a_stage():
    stages = plan_stages(["orders-api", "events-queue"], [Tandem("orders-api", "events-queue")])
    assert stages == [["events-queue", "orders-api"]]


def test_tandem_partner_waits_for_the_predecessors_of_the_other():
    # D has no predecessor of its own, but it moves with A, which comes after C and B.
    edges = [Before("C", "B"), Before("B", "A"), Tandem("A", "D")]
    assert plan_stages(["A", "B", "C", "D"], edges) == [["C"], ["B"], ["A", "D"]]


def test_tandem_is_transitive():
    edges = [Tandem("a", "b"), Tandem("b", "c"), Before("z", "c")]
    assert plan_stages(["a", "b", "c", "z"], edges) == [["z"], ["a", "b", "c"]]


def test_duplicate_edges_are_harmless():
    edges = [Before("a", "b"), Before("a", "b"), Tandem("b", "c"), Tandem("c", "b")]
    assert plan_stages(["a", "b", "c"], edges) == [["a"], ["b", "c"]]


def test_edges_may_be_a_generator():
    assert plan_stages({"a", "b"}, (e for e in [Before("b", "a")])) == [["b"], ["a"]]


def test_check_acyclic_accepts_a_dag_and_an_empty_map():
    assert check_acyclic([Before("a", "b"), Tandem("b", "c"), Before("c", "d")]) is None
    assert check_acyclic([]) is None


def test_cycle_error_names_the_systems_in_order():
    with pytest.raises(CycleError) as info:
        check_acyclic([Before("a", "b"), Before("b", "c"), Before("c", "a")])
    assert str(info.value) == "dependency cycle: a → b → c → a"
    assert info.value.cycle == ["a", "b", "c", "a"]


def test_cycle_error_is_a_value_error():
    assert issubclass(CycleError, ValueError)


def test_two_system_cycle_is_named():
    with pytest.raises(CycleError) as info:
        check_acyclic([Before("orders-api", "orders-db"), Before("orders-db", "orders-api")])
    cycle = info.value.cycle
    assert cycle[0] == cycle[-1]
    assert set(cycle) == {"orders-api", "orders-db"}
    assert len(cycle) == 3
    assert str(info.value) in (
        "dependency cycle: orders-api → orders-db → orders-api",
        "dependency cycle: orders-db → orders-api → orders-db",
    )


def test_cycle_leaves_out_systems_hanging_off_it():
    edges = [Before("p", "x"), Before("x", "y"), Before("y", "x"), Before("y", "q")]
    with pytest.raises(CycleError) as info:
        check_acyclic(edges)
    assert set(info.value.cycle) == {"x", "y"}


def test_cycle_through_a_tandem_group_is_shown_with_equals():
    with pytest.raises(CycleError) as info:
        check_acyclic([Before("a", "b"), Tandem("b", "c"), Before("c", "a")])
    assert str(info.value) == "dependency cycle: a → b = c → a"
    assert info.value.cycle == ["a", "b", "c", "a"]


def test_before_edge_inside_a_tandem_group_is_a_cycle():
    with pytest.raises(CycleError) as info:
        check_acyclic([Tandem("a", "b"), Before("a", "b")])
    assert str(info.value) == "dependency cycle: a → b = a"
    assert info.value.cycle == ["a", "b", "a"]


def test_before_edge_inside_a_transitive_tandem_group_is_a_cycle():
    with pytest.raises(CycleError) as info:
        check_acyclic([Tandem("a", "b"), Tandem("b", "c"), Before("c", "a")])
    assert info.value.cycle == ["c", "a", "c"]
    assert str(info.value) == "dependency cycle: c → a = c"


def test_plan_refuses_a_cycle_outside_the_systems_planned():
    edges = [Before("a", "b"), Before("x", "y"), Before("y", "x")]
    with pytest.raises(CycleError) as info:
        plan_stages(["a", "b"], edges)
    assert set(info.value.cycle) == {"x", "y"}


# --------------------------------------------------------------------------- properties

MAX_SYSTEMS = 200


@st.composite
def acyclic_maps(draw):
    """A map with an order: systems are put in ranked groups; Before edges only go from a
    lower rank to a higher one, tandem edges only join systems of the same rank."""
    n = draw(st.integers(1, MAX_SYSTEMS))
    rng = draw(st.randoms(use_true_random=False))
    names = [f"sys-{i:03d}" for i in range(n)]
    rng.shuffle(names)  # so that name order says nothing about the map's order
    rank_count = draw(st.integers(1, n))
    ranks = [rng.randrange(rank_count) for _ in range(n)]
    by_rank = defaultdict(list)
    for i, r in enumerate(ranks):
        by_rank[r].append(i)
    edges = []
    for _ in range(draw(st.integers(0, 3 * n))):
        i, j = rng.randrange(n), rng.randrange(n)
        if ranks[i] != ranks[j]:
            lo, hi = sorted((i, j), key=ranks.__getitem__)
            edges.append(Before(names[lo], names[hi]))
    for _ in range(draw(st.integers(0, n))):
        i = rng.randrange(n)
        j = rng.choice(by_rank[ranks[i]])
        if i != j:
            edges.append(Tandem(names[i], names[j]))
    rng.shuffle(edges)
    return names, edges


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(acyclic_maps())
def test_every_system_of_an_ordered_map_is_planned_in_order(graph):
    names, edges = graph
    check_acyclic(edges)
    stages = plan_stages(names, edges)
    assert_valid_plan(names, edges, stages)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(acyclic_maps(), st.data())
def test_a_subset_of_an_ordered_map_is_planned_in_order(graph, data):
    names, edges = graph
    wanted = data.draw(st.sets(st.sampled_from(names), max_size=len(names)))
    stages = plan_stages(wanted, edges)
    assert_valid_plan(wanted, edges, stages)


_PART = re.compile(r" (→|=) ")


def assert_real_cycle(exc: CycleError, edges):
    cycle = exc.cycle
    assert len(cycle) >= 3
    assert cycle[0] == cycle[-1]
    befores = {(e.first, e.then) for e in edges if isinstance(e, Before)}
    nodes = {x for e in edges for x in ((e.first, e.then) if isinstance(e, Before) else (e.a, e.b))}
    comp = tandem_components(nodes, edges)
    for x, y in zip(cycle, cycle[1:], strict=False):
        assert (x, y) in befores or comp[x] == comp[y], f"{x} → {y} is not in the map: {cycle}"
    assert any((x, y) in befores for x, y in zip(cycle, cycle[1:], strict=False)), "no Before edge"
    # The message spells the same cycle: "→" for a Before edge, "=" for a tandem link.
    text = str(exc).removeprefix("dependency cycle: ")
    parts = _PART.split(text)
    assert parts[0::2] == cycle
    for x, sep, y in zip(parts[0::2], parts[1::2], parts[2::2], strict=False):
        if sep == "→":
            assert (x, y) in befores, f"{x} → {y} shown but not a Before edge"
        else:
            assert comp[x] == comp[y], f"{x} = {y} shown but not one tandem group"


@st.composite
def maps_with_a_cycle(draw):
    names, edges = draw(acyclic_maps())
    length = draw(st.integers(2, min(10, max(2, len(names)))))
    if len(names) < length:
        names = names + [f"extra-{i}" for i in range(length - len(names))]
    on_cycle = draw(st.lists(st.sampled_from(names), min_size=length, max_size=length, unique=True))
    # Each hop of the cycle is a Before edge or a tandem link; at least one is a Before edge.
    kinds = [True] + draw(st.lists(st.booleans(), min_size=length - 1, max_size=length - 1))
    turn = draw(st.integers(0, length - 1))
    kinds = kinds[turn:] + kinds[:turn]  # the sure Before edge anywhere on the cycle
    planted = [
        (Before if is_before else Tandem)(on_cycle[i], on_cycle[(i + 1) % length])
        for i, is_before in enumerate(kinds)
    ]
    edges = edges + planted
    draw(st.randoms(use_true_random=False)).shuffle(edges)
    return names, edges


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(maps_with_a_cycle())
def test_a_planted_cycle_is_refused_and_named(graph):
    _, edges = graph
    with pytest.raises(CycleError) as info:
        check_acyclic(edges)
    assert_real_cycle(info.value, edges)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(maps_with_a_cycle(), st.data())
def test_a_plan_of_any_systems_is_refused_when_the_map_has_a_cycle(graph, data):
    names, edges = graph
    wanted = data.draw(st.sets(st.sampled_from(names), max_size=5))
    with pytest.raises(CycleError) as info:
        plan_stages(wanted, edges)
    assert_real_cycle(info.value, edges)

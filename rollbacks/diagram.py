"""Lay out the dependency map as a picture: stages left to right, systems top to bottom.

Pure: takes slugs and planning edges, returns boxes and arrows with coordinates that the
template draws as inline SVG (no JavaScript, so it works under the strict CSP).
"""

from __future__ import annotations

from dataclasses import dataclass

from rollbacks.planning import Before, Edge, Tandem, plan_stages

BOX_W, BOX_H, COL_GAP, ROW_GAP, MARGIN = 170, 44, 80, 24, 20


@dataclass(frozen=True)
class Box:
    slug: str
    x: int
    y: int
    stage: int

    @property
    def cx(self) -> int:
        return self.x + BOX_W // 2

    @property
    def cy(self) -> int:
        return self.y + BOX_H // 2


@dataclass(frozen=True)
class Arrow:
    x1: int
    y1: int
    x2: int
    y2: int
    is_tandem: bool
    label: str


@dataclass(frozen=True)
class Diagram:
    boxes: list[Box]
    arrows: list[Arrow]
    width: int
    height: int
    stage_count: int


def layout(slugs: list[str], edges: list[Edge]) -> Diagram:
    return place(plan_stages(slugs, edges), edges)


def place(stages: list[list[str]], edges: list[Edge]) -> Diagram:
    """Boxes for the given stages (column k is stage k + 1) and arrows for the edges
    between placed systems."""
    boxes: dict[str, Box] = {}
    for col, stage in enumerate(stages):
        for row, slug in enumerate(stage):
            boxes[slug] = Box(
                slug,
                MARGIN + col * (BOX_W + COL_GAP),
                MARGIN + 20 + row * (BOX_H + ROW_GAP),
                col + 1,
            )
    arrows = []
    for edge in edges:
        if isinstance(edge, Before) and edge.first in boxes and edge.then in boxes:
            a, b = boxes[edge.first], boxes[edge.then]
            arrows.append(
                Arrow(
                    a.x + BOX_W,
                    a.cy,
                    b.x,
                    b.cy,
                    False,
                    f"{edge.first} is unwound before {edge.then}",
                )
            )
        elif isinstance(edge, Tandem) and edge.a in boxes and edge.b in boxes:
            a, b = sorted((boxes[edge.a], boxes[edge.b]), key=lambda box: box.y)
            arrows.append(
                Arrow(a.cx, a.y + BOX_H, b.cx, b.y, True, f"{edge.a} moves in tandem with {edge.b}")
            )
    rows = max((len(s) for s in stages), default=0)
    width = MARGIN * 2 + max(len(stages), 1) * (BOX_W + COL_GAP) - COL_GAP
    height = MARGIN * 2 + 20 + max(rows, 1) * (BOX_H + ROW_GAP) - ROW_GAP
    return Diagram(list(boxes.values()), arrows, width, height, len(stages))


# The state a system's box shows in a rollback's picture: the one that most needs a reader's
# eye among its steps in that stage (a failure before anything running, and so on).
STATE_RANK = (
    "failed",
    "waiting_human",
    "running",
    "retry_wait",
    "pending",
    "cancelled",
    "skipped",
    "succeeded",
)


@dataclass(frozen=True)
class PlanNode:
    """What a box of a rollback's picture says about one system in one stage."""

    box: Box
    state: str
    done: int
    total: int

    @property
    def label(self) -> str:
        return f"{self.box.slug}: {self.done} of {self.total} step{'s' if self.total != 1 else ''} done, {self.state.replace('_', ' ')}"


def plan_picture(
    stages: list[list[tuple[str, str]]], edges: list[Edge]
) -> tuple[Diagram, list[PlanNode]]:
    """A rollback's plan as a picture: ``stages`` lists each stage's steps as (system slug,
    step state); a system's box shows its steps' most urgent state and how many are done.
    A system with steps in two stages (it cannot: planning puts a system in one stage) would
    show in the first."""
    columns: list[list[str]] = []
    seen: dict[str, dict] = {}
    for stage in stages:
        column: list[str] = []
        for slug, state in stage:
            if slug not in seen:
                seen[slug] = {"states": [], "done": 0}
                column.append(slug)
            seen[slug]["states"].append(state)
            seen[slug]["done"] += state in ("succeeded", "skipped")
        columns.append(column)
    picture = place(columns, edges)
    rank = {state: i for i, state in enumerate(STATE_RANK)}
    nodes = [
        PlanNode(
            box,
            min(seen[box.slug]["states"], key=lambda s: rank.get(s, -1)),
            seen[box.slug]["done"],
            len(seen[box.slug]["states"]),
        )
        for box in picture.boxes
    ]
    return picture, nodes

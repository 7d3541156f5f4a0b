"""The rollback page's plan picture (rollbacks/diagram.py plan_picture): pure, no database."""

from rollbacks.diagram import BOX_W, plan_picture
from rollbacks.planning import Before, Tandem


def test_each_system_is_one_box_in_its_stage_with_its_most_urgent_state():
    stages = [
        [("flags", "succeeded")],
        [
            ("orders", "succeeded"),
            ("orders", "failed"),
            ("orders", "pending"),
            ("cache", "running"),
        ],
        [("billing", "skipped"), ("billing", "succeeded")],
    ]
    edges = [Before("flags", "orders"), Tandem("orders", "cache"), Before("orders", "billing")]
    picture, nodes = plan_picture(stages, edges)
    by_slug = {node.box.slug: node for node in nodes}
    assert [by_slug[s].box.stage for s in ("flags", "orders", "cache", "billing")] == [1, 2, 2, 3]
    assert by_slug["orders"].state == "failed" and by_slug["orders"].done == 1
    assert by_slug["orders"].total == 3
    assert by_slug["cache"].state == "running"
    assert by_slug["billing"].state == "skipped" and by_slug["billing"].done == 2
    assert by_slug["orders"].label == "orders: 1 of 3 steps done, failed"
    assert len(picture.arrows) == 3 and sum(a.is_tandem for a in picture.arrows) == 1
    before = next(a for a in picture.arrows if "flags" in a.label)
    assert before.x1 == by_slug["flags"].box.x + BOX_W and before.x2 == by_slug["orders"].box.x
    assert picture.width > 3 * BOX_W and picture.stage_count == 3


def test_edges_to_systems_outside_the_plan_are_not_drawn():
    picture, nodes = plan_picture([[("a", "pending")]], [Before("a", "zzz"), Tandem("a", "b")])
    assert [n.box.slug for n in nodes] == ["a"] and picture.arrows == []

"""lsp/edits.py: which spans each edit command regenerates, and how answers map back to text edits."""

import pytest

from lsp.edits import (
    HOLE_MARKER,
    EditPlanError,
    no_worse,
    plan_complete_block,
    plan_fill_holes,
    plan_rewrite,
    text_edits,
)


def engine_view(plan):
    """Each region's surroundings as the engine sees them: (text before, region's own text, text after)."""
    return [(plan.text[: r.start], plan.text[r.start: r.end], plan.text[r.end:]) for r in plan.regions]


def test_fill_holes_removes_markers_from_the_engine_view_and_targets_them_exactly():
    src = "a = <FILL_ME>\nb = <FILL_ME>\nc = 3\n"
    plan = plan_fill_holes(src, [], 64)
    assert plan.text == "a = \nb = \nc = 3\n"
    assert [(t.start, t.end) for t in plan.targets] == [(4, 13), (18, 27)]
    assert all(src[t.start: t.end] == HOLE_MARKER for t in plan.targets)
    assert [(r.start, r.end, r.mode) for r in plan.regions] == [(4, 4, "fill"), (9, 9, "fill")]


def test_selections_are_regions_and_absorb_the_markers_inside_them():
    src = "a = <FILL_ME>\nb = f(<FILL_ME>)\nc = 3\n"
    b0 = src.index("f(")
    plan = plan_fill_holes(src, [(b0, b0 + 12), (b0 + 2, b0 + 5), (len(src) - 2, len(src) - 2)], 64)
    assert [(t.start, t.end) for t in plan.targets] == [(4, 13), (b0, b0 + 12), (len(src) - 2, len(src) - 2)]
    before, own, _ = engine_view(plan)[1]
    assert own == "f(<FILL_ME>)" and before == "a = \nb = "  # the range keeps its text as the engine's original


def test_a_cursor_on_a_marker_is_that_marker_not_a_second_hole():
    src = "x = <FILL_ME>\ny = 1\n"
    for cursor in (4, 8, 13):  # at the marker's start, inside it, at its end
        plan = plan_fill_holes(src, [(cursor, cursor)], 64)
        assert [(t.start, t.end) for t in plan.targets] == [(4, 13)] and len(plan.regions) == 1
    plan = plan_fill_holes(src, [(18, 18)], 64)  # a cursor elsewhere is a hole of its own
    assert [(t.start, t.end) for t in plan.targets] == [(4, 13), (18, 18)]


def test_no_holes_and_too_many_holes_are_plain_errors():
    with pytest.raises(EditPlanError, match="FILL_ME"):
        plan_fill_holes("x = 1\n", [], 64)
    with pytest.raises(EditPlanError, match="at most 64"):
        plan_fill_holes("x = <FILL_ME>\n" * 65, [], 64)


def test_rewrite_takes_whole_lines_from_the_newline_before_them():
    src = "x = 1\ny = 2\nz = 3\n"
    plan = plan_rewrite(src, src.index("= 2"), src.index("z"), False, 64)  # ends at column 0 of line 3
    (t,) = plan.targets
    assert src[t.start: t.end] == "\ny = 2" and t.newline_first
    assert plan.regions[0].mode == "revise"
    assert plan_rewrite(src, 0, 3, True, 64).targets[0].start == 0  # the first line has no newline before it
    assert plan_rewrite(src, 0, 3, True, 64).regions[0].mode == "fill"
    with pytest.raises(EditPlanError, match="blank"):
        plan_rewrite("x = 1\n\n\ny = 2\n", 7, 7, False, 64)


def test_rewrite_answers_map_to_whole_lines_and_must_start_a_line():
    src = "x = 1\ny = 2\nz = 3\n"
    plan = plan_rewrite(src, 6, 8, True, 64)
    assert text_edits(plan, ["\ny = 20"], [True]) == [(6, 11, "y = 20")]  # from column 0, newline kept
    assert text_edits(plan, ["y = 20"], [True]) == []  # would join line 1
    assert text_edits(plan, ["\ny = 20"], [False]) == []  # unchanged regions give no edit


@pytest.mark.parametrize("language, src, cursor, span, indent", [
    # cursor on a body line: new lines after the body's last statement
    ("python", "def mean(xs):\n    total = 0\n\n\nprint(1)\n", "total", "total = 0", 4),
    # cursor on the header line finds its own body
    ("python", "def mean(xs):\n    total = 0\n", "def", "total = 0", 4),
    # a nested block: the innermost
    ("python", "class A:\n    def f(self):\n        y = 1\n\n    z = 2\n", "y = 1", "y = 1", 8),
    # JavaScript: after the last statement, before the closing brace
    ("javascript", "function f(a) {\n  const b = 1;\n}\n", "const", "const b = 1;", 2),
])
def test_complete_block_writes_after_the_last_statement(language, src, cursor, span, indent):
    plan = plan_complete_block(language, src, src.index(cursor), 128)
    (t,) = plan.targets
    assert t.start == t.end == src.index(span) + len(span)
    assert t.newline_first and t.scope_indent == indent


def test_complete_block_replaces_a_placeholder_body_and_fills_an_empty_one():
    src = "def f(x):\n    pass\n"
    (t,) = plan_complete_block("python", src, 0, 128).targets
    assert src[t.start: t.end] == "\n    pass"
    src = "def f(x):\n"
    (t,) = plan_complete_block("python", src, 0, 128).targets
    assert (t.start, t.end, t.scope_indent) == (9, 9, 4)


def test_complete_block_answer_is_cut_where_it_leaves_the_block():
    src = "def mean(xs):\n    total = 0\n\n\nprint(1)\n"
    plan = plan_complete_block("python", src, src.index("total"), 128)
    answer = "\n    for x in xs:\n        total += x\n    return total\nprint(mean([1]))"
    ((a, b, text),) = text_edits(plan, [answer], [True])
    assert a == b == src.index("total = 0") + 9
    assert text == "\n    for x in xs:\n        total += x\n    return total"


def test_complete_block_needs_a_block_and_a_grammar():
    with pytest.raises(EditPlanError, match="not inside a block"):
        plan_complete_block("python", "x = 1\n", 0, 128)
    with pytest.raises(EditPlanError, match="grammar"):
        plan_complete_block("cobol", "x", 0, 128)


def test_no_worse_drops_only_the_edit_that_breaks_the_file():
    src = "x = 1\ny = 2\n"
    edits = [(4, 5, "foo(1)"), (10, 11, "((((")]
    assert no_worse("python", src, edits) == [(4, 5, "foo(1)")]

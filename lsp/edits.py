"""Multi-line edits: what to regenerate for each command, and how the engine's answer becomes text edits.
Pure functions over the document's text (str offsets, Unicode code points); torch-free.

- Fill holes: every `HOLE_MARKER` in the file, plus each range the client sends (multiple selections; an
  empty range is an insertion point). The markers are removed from what the engine sees, so each hole's
  context is the code around it with the other holes empty.
- Rewrite: the whole lines a range touches. `revise` (default) re-masks only the tokens the model finds
  unlikely; `fill` regenerates the lines.
- Complete block: the innermost tree-sitter block around the cursor (a Python `block`, a JS/TS
  `statement_block` or `class_body`). A body that is only `pass` / `...` is replaced; otherwise new lines
  go after the body's last statement. The answer is cut where it would leave the block's indentation.

Regions never start at column 0 after a newline: the byte-level BPE merges a newline with the indentation
after it into one token, so a middle that has to start with bare indentation asks for a token sequence the
model never saw (measured: regenerated lines always came back empty). A region of whole lines therefore
starts at the end of the line before them (its text starts with that newline), and new lines are written
as "\n" + code from the end of the last line kept.

`Plan` holds the engine's view (`text`, `regions`) and, per region, the `Target` span of the user's
document it replaces; `text_edits` maps the answer back and keeps only changed regions, and `no_worse`
reverts edits until the document has no more syntax errors than before (fim_server.shared.syntax).
"""

from __future__ import annotations

from dataclasses import dataclass

from fim_server.shared import syntax
from fim_server.shared.protocol import MAX_REGIONS, EditRegion

HOLE_MARKER = "<FILL_ME>"  # the placeholder for a hole (Code Llama's infilling placeholder, familiar to users)
_BLOCKS = ("block", "statement_block", "class_body")
_INDENT_UNIT = {"python": "    "}  # others: two spaces (JS/TS convention)


class EditPlanError(ValueError):
    """Nothing to do, said in words a user can act on."""


@dataclass(frozen=True)
class Target:
    """A span [start, end) of the user's document that the model's text replaces."""

    start: int
    end: int
    scope_indent: int | None = None  # model lines indented less than this leave the block: cut there
    newline_first: bool = False  # the region starts at a line's end: its text must start with "\n"


@dataclass(frozen=True)
class Plan:
    label: str
    text: str  # what the engine sees
    regions: tuple[EditRegion, ...]  # in `text` offsets
    targets: tuple[Target, ...]  # per region, in the document's offsets


def _line_start(source: str, offset: int) -> int:
    return source.rfind("\n", 0, offset) + 1


def _line_end(source: str, offset: int) -> int:
    nl = source.find("\n", offset)
    return len(source) if nl < 0 else nl


def _indent_of(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def _build(source: str, spans: list[tuple[int, int, bool, str, int]]) -> tuple[str, tuple[EditRegion, ...]]:
    """Engine text and regions from (start, end, keep_original, mode, max_tokens), sorted and disjoint; a
    span whose original is not kept (a hole marker) is empty in the engine's text."""
    parts, regions, at, n = [], [], 0, 0
    for start, end, keep, mode, max_tokens in spans:
        inner = source[start:end] if keep else ""
        parts.append(source[at:start])
        n += start - at
        regions.append(EditRegion(n, n + len(inner), mode, max_tokens))
        parts.append(inner)
        n += len(inner)
        at = end
    parts.append(source[at:])
    return "".join(parts), tuple(regions)


def plan_fill_holes(source: str, ranges: list[tuple[int, int]], max_tokens: int) -> Plan:
    """Every HOLE_MARKER plus the given (start, end) ranges; a marker a range overlaps belongs to the range,
    and an empty range (a cursor) on a marker or at its edge is that marker's hole."""
    markers = []
    at = source.find(HOLE_MARKER)
    while at >= 0:
        markers.append((at, at + len(HOLE_MARKER)))
        at = source.find(HOLE_MARKER, at + len(HOLE_MARKER))
    merged: list[list[int]] = []
    for a, b in sorted(ranges):
        if a == b and any(m0 <= a <= m1 for m0, m1 in markers):
            continue
        if merged and (a < merged[-1][1] or a == merged[-1][0]):
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    spans = [(a, b, True) for a, b in merged]
    spans += [(m0, m1, False) for m0, m1 in markers if not any(m0 < b and a < m1 for a, b in merged)]
    if not spans:
        raise EditPlanError(f"no holes: put {HOLE_MARKER} where code is missing, or select the code to fill")
    spans.sort()
    if len(spans) > MAX_REGIONS:
        raise EditPlanError(f"{len(spans)} holes: at most {MAX_REGIONS} are filled at once")
    rows = [(a, b, keep, "fill", _fill_budget(source[a:b] if keep else "", max_tokens))
            for a, b, keep in spans]
    text, regions = _build(source, rows)
    n = len(spans)
    return Plan(f"Diffill: fill {n} hole{'s' if n != 1 else ''}", text, regions,
                tuple(Target(a, b) for a, b, _ in spans))


def _fill_budget(original: str, max_tokens: int) -> int:
    """Tokens for regenerating `original`: room for about twice its length (~3.5 characters a token)."""
    return min(512, max(max_tokens, len(original) * 4 // 7))


def plan_rewrite(source: str, start: int, end: int, regenerate_all: bool, max_tokens: int) -> Plan:
    """The whole lines [start, end] touches (an end at column 0 of a later line does not take that line),
    with the newline before them (see the module docstring)."""
    if end > start and end == _line_start(source, end):
        end -= 1
    a, b = _line_start(source, start), _line_end(source, end)
    if not source[a:b].strip():
        raise EditPlanError("nothing to rewrite: the selected lines are blank")
    a = max(0, a - 1)
    mode = "fill" if regenerate_all else "revise"
    text, regions = _build(source, [(a, b, True, mode, _fill_budget(source[a:b], max_tokens))])
    return Plan("Diffill: " + ("regenerate" if regenerate_all else "rewrite") + " selection", text, regions,
                (Target(a, b, newline_first=a > 0),))


def enclosing_block(language: str | None, source: str, offset: int):
    """The innermost block node around `offset` (or whose header holds it), as a tree-sitter node."""
    parsed = syntax.parse(language, source)
    if parsed is None:
        raise EditPlanError(f"complete block needs a tree-sitter grammar; none for {language!r}")
    start = _line_start(source, offset)
    line = source[start: _line_end(source, offset)]
    data, root = parsed.data, parsed.tree.root_node
    if line.strip():  # from the line's first token: a header line finds its own body
        at = len(source[: start + len(_indent_of(line))].encode("utf-8", "surrogatepass"))
        node = root.descendant_for_byte_range(at, at)
    else:  # a blank line belongs to the code above it
        at = len(source[:start].rstrip().encode("utf-8", "surrogatepass"))
        node = root.descendant_for_byte_range(max(0, at - 1), at)
    while node is not None:
        if node.type in _BLOCKS:
            return node, data
        body = [c for c in node.children if c.type in _BLOCKS and c.start_byte >= at - 1]
        if body:
            return body[0], data
        node = node.parent
    raise EditPlanError("the cursor is not inside a block (function, class, if/for/while/with/try body)")


def plan_complete_block(language: str | None, source: str, offset: int, max_tokens: int) -> Plan:
    block, data = enclosing_block(language, source, offset)

    def char(byte: int) -> int:
        return len(data[:byte].decode("utf-8", "surrogatepass"))

    key = syntax.normalize_language(language)
    unit = _INDENT_UNIT.get(key, "  ")
    head = _line_start(source, char(block.parent.start_byte if block.parent else block.start_byte))
    header = source[head: _line_end(source, head)]
    stmts = [c for c in block.named_children if c.type != "comment"]
    if stmts:
        first = char(stmts[0].start_byte)
        indent = _indent_of(source[_line_start(source, first): first] + "x")
    else:
        indent = _indent_of(header) + unit
    only = stmts[0] if len(stmts) == 1 else None
    if only is not None and (only.type == "pass_statement" or only.type == "expression_statement" and
                             source[char(only.start_byte): char(only.end_byte)].strip() == "..."):
        b = char(only.end_byte)  # the placeholder body is replaced, from the end of the line before it
        a = max(char(block.parent.start_byte) if block.parent else 0, _line_start(source, char(only.start_byte)) - 1)
    else:
        a = char(stmts[-1].end_byte) if stmts else char(block.end_byte)
        if block.type != "block" and not stmts:  # `{` ... `}`: after the opening brace
            a = char(block.children[0].end_byte) if block.children else a
        b = a
    text, regions = _build(source, [(a, b, False, "fill", max_tokens)])
    return Plan("Diffill: complete block", text, regions, (Target(a, b, len(indent), newline_first=True),))


def _keep_in_scope(text: str, scope_indent: int | None) -> str:
    if scope_indent is None:
        return text
    kept = []
    for i, line in enumerate(text.split("\n")):
        if i > 0 and line.strip() and len(_indent_of(line)) < scope_indent:
            break
        kept.append(line)
    return "\n".join(kept).rstrip()


def text_edits(plan: Plan, new_texts: list[str], changed: list[bool]) -> list[tuple[int, int, str]]:
    """(start, end, new text) in the document's offsets for each region the engine changed."""
    out = []
    for target, text, did in zip(plan.targets, new_texts, changed):
        if not did:
            continue
        start = target.start
        if target.newline_first:
            if not text.startswith("\n"):
                continue  # it would join the line it starts on
            if target.start < target.end:  # whole lines replaced: keep the newline, edit from column 0
                text, start = text[1:], start + 1
        text = _keep_in_scope(text, target.scope_indent)
        if not text.strip():
            continue
        out.append((start, target.end, text))
    return out


def no_worse(language: str | None, source: str, edits: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """The edits minus those that must be reverted for the document to keep at most the errors it had."""
    keep, _, _ = syntax.revert_until_no_worse(language, source, [(a, b) for a, b, _ in edits],
                                              [t for _, _, t in edits])
    return [e for e, k in zip(edits, keep) if k]

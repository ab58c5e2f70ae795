"""Syntax validation of infill candidates with tree-sitter. Torch-free.

Contract: `check(language, prefix, middle, suffix)` parses the document without the candidate (prefix +
suffix, as the user has it) and with it (prefix + middle + suffix), counts syntax errors in each (outermost
ERROR nodes plus MISSING nodes) and says whether the candidate adds any, and where, as character (str index)
spans inside `middle`. `trim_to_valid_lines` gives the longest run of whole leading lines of a candidate that
adds no error. A language without an installed grammar gets `valid=None`: it passes unvalidated and says so.

A candidate is valid when the document has no more errors with it than without. Counting (rather than
matching positions) keeps a document already broken elsewhere (the user is mid-edit) from rejecting every
candidate. Two cases counting misses are rejected as well: an error lying wholly inside the candidate
(tree-sitter may fold a fixed error and a new one into the same count), and a closing bracket in the
candidate that matches no opener before it ("y = " + ")))" stays one ERROR node either way).

Speed: the document without the candidate is parsed once per (language, prefix, suffix) and cached; each
candidate is an incremental re-parse of that tree, so `trim_to_valid_lines` and the engine's repeated
checks of one request do not re-parse the whole file. Grammars load lazily, one Parser per language
(py-tree-sitter holds the GIL while parsing, so the engine thread and the LSP thread may share it).
`count_errors` and `revert_until_no_worse` parse whole documents (edits: the document with all regions).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import TYPE_CHECKING

from fim_server.shared.languages import grammar_key

if TYPE_CHECKING:
    import tree_sitter

_GRAMMARS = {  # grammar key -> (module, function returning the language pointer)
    "python": ("tree_sitter_python", "language"),
    "javascript": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "tsx": ("tree_sitter_typescript", "language_tsx"),
}
_STRINGY = ("string", "comment", "template_string", "regex", "jsx_text")  # where brackets are not code
_SCAN_CHARS = 20_000  # how far back into the prefix the bracket scan looks for openers


normalize_language = grammar_key  # LSP language id or alias -> grammar key (fim_server.shared.languages)


@cache
def _parser(key: str) -> tree_sitter.Parser:
    import tree_sitter

    module, function = _GRAMMARS[key]
    return tree_sitter.Parser(tree_sitter.Language(getattr(importlib.import_module(module), function)()))


def supported(language: str | None) -> bool:
    """Is a grammar installed for this language?"""
    key = normalize_language(language)
    if key is None:
        return False
    try:
        _parser(key)
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Verdict:
    valid: bool | None  # None: no grammar for this language (passes unvalidated)
    errors_before: int  # ERROR + MISSING nodes in prefix + suffix (the document as the user has it)
    errors_after: int  # ... in prefix + middle + suffix
    error_spans: tuple[tuple[int, int], ...]  # sorted, disjoint char spans within middle of errors overlapping it


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # editors can send lone surrogates; keep one char each


def _errors(tree: tree_sitter.Tree) -> tuple[tuple[int, int], ...]:
    """Byte spans of outermost ERROR nodes and of MISSING nodes, in document order. Iterative (a TreeCursor,
    no recursion) and skips subtrees without errors, so an almost-valid 1 MB file costs little."""
    out: list[tuple[int, int]] = []
    cur = tree.walk()
    while True:
        node = cur.node
        if node.is_error or node.is_missing:
            out.append((node.start_byte, node.end_byte))  # one report per error subtree
        elif node.has_error and cur.goto_first_child():
            continue
        while not cur.goto_next_sibling():
            if not cur.goto_parent():
                return tuple(out)


def _point(data: bytes, row: int, col: int) -> tuple[int, int]:
    """(row, byte column) after appending `data` at (row, col)."""
    lines = data.count(b"\n")
    return (row, col + len(data)) if lines == 0 else (row + lines, len(data) - data.rfind(b"\n") - 1)


@dataclass(frozen=True)
class _Document:
    """The document as the user has it (prefix + suffix), parsed once."""

    prefix: bytes
    suffix: bytes
    cursor: tuple[int, int]  # (row, byte column) of the insertion point
    tree: tree_sitter.Tree
    errors: tuple[tuple[int, int], ...]


@lru_cache(maxsize=4)  # a few requests in flight; each entry holds one document and its tree
def _document(key: str, prefix: str, suffix: str) -> _Document:
    pb, sb = _encode(prefix), _encode(suffix)
    tree = _parser(key).parse(pb + sb)
    return _Document(pb, sb, _point(pb, 0, 0), tree, _errors(tree))


def _with_middle(key: str, doc: _Document, mb: bytes) -> tree_sitter.Tree:
    """prefix + middle + suffix, re-parsed incrementally from the cached tree (same result as a full parse)."""
    tree = doc.tree.copy()  # edit() mutates; the cached tree is shared
    m0 = len(doc.prefix)
    tree.edit(start_byte=m0, old_end_byte=m0, new_end_byte=m0 + len(mb),
              start_point=doc.cursor, old_end_point=doc.cursor, new_end_point=_point(mb, *doc.cursor))
    return _parser(key).parse(doc.prefix + mb + doc.suffix, old_tree=tree)


def _char_index(data: bytes, byte_offset: int) -> int:
    """str index of a byte offset into UTF-8 `data`: the number of characters that start before it."""
    return byte_offset - sum(1 for b in data[:byte_offset] if b & 0xC0 == 0x80)


def check(language: str | None, prefix: str, middle: str, suffix: str) -> Verdict:
    """Does `middle`, inserted between prefix and suffix, add a syntax error? See the module docstring."""
    key = normalize_language(language)
    if key is None or not supported(key):
        return Verdict(None, 0, 0, ())
    doc = _document(key, prefix, suffix)
    mb = _encode(middle)
    after = _errors(_with_middle(key, doc, mb)) if mb else doc.errors
    m0, m1 = len(doc.prefix), len(doc.prefix) + len(mb)
    # An error wholly inside the middle is the candidate's own whatever the counts say; one that starts in
    # the prefix (an open call the user is typing) may legitimately run through it, and a MISSING node at
    # the middle's end may be a closer the suffix lacks.
    inside = any(m0 <= a and b <= m1 and (a < b or m0 < a < m1) for a, b in after)
    stray = _stray_closer(key, doc, prefix, middle)
    valid = len(after) <= len(doc.errors) and not inside and stray is None
    spans = [] if stray is None else [(stray, stray + 1)]
    for a, b in after:
        if a == b and m0 <= a <= m1 and middle:  # MISSING: the character at (or just before) the gap
            c = min(_char_index(mb, a - m0), len(middle) - 1)
            spans.append((c, c + 1))
        elif a < m1 and b > m0:
            spans.append((_char_index(mb, max(a, m0) - m0), _char_index(mb, min(b, m1) - m0)))
    return Verdict(valid, len(doc.errors), len(after), _merge(spans))


@dataclass(frozen=True)
class Parsed:
    """A whole document parsed: its UTF-8 bytes (tree-sitter offsets are byte offsets into them) and tree."""

    data: bytes
    tree: tree_sitter.Tree

    def char_offset(self, byte: int) -> int:
        """str index of a byte offset into `data`."""
        return _char_index(self.data, byte)


def parse(language: str | None, text: str) -> Parsed | None:
    """The whole document's tree (cached with the checks' parses: editors ask again on every cursor move);
    None without a grammar."""
    key = normalize_language(language)
    if key is None or not supported(key):
        return None
    doc = _document(key, text, "")
    return Parsed(doc.prefix, doc.tree)


def count_errors(language: str | None, text: str) -> int | None:
    """Syntax errors (outermost ERROR nodes + MISSING nodes) in a whole document; None without a grammar."""
    key = normalize_language(language)
    if key is None or not supported(key):
        return None
    return len(_document(key, text, "").errors)


def revert_until_no_worse(language: str | None, text: str, spans: list[tuple[int, int]], new_texts: list[str]
                          ) -> tuple[list[bool], int | None, int | None]:
    """Several regions of `text` (sorted, disjoint str-index spans) replaced by `new_texts` at once: which
    replacements to keep so the document has no more syntax errors than `text`. Regions that add errors on
    their own are reverted first; then, greedily, while it still has more, the one replacement whose revert
    removes the most errors (ties: the later region).
    -> (keep per region, errors before, errors after); without a grammar everything is kept (None, None)."""
    keep = [True] * len(spans)
    before = count_errors(language, text)
    if before is None:
        return keep, None, None

    def compose(keep: list[bool]) -> str:
        out, at = [], 0
        for (a, b), new, k in zip(spans, new_texts, keep):
            out += [text[at:a], new if k else text[a:b]]
            at = b
        return "".join(out) + text[at:]

    after = count_errors(language, compose(keep))
    if after > before and len(spans) > 1:
        # first, revert each region that adds errors on its own (k parses; the greedy loop below costs k
        # parses per revert, which for a 64-region edit of broken answers was thousands of parses)
        for i in range(len(spans)):
            alone = [j == i for j in range(len(spans))]
            if new_texts[i] != text[spans[i][0]: spans[i][1]] and count_errors(language, compose(alone)) > before:
                keep[i] = False
        after = count_errors(language, compose(keep))
    while after > before:
        options = []
        for i in range(len(spans)):
            if keep[i] and new_texts[i] != text[spans[i][0]: spans[i][1]]:
                trial = keep[:i] + [False] + keep[i + 1:]
                options.append((count_errors(language, compose(trial)), -i, trial))
        if not options:
            break  # pragma: no cover - with every region reverted the document is the original
        after, _, keep = min(options, key=lambda o: (o[0], o[1]))
    return keep, before, after


def _merge(spans: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return tuple(out)


_PAIRS = {")": "(", "]": "[", "}": "{"}


def _scan_brackets(key: str, text: str, stack: list[str], *, report: bool) -> int | None:
    """Walk `text` outside strings and comments, pushing openers and popping closers; with `report`,
    return the index of the first closer that matches no opener (else None). Approximate by design (it
    only has to catch runaway closers): regex literals beyond `\\)` and f-string nesting are not modelled."""
    comment = "#" if key == "python" else "//"
    i, n, quote = 0, len(text), None
    while i < n:
        c = text[i]
        if c == "\\":  # an escape in a string; outside one a line continuation or a regex's `\)`
            i += 2
            continue
        if quote is not None:
            if text.startswith(quote, i):
                i += len(quote)
                quote = None
                continue
            if c == "\n" and len(quote) == 1 and quote != "`":
                quote = None  # unterminated single-line string: stop at the line end
        elif text.startswith(comment, i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        elif c in "\"'`":
            triple = text[i:i + 3]
            quote = triple if key == "python" and triple in ('"""', "'''") else c
            i += len(quote)
            continue
        elif c in "([{":
            stack.append(c)
        elif c in _PAIRS:
            if stack and stack[-1] == _PAIRS[c]:
                stack.pop()
            elif report:
                return i
        i += 1
    return None


def _scan_start(doc: _Document, prefix: str) -> int:
    """Where in `prefix` the bracket scan starts: _SCAN_CHARS back, moved past a string or comment the cut
    would land in (tree-sitter knows where they are), so the scan does not start with quotes inverted."""
    start = max(0, len(prefix) - _SCAN_CHARS)
    if start == 0:
        return 0
    at = len(doc.prefix) - len(_encode(prefix[start:]))
    node = doc.tree.root_node.descendant_for_byte_range(at, at)
    end = at
    while node is not None:
        if node.type in _STRINGY and node.start_byte < at:
            end = max(end, node.end_byte)
        node = node.parent
    return start + len(doc.prefix[at:end].decode("utf-8", "surrogatepass")) if end <= len(doc.prefix) \
        else len(prefix)


def _stray_closer(key: str, doc: _Document, prefix: str, middle: str) -> int | None:
    """Character index in `middle` of a closing bracket with no matching opener in prefix + middle."""
    if not any(c in middle for c in _PAIRS):
        return None
    stack: list[str] = []
    _scan_brackets(key, prefix[_scan_start(doc, prefix):], stack, report=False)
    return _scan_brackets(key, middle, stack, report=True)


def trim_to_valid_lines(language: str | None, prefix: str, middle: str, suffix: str) -> str | None:
    """Longest run of whole leading lines of `middle` that adds no syntax error (the whole middle first, then
    cut before each '\\n' from the last); None when no non-blank run is valid. Unsupported languages get
    `middle` back unchanged."""
    if not supported(language):
        return middle
    cuts = [len(middle)] + [i for i in range(len(middle) - 1, -1, -1) if middle[i] == "\n"]
    for cut in cuts:
        run = middle[:cut]
        if run.strip() and check(language, prefix, run, suffix).valid:
            return run
    return None


# ---- names a rewrite may not break ---------------------------------------------------------------------------
_WORD = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_PARAMETER_LISTS = ("parameters", "lambda_parameters", "formal_parameters")
_BINDING_FIELDS = ("name", "alias", "pattern")
_ASSIGNMENTS = ("assignment", "augmented_assignment", "for_statement", "for_in_statement")  # their `left` binds


def words(text: str) -> set[str]:
    """Every identifier-like word of `text` (strings and comments included: a name mentioned there counts)."""
    return set(_WORD.findall(text))


def _is_binding(node) -> bool:
    parent = node.parent
    if parent is None:
        return False
    if parent.type in _PARAMETER_LISTS or any(parent.child_by_field_name(f) == node for f in _BINDING_FIELDS):
        return True
    return parent.type in _ASSIGNMENTS and parent.child_by_field_name("left") == node


def _identifiers(language: str | None, text: str, start: int = 0, end: int | None = None):
    """(name, bound) for each identifier node within text[start:end] (tree-sitter); None without a grammar.
    `bound`: the node binds or declares the name (a function's, class's or keyword argument's name, a
    parameter, the target of an assignment or a loop, an import alias)."""
    parsed = parse(language, text)
    if parsed is None:
        return None
    b0 = len(text[:start].encode("utf-8", "surrogatepass"))
    b1 = len(parsed.data) if end is None else len(text[:end].encode("utf-8", "surrogatepass"))
    out, stack = [], [parsed.tree.root_node]
    while stack:
        node = stack.pop()
        if node.end_byte <= b0 or node.start_byte >= b1:
            continue
        stack.extend(node.children)
        if node.type == "identifier" and node.start_byte >= b0 and node.end_byte <= b1:
            out.append((node.text.decode("utf-8", "replace"), _is_binding(node)))
    return out


_FUNCTIONS = ("function_definition", "function_declaration", "method_definition", "arrow_function",
              "function_expression", "generator_function_declaration", "lambda")


def _enclosing_function(language: str | None, text: str, start: int, end: int) -> tuple[int, int]:
    """The str span of the innermost function around text[start:end]; the whole text when there is none."""
    parsed = parse(language, text)
    if parsed is None:
        return 0, len(text)
    b0 = len(text[:start].encode("utf-8", "surrogatepass"))
    b1 = len(text[:end].encode("utf-8", "surrogatepass"))
    node = parsed.tree.root_node.descendant_for_byte_range(b0, max(b0, b1 - 1))
    while node is not None and node.type not in _FUNCTIONS:
        node = node.parent
    if node is None:
        return 0, len(text)
    return parsed.char_offset(node.start_byte), parsed.char_offset(node.end_byte)


def bound_names(language: str | None, text: str, start: int, end: int) -> set[str]:
    """Names that `text[start:end]` binds or declares (empty without a grammar)."""
    return {name for name, bound in _identifiers(language, text, start, end) or () if bound}


def rewrite_breaks_names(language: str | None, text: str, start: int, end: int, new: str) -> str | None:
    """Why replacing `text[start:end]` by `new` would break the file's names, or None: it introduces a name
    used nowhere else in the file (a rename or a typo), drops a name the region binds while the rest of the
    file still uses it, or drops the last use of a name defined in the function around the region (a
    parameter or a variable left unused)."""
    old, rest = text[start:end], text[:start] + "\n" + text[end:]
    seen, kept, elsewhere = words(old), words(new), words(rest)
    introduced = sorted(w for w in kept - seen if w not in elsewhere)
    if introduced:
        return f"introduces {introduced[0]!r}, used nowhere else in the file"
    dropped = sorted(w for w in bound_names(language, text, start, end) - kept if w in elsewhere)
    if dropped:
        return f"drops {dropped[0]!r}, which the rest of the file still uses"
    used = {name for name, bound in _identifiers(language, text, start, end) or () if not bound}
    if used:  # is a name the region used now defined and never used, in the function around the region?
        f0, f1 = _enclosing_function(language, text, start, end)
        after = _identifiers(language, text[:start] + new + text[end:], f0, f1 + len(new) - (end - start)) or ()
        total: dict[str, int] = {}
        uses: dict[str, int] = {}
        for name, bound in after:
            total[name] = total.get(name, 0) + 1
            uses[name] = uses.get(name, 0) + (not bound)
        unused = sorted(w for w in used if total.get(w) and not uses.get(w))
        if unused:
            return f"leaves {unused[0]!r} defined but never used"
    return None


def prose_spans(language: str | None, prefix: str, middle: str, suffix: str) -> list[tuple[int, int]]:
    """Character spans of `middle` inside comments and string literals (with the document around it in view);
    empty without a grammar."""
    key = normalize_language(language)
    if key is None or not supported(key):
        return []
    data = _encode(prefix + middle + suffix)
    b0 = len(_encode(prefix))
    b1 = b0 + len(_encode(middle))
    out, stack = [], [_parser(key).parse(data).root_node]
    while stack:
        node = stack.pop()
        if node.end_byte <= b0 or node.start_byte >= b1:
            continue
        if node.type in _STRINGY:
            a, b = max(node.start_byte, b0), min(node.end_byte, b1)
            out.append((_char_index(data, a) - len(prefix), _char_index(data, b) - len(prefix)))
            continue
        stack.extend(node.children)
    return sorted(out)

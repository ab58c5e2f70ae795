"""Syntax validation of infill candidates with tree-sitter. Torch-free.

Contract: `check(language, prefix, middle, suffix)` parses the document with and without the candidate and
says whether the candidate adds syntax errors (ERROR or MISSING nodes) that the document did not already
have, and where, as character spans inside `middle`. `trim_to_valid_lines` gives the longest run of whole
leading lines of a candidate that adds no error. A language without an installed grammar gets
`valid=None`: it passes unvalidated and the result says so.

A candidate is valid when the document has no more errors with it than without, and no error lies wholly
inside the candidate. Counting (rather than matching positions) keeps a document that is already broken
elsewhere (the user is mid-edit) from rejecting every candidate. Grammars load lazily, once per language.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

_ALIASES = {
    "python": "python", "py": "python", "python3": "python",
    "javascript": "javascript", "js": "javascript", "javascriptreact": "javascript", "jsx": "javascript",
    "typescript": "typescript", "ts": "typescript",
    "typescriptreact": "tsx", "tsx": "tsx",
}


def normalize_language(language: str | None) -> str | None:
    return None if language is None else _ALIASES.get(language.strip().lower())


@cache
def _parser(key: str):
    import tree_sitter

    if key == "python":
        import tree_sitter_python as mod

        lang = mod.language()
    elif key == "javascript":
        import tree_sitter_javascript as mod

        lang = mod.language()
    else:
        import tree_sitter_typescript as mod

        lang = mod.language_tsx() if key == "tsx" else mod.language_typescript()
    return tree_sitter.Parser(tree_sitter.Language(lang))


def supported(language: str | None) -> bool:
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
    valid: bool | None  # None: no grammar for this language
    errors_before: int  # ERROR + MISSING nodes in prefix + suffix
    errors_after: int  # ... in prefix + middle + suffix
    error_spans: tuple[tuple[int, int], ...]  # character spans within middle of errors overlapping it


def _errors(key: str, data: bytes) -> list[tuple[int, int]]:
    """Byte spans of ERROR and MISSING nodes; subtrees without errors are skipped."""
    tree = _parser(key).parse(data)
    out: list[tuple[int, int]] = []
    cur = tree.walk()
    while True:
        node = cur.node
        if node.is_error or node.is_missing:
            out.append((node.start_byte, node.end_byte))
            descend = False  # one report per error subtree
        else:
            descend = node.has_error
        if descend and cur.goto_first_child():
            continue
        while not cur.goto_next_sibling():
            if not cur.goto_parent():
                return out


def check(language: str | None, prefix: str, middle: str, suffix: str) -> Verdict:
    key = normalize_language(language)
    if key is None or not supported(key):
        return Verdict(None, 0, 0, ())
    pb, mb = prefix.encode("utf-8", "surrogatepass"), middle.encode("utf-8", "surrogatepass")
    before = _errors(key, pb + suffix.encode("utf-8", "surrogatepass"))
    after = _errors(key, pb + mb + suffix.encode("utf-8", "surrogatepass"))
    m0, m1 = len(pb), len(pb) + len(mb)
    # An error lying wholly inside the middle is the candidate's own, whatever the counts say; one that
    # starts in the prefix (an open call the user is typing) may legitimately run through it.
    inside = [(a, b) for a, b in after if m0 <= a and b <= m1 and (a < b or m0 < a < m1)]
    touching = [(a, b) for a, b in after if b >= m0 and a <= m1]
    valid = len(after) <= len(before) and not inside
    spans = []
    for a, b in (inside or touching):
        lo, hi = max(a, m0) - m0, min(max(b, a + 1), m1) - m0
        spans.append((_char_index(mb, lo), _char_index(mb, max(lo, hi))))
    # tree-sitter folds a stray closer into the error of the statement being typed ("y = " + ")))"): a
    # closer that matches no opener before it is the candidate's own error whatever the counts say
    stray = stray_closer(key, prefix, middle)
    if stray is not None:
        valid = False
        spans = [(stray, stray + 1), *spans]
    return Verdict(valid, len(before), len(after), tuple(spans))


_PAIRS = {")": "(", "]": "[", "}": "{"}


def _scan_brackets(key: str, text: str, stack: list[str], *, report: bool) -> int | None:
    """Walk `text` outside strings and comments, pushing openers and popping closers; with `report`,
    return the index of the first closer that matches no opener (else None). Approximate by design:
    good enough to catch runaway closers; f-string braces and regex literals are not modelled."""
    comment = "#" if key == "python" else "//"
    i, n, quote = 0, len(text), None
    while i < n:
        c = text[i]
        if quote is not None:
            if c == "\\":
                i += 2
                continue
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


def stray_closer(language: str | None, prefix: str, middle: str) -> int | None:
    """Character index in `middle` of a closing bracket with no matching opener in prefix + middle."""
    key = normalize_language(language)
    if key is None:
        return None
    stack: list[str] = []
    _scan_brackets(key, prefix[-20_000:], stack, report=False)
    return _scan_brackets(key, middle, stack, report=True)


def _char_index(data: bytes, byte_offset: int) -> int:
    return len(data[:byte_offset].decode("utf-8", "ignore"))


def trim_to_valid_lines(language: str | None, prefix: str, middle: str, suffix: str) -> str | None:
    """Longest run of whole leading lines of `middle` that adds no syntax error (the whole middle first);
    None when no non-blank run is valid. Unsupported languages get `middle` back unchanged."""
    if not supported(language):
        return middle
    cuts = [len(middle)] + [i for i in range(len(middle) - 1, -1, -1) if middle[i] == "\n"]
    for cut in cuts:
        cand = middle[:cut]
        if not cand.strip():
            continue
        if check(language, prefix, cand, suffix).valid:
            return cand
    return None

"""What to ask the engine for at a cursor, and how to shape its answer for ghost text. Pure functions.

Single- vs multi-line:
- inside a string or a comment (tree-sitter says so), or with code after the cursor on its line: the rest
  of the line, one line at most;
- at the end of a line that opens a block (':' in Python, '{' '(' '[' anywhere) or on a blank line: a
  multi-line completion, kept to the block being written (its indentation scope);
- at the end of an ordinary line: the rest of that line.
Post-processing: whitespace-only answers are dropped; closing brackets the rest of the line already has
are not repeated; a multi-line answer stops where it would leave the block's indentation or repeat the
code that follows the cursor.
"""

from __future__ import annotations

BLOCK_OPENERS = (":", "{", "(", "[")
_CLOSERS = {")": "(", "]": "[", "}": "{"}
_STRINGY = ("string", "string_content", "comment", "template_string", "string_fragment")


def _line_after(suffix: str) -> str:
    nl = suffix.find("\n")
    return suffix if nl < 0 else suffix[:nl]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def in_string_or_comment(language: str | None, prefix: str, suffix: str) -> bool:
    """tree-sitter: is the cursor inside a string literal or a comment?"""
    from fim_server.shared import syntax  # torch-free

    key = syntax.normalize_language(language)
    if key is None or not syntax.supported(key):
        return False
    data = (prefix + suffix).encode("utf-8", "surrogatepass")
    at = len(prefix.encode("utf-8", "surrogatepass"))
    node = syntax._parser(key).parse(data).root_node.descendant_for_byte_range(max(0, at - 1), at)
    while node is not None:
        if node.type in _STRINGY and node.start_byte < at and (node.end_byte > at or node.type == "comment"):
            return True
        node = node.parent
    return False


def wants_multiline(prefix: str, suffix: str, language: str | None = None) -> bool:
    line_before = prefix[prefix.rfind("\n") + 1:]
    if _line_after(suffix).strip():
        return False
    if language is not None and in_string_or_comment(language, prefix, suffix):
        return False
    stripped = line_before.rstrip()
    return not stripped.strip() or stripped.endswith(BLOCK_OPENERS)


def body_indent(prefix: str) -> int | None:
    """Indentation the completed block's lines must keep: deeper than the opener's line, or the current
    blank line's own. None when unknown."""
    lines = prefix.split("\n")
    cur = lines[-1]
    if not cur.strip():
        return len(cur)
    if cur.rstrip().endswith(BLOCK_OPENERS):
        return _indent(cur) + 1
    return None


def balance_closers(text: str, prefix: str, line_after: str) -> str:
    """Drop trailing closers of `text` that the rest of the line already supplies, so accepting the ghost
    text does not leave `foo(x))`."""
    stack: list[str] = []
    for c in prefix[prefix.rfind("\n") + 1:] + text:
        if c in "([{":
            stack.append(c)
        elif c in _CLOSERS and stack and stack[-1] == _CLOSERS[c]:
            stack.pop()
    after = line_after.lstrip()
    # openers still open after text, against the closers the rest of the line starts with
    needed = len(stack)
    supplied = len(after) - len(after.lstrip(")]}"))
    excess = max(0, supplied - needed)
    while excess and text.rstrip() and text.rstrip()[-1] in _CLOSERS:
        text = text.rstrip()[:-1]
        excess -= 1
    return text


def shape(text: str, prefix: str, suffix: str, multiline: bool) -> str:
    """The text to show, or "" for nothing."""
    line_after = _line_after(suffix)
    if not multiline:
        text = text.split("\n", 1)[0]
        if not line_after.strip():
            text = text.rstrip()
        elif text.endswith(line_after.strip()):
            text = text[: len(text) - len(line_after.strip())]  # the suffix already has that
        text = balance_closers(text, prefix, line_after)
    else:
        lines = text.rstrip().split("\n")
        following = [ln for ln in suffix.split("\n")[1:] if ln.strip()]
        nxt = following[0].strip() if following else None
        scope = body_indent(prefix)
        kept = [lines[0]]
        for ln in lines[1:]:
            if nxt is not None and ln.strip() == nxt:
                break  # the code that follows already says this
            if scope is not None and ln.strip() and _indent(ln) < scope:
                break  # left the block being written
            kept.append(ln)
        text = "\n".join(kept).rstrip()
    return text if text.strip() else ""

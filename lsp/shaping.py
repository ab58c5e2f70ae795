"""What to ask the engine for at a cursor, and how to shape its answer for ghost text. Pure functions.

- Mid-line (non-blank text after the cursor on its line): the rest of the line, one line at most.
- End of a line that opens a block (ends with ':' / '{' / '(' / '[') or on a blank line: multi-line.
- Otherwise (end of an ordinary line): the rest of that line.
Post-processing drops whitespace-only answers, answers that only repeat the text already after the cursor,
and trailing lines that repeat the suffix's next line; multi-line answers lose trailing blank lines.
"""

from __future__ import annotations

BLOCK_OPENERS = (":", "{", "(", "[")


def wants_multiline(prefix: str, suffix: str) -> bool:
    line_before = prefix[prefix.rfind("\n") + 1:]
    nl = suffix.find("\n")
    line_after = suffix if nl < 0 else suffix[:nl]
    if line_after.strip():
        return False
    stripped = line_before.rstrip()
    return not stripped.strip() or stripped.endswith(BLOCK_OPENERS)


def shape(text: str, prefix: str, suffix: str, multiline: bool) -> str:
    """The text to show, or "" for nothing."""
    nl = suffix.find("\n")
    line_after = suffix if nl < 0 else suffix[:nl]
    if not multiline:
        text = text.split("\n", 1)[0].rstrip() if not line_after.strip() else text.split("\n", 1)[0]
        if line_after.strip() and text.endswith(line_after.strip()):
            text = text[: len(text) - len(line_after.strip())]  # the suffix already has that
    else:
        lines = text.rstrip().split("\n")
        following = [ln for ln in suffix.split("\n")[1:] if ln.strip()]
        if following:  # stop before repeating the code that already follows
            nxt = following[0].strip()
            for i, ln in enumerate(lines):
                if i > 0 and ln.strip() == nxt:
                    lines = lines[:i]
                    break
        text = "\n".join(lines).rstrip()
    return text if text.strip() else ""

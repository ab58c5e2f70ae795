"""What becomes of a finished candidate, for every decoder (the diffusion engine and the autoregressive
baseline alike), so pass@1 compares models and not post-processing. Torch-free.

Contract: `repair_positions` names the middle's tokens to re-mask around tree-sitter error spans (the
diffusion engine's one repair: denoise them again with both sides in view). `settle` gives the text a caller
sees: valid as it is; else its longest valid run of whole leading lines ("trim"); else nothing ("drop"). A
region that had text (an edit) is never cut short: it is dropped, and the caller keeps the original. Text
already streamed (`floor`) is never taken back.
"""

from __future__ import annotations

from fim_server.shared import syntax


def repair_positions(token_spans: list[tuple[int, int]], error_spans: tuple[tuple[int, int], ...]) -> list[int]:
    """Token indices overlapping any error span (character spans within the middle), with one token either
    side, sorted. `token_spans` are the tokens' character spans within the middle."""
    hit = set()
    for a, b in error_spans:
        for i, (ta, tb) in enumerate(token_spans):
            if ta < max(b, a + 1) and tb > a:
                hit.update((i - 1, i, i + 1))
    return sorted(i for i in hit if 0 <= i < len(token_spans))


def settle(language: str | None, prefix: str, text: str, suffix: str, *, verdict: syntax.Verdict | None = None,
           keep_original: bool = False, repair: str | None = None, floor: str = "") -> tuple[str, bool | None,
                                                                                          str | None]:
    """-> (text, valid, repair): valid True/False, or None when the language has no grammar (unvalidated).
    `verdict` is the candidate's check if the caller already has it; `repair` what was done before.
    `floor`: a leading part of `text` already streamed to the client, which cannot be taken back: the
    answer is never cut shorter than it (it may then be invalid, and says so)."""
    if not syntax.supported(language):
        return text, None, repair
    verdict = verdict or syntax.check(language, prefix, text, suffix)
    if verdict.valid:
        return text, True, repair
    trimmed = None if keep_original else syntax.trim_to_valid_lines(language, prefix, text, suffix)
    if floor and (trimmed is None or len(trimmed) < len(floor)):
        if floor == text:
            return text, False, repair
        return floor, syntax.check(language, prefix, floor, suffix).valid, "trim"
    if trimmed is not None:
        return trimmed, True, "trim"
    return "", False, "drop"

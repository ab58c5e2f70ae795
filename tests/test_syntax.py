"""tree-sitter validation: what counts as a new error, where it is, trimming, languages."""

from fim_server.shared import syntax


def test_good_completion_of_a_call_is_valid():
    v = syntax.check("python", "foo(a, ", "b)", "\n")
    assert v.valid is True and v.errors_after == 0


def test_candidate_adding_an_error_is_invalid_with_a_span_in_the_middle():
    v = syntax.check("python", "x = foo(1)\ny = ", ")))", "\n")
    assert v.valid is False
    assert v.error_spans and all(0 <= a <= b <= 3 for a, b in v.error_spans)


def test_document_broken_elsewhere_still_accepts_a_good_middle():
    suffix = "\n\ndef broken(:\n    pass\n"
    v = syntax.check("python", "def add(a, b):\n    return ", "a + b", suffix)
    assert v.errors_before >= 1 and v.valid is True


def test_open_call_the_user_is_typing_is_not_blamed_on_the_middle():
    assert syntax.check("python", "print(compute(1, ", "2", "\n").valid is True


def test_trim_keeps_good_lines_and_cuts_a_broken_one():
    out = syntax.trim_to_valid_lines("python", "def f(x):\n", "    y = x + 1\n    return y\n)))", "\n")
    assert out == "    y = x + 1\n    return y"


def test_trim_returns_none_when_nothing_is_valid():
    assert syntax.trim_to_valid_lines("python", "x = 1", ")))", "\n") is None


def test_unsupported_language_passes_unvalidated():
    v = syntax.check("cobol", "a", ")))", "")
    assert v.valid is None
    assert syntax.trim_to_valid_lines("cobol", "a", ")))", "") == ")))"
    assert syntax.check(None, "a", "b", "").valid is None


def test_spans_are_character_offsets_with_non_ascii_text():
    prefix = "s = '🎉中文'\nx = 1"
    v = syntax.check("python", prefix, "é)))", "\n")
    assert v.valid is False
    for a, b in v.error_spans:
        assert 0 <= a <= b <= len("é)))")


def test_javascript_and_typescript():
    assert syntax.check("javascript", "const f = (a) => {\n  return a", " + 1;", "\n};\n").valid is True
    assert syntax.check("js", "const x = [1, 2", "]]]", ";\n").valid is False
    assert syntax.check("typescript", "function f(a: number): number {\n  return a", ";", "\n}\n").valid is True
    assert syntax.check("typescriptreact", "const e = <div>", "hi</div>", ";\n").valid is True


def test_aliases():
    assert syntax.normalize_language("Python3") == "python"
    assert syntax.normalize_language("javascriptreact") == "javascript"
    assert syntax.normalize_language("tsx") == "tsx"
    assert syntax.normalize_language("rust") is None


def test_incremental_reparse_finds_the_same_errors_as_a_full_parse():
    import random
    from pathlib import Path

    src = (Path(syntax.__file__).parents[1] / "engine.py").read_text()
    rng = random.Random(1)
    for _ in range(120):
        a = rng.randrange(len(src))
        b = min(len(src), a + rng.randrange(80))
        middle = rng.choice([src[a:b], src[a:b][::-1], ")))", "é\n  x = (", ""])
        doc = syntax._document("python", src[:a], src[b:])
        incremental = syntax._errors(syntax._with_middle("python", doc, syntax._encode(middle)))
        full = syntax._errors(syntax._parser("python").parse(syntax._encode(src[:a] + middle + src[b:])))
        assert incremental == full


WRAP = '''import textwrap


def wrap(text, width, expand_tabs=True, replace_whitespace=True):
    w = textwrap.TextWrapper(width=width, expand_tabs=expand_tabs, replace_whitespace=replace_whitespace)
    return w.wrap(text)


def other(x):
    return x
'''


def _line(text: str, start: str) -> tuple[int, int]:
    a = text.index(start)
    return a, text.index("\n", a)


def test_a_rewrite_may_not_rename_or_leave_names_dangling():
    a, b = _line(WRAP, "def wrap")
    line = WRAP[a:b]
    # what a weak model did to correct stdlib code: renamed keyword parameters
    why = syntax.rewrite_breaks_names("python", WRAP, a, b, line.replace("expand_tabs", "strip_tabs"))
    assert why == "introduces 'strip_tabs', used nowhere else in the file"
    a, b = _line(WRAP, "    w = ")
    line = WRAP[a:b]
    why = syntax.rewrite_breaks_names("python", WRAP, a, b, line.replace("    w = ", "    v = "))
    assert why is not None  # `v` is new, and `w` is still used on the next line
    why = syntax.rewrite_breaks_names("python", WRAP, a, b, line.replace("width=width", "width=text"))
    assert why == "leaves 'width' defined but never used"  # the parameter's only use is gone
    # a fix that uses the file's own names is fine: a misspelt name corrected, an operator changed
    typo = WRAP.replace("width=width", "width=widht")
    a, b = _line(typo, "    w = ")
    assert syntax.rewrite_breaks_names("python", typo, a, b, typo[a:b].replace("widht", "width")) is None
    a, b = _line(WRAP, "    return x")
    assert syntax.rewrite_breaks_names("python", WRAP, a, b, "    return x + 1") is None


def test_prose_spans_are_comments_and_strings_of_the_middle():
    prefix, middle = "x = 1\n", "y = f('a b')  # note\n"
    spans = syntax.prose_spans("python", prefix, middle, "")
    assert [middle[a:b] for a, b in spans] == ["'a b'", "# note"]
    assert syntax.prose_spans("cobol", prefix, middle, "") == []

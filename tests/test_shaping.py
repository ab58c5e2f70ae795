"""Single- vs multi-line decision and ghost-text post-processing."""

from lsp.config import Settings
from lsp.shaping import body_indent, in_string_or_comment, shape, wants_multiline


def test_mid_line_is_single_line_and_block_openers_are_multi_line():
    assert not wants_multiline("print(foo", ")\n")
    assert wants_multiline("def f(x):", "\n")
    assert wants_multiline("def f(x):\n    ", "\n")  # blank, indented line
    assert not wants_multiline("x = compute", "\n")


def test_strings_and_comments_get_single_lines_by_tree_sitter():
    assert in_string_or_comment("python", "x = 'hello ", "'\n")
    assert in_string_or_comment("python", "x = 1  # note: ", "\n")
    assert not in_string_or_comment("python", "x = foo(", ")\n")
    assert not wants_multiline("s = '''(", "\n'''\n", "python")
    assert wants_multiline("def f(x):", "\n", "python")


def test_single_line_keeps_one_line_and_drops_what_the_suffix_already_has():
    assert shape("a + b\nprint(1)", "return ", "\n", multiline=False) == "a + b"
    assert shape("x, y)", "foo(", ")\n", multiline=False) == "x, y"


def test_closers_the_line_already_has_are_not_repeated():
    assert shape("x))", "foo(bar(", ")\n", multiline=False) == "x)"
    assert shape("x)", "foo(bar(", "\n", multiline=False) == "x)"  # nothing after: keep what it wrote


def test_multi_line_keeps_to_the_block_and_stops_before_repeating_following_code():
    body = "\n    y = x + 1\n    return y\n\ndef g():\n    pass"
    assert shape(body, "def f(x):", "\n\nprint(1)\n", multiline=True) == "\n    y = x + 1\n    return y"
    body = "    y = x + 1\n    return y\n\ndef g():"
    assert shape(body, "def f(x):\n", "\n\ndef g():\n    pass\n", multiline=True) == "    y = x + 1\n    return y"
    assert shape("   \n  ", "def f():\n", "\n", multiline=True) == ""
    assert body_indent("def f(x):") == 1 and body_indent("    ") == 4 and body_indent("x = 1") is None


def test_settings_accept_camel_case_and_ignore_bad_values():
    s = Settings().updated({"diffill": {"maxTokens": 32, "threshold": 2, "languages": ["python"], "enabled": 1}})
    assert s.max_tokens == 32 and s.threshold is None and s.languages == ("python",) and s.enabled is True
    assert Settings().updated({"serverUrl": "ws://127.0.0.1:1"}).server_url == "ws://127.0.0.1:1"


def test_language_server_modules_import_no_torch():
    import subprocess
    import sys

    code = "import sys, lsp.server, lsp.backend, lsp.shaping; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr

"""Single- vs multi-line decision and ghost-text post-processing."""

from lsp.config import Settings
from lsp.shaping import shape, wants_multiline


def test_mid_line_is_single_line_and_block_openers_are_multi_line():
    assert not wants_multiline("print(foo", ")\n")
    assert wants_multiline("def f(x):", "\n")
    assert wants_multiline("def f(x):\n    ", "\n")  # blank, indented line
    assert not wants_multiline("x = compute", "\n")


def test_single_line_keeps_one_line_and_drops_what_the_suffix_already_has():
    assert shape("a + b\nprint(1)", "return ", "\n", multiline=False) == "a + b"
    assert shape("x, y)", "foo(", ")\n", multiline=False) == "x, y"


def test_multi_line_stops_before_repeating_the_following_code_and_drops_blank_answers():
    body = "    y = x + 1\n    return y\n\ndef g():"
    assert shape(body, "def f(x):\n", "\n\ndef g():\n    pass\n", multiline=True) == "    y = x + 1\n    return y"
    assert shape("   \n  ", "def f():\n", "\n", multiline=True) == ""


def test_settings_accept_camel_case_and_ignore_bad_values():
    s = Settings().updated({"diffill": {"maxTokens": 32, "threshold": 2, "languages": ["python"], "enabled": 1}})
    assert s.max_tokens == 32 and s.threshold is None and s.languages == ("python",) and s.enabled is True
    assert Settings().updated({"serverUrl": "ws://127.0.0.1:1"}).server_url == "ws://127.0.0.1:1"


def test_language_server_modules_import_no_torch():
    import subprocess
    import sys

    code = "import sys, lsp.server, lsp.backend; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr

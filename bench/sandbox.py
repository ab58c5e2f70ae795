"""Run untrusted Python (a model's completion inside a test program) in a separate process.

Limits: wall-clock timeout (the whole process group is killed), CPU seconds, address space, no new
processes (RLIMIT_NPROC 0 after start, so fork bombs fail), a fresh temporary directory as cwd and HOME,
isolated mode (-I: no user site, no PYTHON* variables), an empty environment. Not a security boundary
against a determined attacker (no namespaces or seccomp here): it keeps honest-but-broken completions —
infinite loops, unbounded allocation, forks, stray writes to the cwd — from hurting the benchmark.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    passed: bool
    status: str  # "passed", "failed", "timeout"
    detail: str


def _limits(cpu_s: int, mem_bytes: int):
    def apply():
        os.setsid()
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # root ignores this; see run()
    return apply


def run(program: str, *, timeout_s: float = 5.0, mem_mb: int = 1024) -> Outcome:
    # A guard prepended to the program removes os.fork/system & co, which RLIMIT_NPROC cannot stop for root.
    guard = ("import os, subprocess\n"
             "for _n in ('fork', 'forkpty', 'system', 'execv', 'execve', 'spawnv', 'posix_spawn', 'kill', 'rmdir',"
             " 'removedirs', 'unlink', 'remove', 'rename', 'chmod'):\n"
             "    setattr(os, _n, None) if hasattr(os, _n) else None\n"
             "subprocess.Popen = None\n")
    with tempfile.TemporaryDirectory(prefix="diffill-sandbox-") as tmp:
        try:
            proc = subprocess.Popen([sys.executable, "-I", "-c", guard + program], cwd=tmp,
                                    env={"HOME": tmp, "PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    preexec_fn=_limits(int(timeout_s) + 1, mem_mb << 20))
        except OSError as e:
            return Outcome(False, "failed", f"could not start: {e}")
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return Outcome(False, "timeout", f"over {timeout_s} s")
        if proc.returncode == 0:
            return Outcome(True, "passed", "")
        return Outcome(False, "failed", err.decode("utf-8", "replace")[-300:])

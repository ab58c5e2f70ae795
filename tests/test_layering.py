"""The import graph flows one way (DESIGN.md): editor -> lsp -> shared <- engine side, and the CLI above both.

- fim_server/shared is torch-free and imports nothing of Diffill outside itself;
- sampler and model import nothing of Diffill; the engine side never imports lsp, the server or the CLI;
- lsp imports only fim_server.shared at module level (the in-process backend loads the engine lazily,
  in a thread) and never the CLI;
- no module-level import cycle; and importing the language server or running `diffill --help` loads no torch.
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def diffill_imports(path: Path, *, top_level_only: bool) -> set[str]:
    """Diffill modules imported by a file (at module level only, or anywhere)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in out if m.split(".")[0] in ("fim_server", "lsp")}


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in ("fim_server", "lsp") for p in (ROOT / pkg).rglob("*.py")}


def known(name: str, mods: dict[str, Path]) -> str | None:
    """The module a dotted import name refers to (an imported function's module, for `from m import f`)."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def graph(top_level_only: bool) -> dict[str, set[str]]:
    mods = modules()
    return {m: {k for n in diffill_imports(p, top_level_only=top_level_only) if (k := known(n, mods)) and k != m}
            for m, p in mods.items()}


def test_each_layer_imports_only_what_is_below_it():
    anywhere, top = graph(False), graph(True)
    for mod, deps in anywhere.items():
        if mod.startswith("fim_server.shared"):
            assert all(d.startswith("fim_server.shared") or d == "fim_server" for d in deps), (mod, deps)
        if mod in ("fim_server.sampler", "fim_server.model", "fim_server.tokenizer"):
            assert deps <= {"fim_server"}, (mod, deps)
        if mod.startswith("fim_server") and mod != "fim_server.cli":
            assert not any(d.startswith("lsp") or d == "fim_server.cli" for d in deps), (mod, deps)
        if mod in ("fim_server.engine", "fim_server.decoder", "fim_server.context"):
            assert "fim_server.server" not in deps and not any(d.startswith("fim_server.train") for d in deps)
        if mod.startswith("lsp"):
            assert "fim_server.cli" not in deps, mod
            assert all(d.startswith(("lsp", "fim_server.shared")) or d == "fim_server" for d in top[mod]), \
                (mod, top[mod])
    lazy_engine = {m for m, deps in anywhere.items() if m.startswith("lsp") and "fim_server.engine" in deps}
    assert lazy_engine == {"lsp.backend"}  # the in-process backend, and only it, loads the engine


def test_no_import_cycle():
    g = graph(True)
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in g.get(m, ()):
            assert state.get(d) != 1, "import cycle: " + " -> ".join(path + [d])
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in g:
        if m not in state:
            visit(m, [m])


def run_python(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_the_language_server_with_a_remote_engine_and_the_cli_help_load_no_torch():
    out = run_python(
        "import sys\n"
        "import lsp.server\n"
        "from lsp.config import Settings\n"
        "ls = lsp.server.build(Settings(server_url='ws://127.0.0.1:1'))\n"
        "from fim_server import cli\n"
        "try:\n"
        "    cli.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch' in sys.modules)\n")
    assert out.splitlines()[-1] == "False"

"""Real Python files the shipped model never trained on, and completion cases cut from them as an editor
would send them.

Why: the standard library is in the model's training data and its 1-2 KB snippets are shorter than what a
user's editor sends, so cases cut from it flatter both quality and latency. The training corpus
(`fim_server/train/corpus.py`, HELDOUT) holds out three PyPI packages by name; their sdists, at the versions
the corpus pins, are the files here:

| package     | version | licence (from the sdist)                                                  |
|-------------|---------|---------------------------------------------------------------------------|
| marshmallow | 3.25.1  | MIT: LICENSE, PKG-INFO classifier "License :: OSI Approved :: MIT License" |
| boltons     | 24.1.0  | BSD-3-Clause: PKG-INFO "License: BSD", LICENSE is the 3-clause text         |
| arrow       | 1.3.0   | Apache-2.0: LICENSE, classifier "License :: OSI Approved :: Apache Software License" |

Contract:
- `heldout_files()` downloads each sdist once (`pip download --no-deps --no-binary :all:`, from the package
  index) into `data/bench/heldout/` (git-ignored: the files are never committed), checks its sha256, extracts
  its `.py` files beside it and returns them in a fixed order (package order above, then path). A failed
  download raises `DownloadError` saying what to do.
- `single_line_holes(n, seed)` / `multi_line_holes(n, seed)`: seeded, deterministic cursors inside function
  bodies (found with `ast`), with at least `MIN_BEFORE` characters of the file before the cursor so the
  editor's window is mostly full; each draws a file uniformly, then a cursor in it:
  - single-line: cursor mid-line in a statement's first line; the hole is the rest of that line, so the
    suffix starts at the line's newline (the user has not typed the rest yet);
  - multi-line: cursor at the start of a statement (after its indentation); the hole is that statement and
    the next ones of its block, whole statements, until it spans at least 2-4 lines (drawn per case) or the
    block ends; the cursor's line holds only indentation.
- `Hole.window()` is what the language server sends for it (lsp/completer.py): the document is the file
  without the hole, the prefix starts on `window_start`'s line-snapped grid at least `prefix_chars` (4000)
  before the cursor, the suffix is the `suffix_chars` (1500) after it; the engine then cuts that to its own
  token window (`Engine.build_context`: at most the model's max_seq_len less the middle's room).
- `cases(n, seed)`: the engine-bench form of both kinds (see bench/engine_latency.py).
"""

from __future__ import annotations

import ast
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from lsp.completer import window_start
from lsp.config import Settings

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "data" / "bench" / "heldout"

# name, version (as pinned by fim_server/train/corpus.py), licence, sha256 of the sdist on the index
PACKAGES: tuple[tuple[str, str, str, str], ...] = (
    ("marshmallow", "3.25.1", "MIT", "f4debda3bb11153d81ac34b0d582bf23053055ee11e791b54b4b35493468040a"),
    ("boltons", "24.1.0", "BSD-3-Clause", "4a49b7d57ee055b83a458c8682a2a6f199d263a8aa517098bda9bab813554b87"),
    ("arrow", "1.3.0", "Apache-2.0", "d4540617648cb5f895730f1ad8c82a65f2dad0166f57b75f3ca54759c4d67a85"),
)
MIN_BEFORE = 3000  # characters before the cursor: most prefix windows are then the full 4000+ characters
PREFIX_CHARS, SUFFIX_CHARS = Settings.prefix_chars, Settings.suffix_chars  # the language server's defaults


class DownloadError(RuntimeError):
    """An sdist could not be fetched from the package index, or is not the file pinned here."""


def heldout_files(cache_dir: Path = CACHE) -> list[Path]:
    """The `.py` files of the held-out sdists, downloaded and extracted once; package order, then path."""
    out: list[Path] = []
    for name, version, _, sha256 in PACKAGES:
        root = cache_dir / f"{name}-{version}"
        if not root.is_dir():
            _extract(_download(name, version, sha256, cache_dir / "sdists"), root)
        out += sorted(root.rglob("*.py"))
    return out


def _download(name: str, version: str, sha256: str, sdists: Path) -> Path:
    sdist = sdists / f"{name}-{version}.tar.gz"
    if not sdist.exists():
        sdists.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=sdists) as tmp:  # a half-finished download never looks finished
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                   "-d", tmp, f"{name}=={version}"]
            r = subprocess.run(cmd, capture_output=True, text=True)
            got = list(Path(tmp).glob(f"{name}-{version}.tar.gz"))
            if r.returncode != 0 or not got:
                raise DownloadError(
                    f"could not download the held-out sdist {name}=={version} with `{' '.join(cmd[2:])}` "
                    f"(the benches need the package index once; or run them with --source stdlib):\n"
                    f"{(r.stderr or r.stdout).strip()[-1500:]}")
            os.replace(got[0], sdist)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != sha256:
        raise DownloadError(f"{sdist}: sha256 {digest}, expected {sha256}; delete it to download it again")
    return sdist


def _extract(sdist: Path, root: Path) -> None:
    """The sdist's .py files under `root`, without the sdist's top folder; written aside, then renamed."""
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=root.name + ".part-"))
    try:
        with tarfile.open(sdist) as t:
            for m in t.getmembers():
                parts = Path(m.name).parts[1:]
                if not (m.isfile() and m.name.endswith(".py")) or not parts or ".." in parts \
                        or Path(m.name).is_absolute():
                    continue
                dest = tmp.joinpath(*parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(t.extractfile(m).read())
        try:
            tmp.rename(root)
        except OSError:  # another process extracted it first
            if not root.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class Hole:
    """A cursor in a real file with the text after it (the hole) not typed yet."""

    path: str  # relative to the cache: "<package>-<version>/<path in the sdist>"
    text: str = field(repr=False)  # the file as written
    start: int  # the cursor
    end: int  # the hole's end: the document continues from here

    @property
    def truth(self) -> str:
        return self.text[self.start: self.end]

    @property
    def document(self) -> str:
        """What the editor holds: the file without the hole."""
        return self.text[: self.start] + self.text[self.end:]

    @property
    def line(self) -> int:
        return self.text.count("\n", 0, self.start)

    @property
    def character(self) -> int:
        """The cursor's LSP character: UTF-16 code units from the line start."""
        line_start = self.text.rfind("\n", 0, self.start) + 1
        return len(self.text[line_start: self.start].encode("utf-16-le")) // 2

    def window(self, at: int | None = None) -> tuple[str, str]:
        """(prefix, suffix) the language server sends for a cursor at `at` (default: the hole's start)."""
        return lsp_window(self.document, self.start if at is None else at)


def lsp_window(document: str, offset: int, prefix_chars: int = PREFIX_CHARS,
               suffix_chars: int = SUFFIX_CHARS) -> tuple[str, str]:
    """The language server's (prefix, suffix) for a cursor at `offset` of `document` (lsp/completer.py)."""
    return document[window_start(document, offset, prefix_chars): offset], document[offset: offset + suffix_chars]


@cache
def _candidates(files: tuple[Path, ...]) -> tuple[list[tuple], list[tuple]]:
    """(single-line, multi-line) candidate cursors over `files`, in file order then line order.

    single: (file index, line index); multi: (file index, first line index, [end line index of each of the
    following sibling statements]) for statements inside function bodies at least MIN_BEFORE characters
    into their file."""
    single, multi = [], []
    for fi, f in enumerate(files):
        text = f.read_text("utf-8", errors="replace")
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        lines = text.split("\n")
        starts = [0]
        for ln in lines:
            starts.append(starts[-1] + len(ln) + 1)
        seen: set[int] = set()
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for block in _blocks(fn):
                for j, st in enumerate(block):
                    i = st.lineno - 1
                    if i in seen or _is_docstring(st) or isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                         ast.ClassDef)):
                        continue
                    seen.add(i)
                    ln = lines[i]
                    indent = len(ln) - len(ln.lstrip())
                    if starts[i] < MIN_BEFORE or st.col_offset != indent or "\r" in ln:
                        continue
                    if len(ln.strip()) > 12 and not ln.strip().startswith("#"):
                        single.append((fi, i))
                    # the first statement fits the 2-4 lines, and its block has at least 2 lines from here
                    if st.end_lineno - st.lineno < 4 and block[-1].end_lineno > st.lineno:
                        multi.append((fi, i, [s.end_lineno - 1 for s in block[j:]]))
    return sorted(single), sorted(multi)


def _blocks(fn: ast.AST):
    """Every statement list inside function `fn`: its body and the bodies of its if/for/while/with/try/match."""
    stack = [fn]
    while stack:
        node = stack.pop()
        for name in ("body", "orelse", "finalbody"):
            block = getattr(node, name, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                yield block
                stack.extend(block)
        stack.extend(getattr(node, "handlers", ()))  # except clauses
        stack.extend(getattr(node, "cases", ()))  # match cases


def _is_docstring(st: ast.stmt) -> bool:
    return isinstance(st, ast.Expr) and isinstance(st.value, ast.Constant) and isinstance(st.value.value, str)


def _pick(pool: list[tuple], n: int, rng: random.Random, what: str) -> list[tuple]:
    """n distinct candidates (tuples whose first item is a file index): a file drawn uniformly among those
    with candidates, then a candidate in it, so that no single large file (arrow's test_locales.py holds
    13% of all single-line candidates) dominates the cases."""
    if n > len(pool):
        raise ValueError(f"asked for {n} {what} cases; the held-out files give {len(pool)}")
    by_file: dict[int, list[tuple]] = {}
    for c in pool:
        by_file.setdefault(c[0], []).append(c)
    file_ids = sorted(by_file)
    out: list[tuple] = []
    taken: set[tuple] = set()
    while len(out) < n:
        left = [c for c in by_file[rng.choice(file_ids)] if c[:2] not in taken]
        if left:
            c = rng.choice(left)
            taken.add(c[:2])
            out.append(c)
    return out


def single_line_holes(n: int, seed: int = 0, files: list[Path] | None = None, whole: bool = False) -> list[Hole]:
    """n cursors mid-line in function bodies; the hole is the rest of the line (at least 2 characters). With
    `whole`, the cursor is right after the line's indentation: the hole is the whole statement line."""
    files = files if files is not None else heldout_files()
    rng = random.Random(seed)
    out = []
    for fi, i in _pick(_candidates(tuple(files))[0], n, rng, "whole-line" if whole else "single-line"):
        text, name = _read(files[fi])
        lines = text.split("\n")
        ln = lines[i]
        indent = len(ln) - len(ln.lstrip())
        line_start = sum(len(x) + 1 for x in lines[:i])
        cut = indent if whole else rng.randint(indent + 4, len(ln) - 2)
        out.append(Hole(name, text, line_start + cut, line_start + len(ln)))
    return out


def multi_line_holes(n: int, seed: int = 0, files: list[Path] | None = None) -> list[Hole]:
    """n cursors at the start of a statement in a function body; the hole is that statement and the next
    ones of its block, whole statements, until it spans 2-4 lines (target drawn per case) or the block ends."""
    files = files if files is not None else heldout_files()
    rng = random.Random(seed + 1)  # not the single-line stream: the two kinds are drawn independently
    out = []
    for fi, i, ends in _pick(_candidates(tuple(files))[1], n, rng, "multi-line"):
        text, name = _read(files[fi])
        lines = text.split("\n")
        target = rng.randint(2, 4)
        last = next((e for e in ends if e - i + 1 >= target), ends[-1])
        line_start = sum(len(x) + 1 for x in lines[:i])
        indent = len(lines[i]) - len(lines[i].lstrip())
        end = sum(len(x) + 1 for x in lines[:last]) + len(lines[last])
        out.append(Hole(name, text, line_start + indent, end))
    return out


def _read(f: Path) -> tuple[str, str]:
    text = f.read_text("utf-8", errors="replace")
    try:
        name = f.relative_to(CACHE).as_posix()
    except ValueError:
        name = f.as_posix()
    return text, name


def cases(n: int, seed: int = 0) -> list[dict]:
    """Engine-bench cases: the language server's windows for n single-line and n multi-line holes.

    prefix / suffix / truth: single-line at the cursor; prev_prefix: the window one character earlier (the
    same hole before the user typed its last character: the bench's cold request); ml_*: multi-line."""
    out = []
    for s, m in zip(single_line_holes(n, seed), multi_line_holes(n, seed)):
        prefix, suffix = s.window()
        prev_prefix, _ = lsp_window(s.text[: s.start - 1] + s.text[s.end:], s.start - 1)
        ml_prefix, ml_suffix = m.window()
        out.append({"path": s.path, "prefix": prefix, "prev_prefix": prev_prefix, "suffix": suffix,
                    "truth": s.truth, "ml_path": m.path, "ml_prefix": ml_prefix, "ml_suffix": ml_suffix,
                    "ml_truth": m.truth})
    return out

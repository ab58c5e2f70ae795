"""Workspace context: the code a person has open, has just edited or imports, as `extra` chunks for the model.

- Documents are cut into overlapping chunks of CHUNK_LINES lines (a new chunk every STEP lines) and indexed
  for BM25 (Robertson and Zaragoza 2009, "The Probabilistic Relevance Framework: BM25 and Beyond"; k1 1.2,
  b 0.75) over identifier terms. Indexing happens when a document is opened or saved, and REINDEX_S after
  typing in it pauses (the language server's timer), never inside the request being typed for; files the
  open documents import (Python `import` / `from ... import`, JS/TS relative `import ... from './x'` /
  `require('./x')`) are read from disk under the workspace root and indexed the same way, re-read when their
  mtime changes.
- `collect` ranks chunks against the identifiers around the cursor (language keywords left out; those on the
  cursor's line and the one before weigh three times): only chunks sharing a term are scored (an inverted
  index), terms in more than half of the chunks are ignored; a chunk that defines a name used at the cursor
  scores twice, one holding a line edited recently 1.5 times. Chunks of the current document that overlap
  the window already sent, and chunks whose text is already in that window, are skipped; the best chunks
  are taken until `budget_chars`, and returned most relevant LAST (nearest the file's own text in the
  model's context).

Torch-free and shared: the language server collects with it, and training (fim_server/train/train.py,
`--multi-file`) packs examples with the same ranking and layout. The shipped model was never trained on such
chunks (bench/workspace_context.py measures what they do to it), so the language server sends them only
when `contextTokens` > 0.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from fim_server.shared.protocol import ExtraChunk

CHUNK_LINES = 16
STEP = 8
REINDEX_S = 2.0  # a document being typed in is re-chunked at most this often
MAX_FILE_BYTES = 256 * 1024  # imported files larger than this are not read
MAX_DISK_FILES = 64  # imported files kept in the index
RECENT_EDITS = 16
K1, B = 1.2, 0.75
COMMON_FROM = 10  # with this many chunks or more, terms in over half of them are ignored
MAX_CANDIDATES = 64  # best-scored chunks looked at when filling the budget
MIN_CHUNK_CHARS = 80  # less budget than this left: stop looking
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]+")
_DEFINES = re.compile(r"\b(?:def|class|function|interface|type|enum|const|let|var)\s+([A-Za-z_][A-Za-z0-9_]*)")
# keywords of the languages served: they say nothing about which code is relevant
STOP = frozenset("""and as assert async await break case catch class const continue def del do elif else enum
except export extends false finally for from function global if import in interface is lambda let new none
nonlocal not null of or pass raise return self static super switch this throw true try type typeof undefined
var void while with yield None True False""".split())
_PY_IMPORT = re.compile(r"^\s*(?:from\s+(\.*[\w.]*)\s+import\s|import\s+([\w.]+))", re.M)
_JS_IMPORT = re.compile(r"""(?:from\s+|require\(\s*|import\s+)['"](\.{1,2}/[^'"]+)['"]""")


@dataclass
class Chunk:
    uri: str
    path: str  # as shown to the model: relative to the workspace root when under it
    start: int  # first line (0-based)
    end: int  # one past the last line
    text: str
    terms: Counter
    defines: frozenset  # names this chunk defines (def/class/function/const...)
    length: int = 0  # terms in it


def uri_to_path(uri: str) -> Path | None:
    p = urlparse(uri)
    return Path(unquote(p.path)) if p.scheme == "file" else None


class WorkspaceIndex:
    def __init__(self, root: Path | None = None):
        self.root = root
        self.chunks: dict[str, list[Chunk]] = {}  # uri -> its chunks
        self.postings: dict[str, dict[int, int]] = defaultdict(dict)  # term -> {id(chunk): tf}
        self.by_id: dict[int, Chunk] = {}
        self.lengths: dict[int, int] = {}  # id(chunk) -> its length in terms
        self.df: Counter = Counter()
        self.total_len = 0
        self.dirty: dict[str, str] = {}  # uri -> text not indexed yet
        self.disk: dict[Path, float] = {}  # imported file -> mtime indexed
        self.edits: deque[tuple[str, int]] = deque(maxlen=RECENT_EDITS)

    # ---- indexing --------------------------------------------------------------------------------------------
    def _display(self, uri: str) -> str:
        p = uri_to_path(uri)
        if p is None:
            return uri
        if self.root is not None:
            try:
                return p.relative_to(self.root).as_posix()
            except ValueError:
                pass
        return p.name

    def update(self, uri: str, text: str) -> None:
        """(Re)index a document now."""
        self.add(uri, self.chunk(uri, text))

    def chunk(self, uri: str, text: str) -> list[Chunk]:
        """A document's chunks, with their terms: the costly part of indexing, and nothing indexed yet. The
        chunks of one text may be added to several indexes (the training loader builds one per directory)."""
        lines = text.splitlines(keepends=True)
        path, out = self._display(uri), []
        for start in range(0, max(1, len(lines)), STEP):
            body = "".join(lines[start: start + CHUNK_LINES])
            if body.strip():
                c = Chunk(uri, path, start, min(len(lines), start + CHUNK_LINES), body,
                          Counter(t for t in _IDENT.findall(body) if t not in STOP),
                          frozenset(_DEFINES.findall(body)))
                c.length = sum(c.terms.values())
                out.append(c)
            if start + CHUNK_LINES >= len(lines):
                break
        return out

    def add(self, uri: str, out: list[Chunk]) -> None:
        """Index `uri` as these chunks (from `chunk`), in place of what it was."""
        self.remove(uri)
        for c in out:
            self.by_id[id(c)] = c
            self.lengths[id(c)] = c.length
            for t, n in c.terms.items():
                self.postings[t][id(c)] = n
                self.df[t] += 1
            self.total_len += c.length
        self.chunks[uri] = out
        self.dirty.pop(uri, None)

    def remove(self, uri: str) -> None:
        for c in self.chunks.pop(uri, []):
            self.by_id.pop(id(c), None)
            self.lengths.pop(id(c), None)
            for t in c.terms:
                self.postings[t].pop(id(c), None)
                self.df[t] -= 1
                if not self.df[t]:
                    del self.df[t], self.postings[t]
            self.total_len -= c.length
        self.dirty.pop(uri, None)

    def changed(self, uri: str, text: str, lines: list[int]) -> None:
        """A didChange: remember the edited lines; re-chunk later (see `refresh`)."""
        for line in lines:
            self.edits.append((uri, line))
        self.dirty[uri] = text

    def refresh(self, skip: str | None = None) -> None:
        """Index changed documents, but not `skip` (the one a completion is being made for: re-chunking it
        would cost that request milliseconds, and its chunks near the cursor are skipped anyway; the language
        server re-indexes it REINDEX_S after the typing, between requests)."""
        for uri, text in list(self.dirty.items()):
            if uri != skip:
                self.update(uri, text)

    def follow_imports(self, uri: str, text: str, language: str | None) -> None:
        """Index the workspace files `text` imports (read from disk; open documents are indexed already)."""
        here = uri_to_path(uri)
        if here is None:
            return
        for path in self._imported(here, text, language):
            key = path.as_uri()
            if key in self.chunks and path not in self.disk:
                continue  # open in the editor: indexed from the editor's text
            try:
                st = path.stat()
                if st.st_size > MAX_FILE_BYTES or self.disk.get(path) == st.st_mtime:
                    continue
                body = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if path not in self.disk and len(self.disk) >= MAX_DISK_FILES:
                oldest = next(iter(self.disk))
                self.disk.pop(oldest)
                self.remove(oldest.as_uri())
            self.disk[path] = st.st_mtime
            self.update(key, body)

    def _imported(self, here: Path, text: str, language: str | None) -> list[Path]:
        bases = [here.parent] + ([self.root] if self.root is not None else [])
        found: list[Path] = []
        if language == "python" or here.suffix == ".py":
            for rel, absolute in _PY_IMPORT.findall(text):
                name = rel or absolute
                dots = len(name) - len(name.lstrip("."))
                parts = [p for p in name.lstrip(".").split(".") if p]
                if dots:  # relative: "." is this package, each further dot one package up
                    roots = [here.parents[dots - 1]] if dots - 1 < len(here.parents) else []
                else:
                    roots = bases
                for base in roots:
                    for cand in (base.joinpath(*parts).with_suffix(".py") if parts else None,
                                 base.joinpath(*parts, "__init__.py")):
                        if cand is not None and cand.is_file() and cand != here:
                            found.append(cand)
                            break
        else:
            for rel in _JS_IMPORT.findall(text):
                target = (here.parent / rel)
                for cand in (target, *(target.with_suffix(s) for s in (".ts", ".tsx", ".js", ".jsx")),
                             *(target / f"index{s}" for s in (".ts", ".js"))):
                    if cand.is_file() and cand != here:
                        found.append(cand.resolve())
                        break
        return list(dict.fromkeys(found))

    # ---- ranking -----------------------------------------------------------------------------------------------
    def collect(self, uri: str, source: str, offset: int, window: tuple[int, int], budget_chars: int
                ) -> tuple[ExtraChunk, ...]:
        """The chunks most relevant to the text around `offset` in `source` (the document `uri`), outside the
        window [start, end) (str offsets) already sent, at most `budget_chars` of text, most relevant last."""
        if budget_chars <= 0 or not self.by_id:
            return ()
        self.refresh(skip=uri)
        lo, hi = window
        w_first, w_last = source.count("\n", 0, lo), source.count("\n", 0, hi)
        query = Counter(t for t in _IDENT.findall(source[max(lo, offset - 1500): min(hi, offset + 500)])
                        if t not in STOP)
        near = source[max(lo, source.rfind("\n", lo, max(lo, source.rfind("\n", lo, offset)))): offset]
        for t in _IDENT.findall(near):  # the cursor's line and the one before it weigh most
            if t in query:
                query[t] += 2
        n = len(self.by_id)
        avg = self.total_len / n if n else 1.0
        recent = defaultdict(set)
        for u, line in self.edits:
            recent[u].add(line)
        scores: dict[int, float] = defaultdict(float)
        for term in query:
            df = self.df.get(term, 0)
            if not df or (n >= COMMON_FROM and df > n / 2):
                continue  # unknown, or too common to tell chunks apart
            w = query[term] * math.log(1 + (n - df + 0.5) / (df + 0.5)) * (K1 + 1)
            lengths, a, b = self.lengths, K1 * (1 - B), K1 * B / avg
            for cid, tf in self.postings[term].items():
                scores[cid] += w * tf / (tf + a + b * lengths[cid])
        for cid in scores:
            c = self.by_id[cid]
            if c.defines and any(t in query for t in c.defines):
                scores[cid] *= 2.0  # it defines a name used at the cursor
            if recent[c.uri] and any(line in recent[c.uri] for line in range(c.start, c.end)):
                scores[cid] *= 1.5  # code the person just edited
        window_text = source[lo:hi]
        picked, used, seen = [], 0, set()
        for cid, score in sorted(scores.items(), key=lambda kv: -kv[1])[:MAX_CANDIDATES]:
            c = self.by_id[cid]
            if used + len(c.text) > budget_chars or (c.uri == uri and c.start <= w_last and c.end > w_first):
                continue  # too long for what is left, or lines the model sees already
            if any(p.uri == c.uri and p.start < c.end and c.start < p.end for p, _ in picked):
                continue  # overlaps a chunk already taken
            body = c.text.strip()
            if body in seen or body in window_text:
                continue
            seen.add(body)
            picked.append((c, score))
            used += len(c.text)
            if budget_chars - used < MIN_CHUNK_CHARS:
                break
        picked.sort(key=lambda pc: pc[1])  # most relevant last
        return tuple(ExtraChunk(c.path, c.text) for c, _ in picked)

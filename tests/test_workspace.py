"""Workspace context (fim_server/shared/workspace.py): what the index picks for a cursor, what it leaves out,
imported files read from disk, and the language server sending the chunks with a completion when
`contextTokens` is set."""

from __future__ import annotations

import asyncio

from lsprotocol import types

from fim_server.shared.workspace import CHUNK_LINES, WorkspaceIndex

GEO = "".join([
    "import math\n\n\n",
    "def circle_area(radius):\n    return math.pi * radius ** 2\n\n\n",
    *[f"def helper_{i}(value):\n    return value + {i}\n\n\n" for i in range(12)],
    "def rectangle_area(width, height):\n    return width * height\n",
])
NOTES = "".join(f"# note {i}: nothing about shapes here\nprint({i})\n" for i in range(30))
MAIN = "from geo import rectangle_area\n\n\ndef total(rooms):\n    return sum(rectangle_area(w, h) for w, h in "


def index_of(**docs: str) -> WorkspaceIndex:
    idx = WorkspaceIndex()
    for name, text in docs.items():
        idx.update(f"file:///w/{name}.py", text)
    return idx


def test_the_chunk_defining_what_the_cursor_uses_is_picked():
    idx = index_of(geo=GEO, notes=NOTES, main=MAIN)
    got = idx.collect("file:///w/main.py", MAIN, len(MAIN), (0, len(MAIN)), budget_chars=2000)
    assert got, "nothing collected"
    assert "def rectangle_area(width, height)" in got[-1].text and got[-1].path == "geo.py"  # best one last
    assert not any("nothing about shapes" in c.text for c in got)  # shares no identifier with the cursor
    assert sum(len(c.text) for c in got) <= 2000


def test_the_window_already_sent_and_the_budget_are_respected():
    idx = index_of(geo=GEO)
    cursor = GEO.index("return width")
    inside = idx.collect("file:///w/geo.py", GEO, cursor, (0, len(GEO)), budget_chars=5000)
    assert inside == ()  # the whole file is in the window: nothing of it again
    source = GEO + "\n\nprint(circle_area(2), "
    idx.update("file:///w/geo.py", source)
    tail = len(GEO) - 40  # the window holds the end of the file only
    far = idx.collect("file:///w/geo.py", source, len(source), (tail, len(source)), budget_chars=5000)
    assert far and "def circle_area" in far[-1].text  # from outside the window
    assert all(c.text.strip() not in source[tail:] and "rectangle_area" not in c.text for c in far)
    small = index_of(geo=GEO, main=MAIN).collect("file:///w/main.py", MAIN, len(MAIN), (0, len(MAIN)), 40)
    assert small == ()  # no chunk fits 40 characters whole


def test_removing_a_document_forgets_its_chunks_and_terms():
    idx = index_of(geo=GEO, main=MAIN)
    idx.remove("file:///w/geo.py")
    assert "circle_area" not in idx.df and idx.df["rectangle_area"] == len(idx.chunks["file:///w/main.py"])
    assert idx.collect("file:///w/main.py", MAIN, len(MAIN), (0, len(MAIN)), 2000) == ()
    assert all(c.uri != "file:///w/geo.py" for c in idx.by_id.values())


def test_a_document_being_typed_in_is_not_rechunked_inside_its_own_request():
    idx = index_of(geo=GEO, main=MAIN)
    idx.changed("file:///w/geo.py", GEO + "\ndef volume(w, h, d):\n    return w * h * d\n", [40])
    idx.changed("file:///w/main.py", MAIN + "volume(", [4])
    idx.collect("file:///w/main.py", MAIN, len(MAIN), (0, len(MAIN)), 2000)
    assert idx.df["volume"] == 1 and "file:///w/main.py" in idx.dirty  # the other one is, this one waits
    idx.refresh()  # the language server's timer, after the typing
    assert idx.df["volume"] == 2 and not idx.dirty and idx.edits[-1] == ("file:///w/main.py", 4)


def test_imported_files_are_read_from_the_workspace(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "geo.py").write_text(GEO)
    (tmp_path / "pkg" / "units.py").write_text("def to_metres(feet):\n    return feet * 0.3048\n")
    main = tmp_path / "pkg" / "main.py"
    text = "from pkg.geo import rectangle_area\nfrom .units import to_metres\n\n\nx = rectangle_area(to_metres(3), "
    idx = WorkspaceIndex(tmp_path)
    idx.update(main.as_uri(), text)
    idx.follow_imports(main.as_uri(), text, "python")
    assert {p.name for p in idx.disk} == {"geo.py", "units.py"}
    got = idx.collect(main.as_uri(), text, len(text), (0, len(text)), 3000)
    assert {c.path for c in got} == {"pkg/geo.py", "pkg/units.py"}
    assert any("def to_metres" in c.text for c in got) and any("def rectangle_area" in c.text for c in got)
    before = dict(idx.disk)
    idx.follow_imports(main.as_uri(), text, "python")  # unchanged on disk: not read again
    assert idx.disk == before


def test_js_relative_imports_are_followed(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "math.ts").write_text("export function clamp(x: number, lo: number, hi: number) {\n"
                                              "  return Math.min(hi, Math.max(lo, x));\n}\n")
    app = tmp_path / "app.ts"
    text = "import { clamp } from './lib/math';\nconst y = clamp("
    idx = WorkspaceIndex(tmp_path)
    idx.update(app.as_uri(), text)
    idx.follow_imports(app.as_uri(), text, "typescript")
    got = idx.collect(app.as_uri(), text, len(text), (0, len(text)), 2000)
    assert [c.path for c in got] == ["lib/math.ts"]


def test_chunks_overlap_so_a_definition_is_never_cut_in_two_only():
    idx = index_of(geo=GEO)
    lines = GEO.count("\n")
    chunks = idx.chunks["file:///w/geo.py"]
    assert chunks[0].start == 0 and chunks[-1].end >= lines and all(c.end - c.start <= CHUNK_LINES for c in chunks)
    assert all(b.start < a.end for a, b in zip(chunks, chunks[1:]))  # consecutive chunks overlap


class Sink:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


async def test_the_language_server_sends_workspace_chunks_when_asked(tmp_path):
    """contextTokens > 0: the chunk of the other open file that defines what the cursor calls goes with the
    request as `extra`; with 0 (the default) nothing is indexed or sent."""
    from fim_server.shared.protocol import InfillResult
    from lsp.server import build, complete_at

    class Recorder:
        def __init__(self):
            self.requests = []

        async def infill(self, req):
            self.requests.append(req)
            return InfillResult(id=req.id, text="rooms)", valid=True, tokens=2, forward_passes=1, ms=1.0)

    for tokens, want_extra in ((256, True), (0, False)):
        server = build()
        server.protocol.set_writer(Sink())
        server.protocol.handle_message(types.InitializeRequest(id=1, params=types.InitializeParams(
            capabilities=types.ClientCapabilities(), root_uri=tmp_path.as_uri(),
            initialization_options={"contextTokens": tokens})))
        for name, text in (("geo.py", GEO), ("notes.py", NOTES), ("main.py", MAIN)):
            server.protocol.handle_message(types.DidOpenTextDocumentNotification(
                params=types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
                    uri=(tmp_path / name).as_uri(), language_id="python", version=1, text=text))))
        await asyncio.sleep(0)  # notifications are handled as tasks
        server.backend = rec = Recorder()
        main = (tmp_path / "main.py").as_uri()
        got = await complete_at(server, main, types.Position(line=3, character=len(MAIN.splitlines()[3])))
        assert got is not None and rec.requests
        extra = rec.requests[0].extra
        if want_extra:
            assert extra and extra[-1].path == "geo.py" and "def rectangle_area" in extra[-1].text
            assert sum(len(c.text) for c in extra) <= 256 * 3
        else:
            assert extra == () and not server.index.by_id

"""The corpus builder's JavaScript/TypeScript part, offline: npm tarballs built here, served from the cache
(their sha256 pinned like the real ones), filtered, written with their language beside old-format Python
corpora; and the pinned package list's invariants."""

import gzip
import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import pytest

from fim_server.train import corpus, npm_sources
from fim_server.train.npm_sources import NpmPackage, language_of, package_files

JS = """import { EventEmitter } from 'node:events';

export class Queue extends EventEmitter {
  constructor(limit) {
    super();
    this.limit = limit;
    this.items = [];
  }

  push(item) {
    if (this.items.length >= this.limit) {
      this.emit('full', item);
    } else {
      this.items.push(item);
    }
    return this;
  }
}
"""
TS = "export function clamp(x: number, lo: number, hi: number): number {\n  return Math.min(hi, Math.max(lo, x));\n}\n"


def tarball(files: dict[str, str], license: str = "MIT", top: str = "package") -> bytes:
    """An npm-style .tgz: every file under `top/`, with a package.json stating `license`."""
    files = {"package.json": json.dumps({"name": "x", "version": "1.0.0", "license": license}), **files}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{path}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def cached(tmp_path: Path, name: str, files: dict[str, str], license: str = "MIT", **kw) -> NpmPackage:
    """A package whose tarball sits in the cache (tmp_path) under its pinned sha256: no network needed."""
    data = tarball(files, license)
    pkg = NpmPackage(name, "1.0.0", kw.pop("pinned_license", license), hashlib.sha256(data).hexdigest(), **kw)
    (tmp_path / f"{name.replace('/', '+')}-1.0.0.tgz").write_bytes(data)
    return pkg


def kept_paths(pkg: NpmPackage, cache: Path) -> dict[str, str]:
    return {path: language for path, _, language in package_files(pkg, cache)}


@pytest.mark.parametrize(("path", "language"), [
    ("src/a.js", "javascript"), ("lib/a.mjs", "javascript"), ("a.cjs", "javascript"), ("ui/App.jsx", "javascript"),
    ("src/a.ts", "typescript"), ("src/a.mts", "typescript"), ("a.cts", "typescript"), ("ui/App.tsx", "typescript"),
    ("src/a.d.ts", None), ("a.d.mts", None), ("a.d.cts", None),  # declarations
    ("dist/a.min.js", None), ("a-min.js", None),  # minified
    ("a.py", None), ("README.md", None), ("a.js.map", None), ("package.json", None), ("Makefile", None),
])
def test_language_is_told_by_the_file_extension(path, language):
    assert language_of(path) == language


def test_sources_are_kept_and_bundles_declarations_minified_and_vendored_files_skipped(tmp_path):
    pkg = cached(tmp_path, "lib-a", {
        "src/queue.js": JS, "src/clamp.ts": TS, "src/clamp.d.ts": "export declare function clamp(): number;\n",
        "dist/index.js": JS.replace("Queue", "Bundled"), "dist/index.min.js": "var a=1;",
        "lib/util.min.js": "var b=2;", "node_modules/dep/index.js": "module.exports = 1;\n",
        "README.md": "# lib-a\n", "compat/dist/compat.js": "x();\n", "compat/src/index.js": "export const y = 1;\n",
    })
    assert kept_paths(pkg, tmp_path) == {"compat/src/index.js": "javascript", "src/clamp.ts": "typescript",
                                         "src/queue.js": "javascript"}


def test_a_package_that_ships_only_its_build_output_keeps_it(tmp_path):
    pkg = cached(tmp_path, "only-dist", {"dist/index.js": JS, "dist/index.min.js": "var a=1;"})
    assert kept_paths(pkg, tmp_path) == {"dist/index.js": "javascript"}


def test_roots_restrict_a_package_to_its_source_folders(tmp_path):
    pkg = cached(tmp_path, "rooted", {"bundle.js": JS, "src/lib/queue.js": JS, "locale/fr.js": "x();\n"},
                 roots=("src/lib/",))
    assert kept_paths(pkg, tmp_path) == {"src/lib/queue.js": "javascript"}


def test_a_file_of_the_algorithms_organisation_is_never_kept(tmp_path):
    pkg = cached(tmp_path, "algos", {"src/sort.js": "// from https://github.com/TheAlgorithms/JavaScript\n" + JS,
                                     "src/queue.js": JS})
    assert kept_paths(pkg, tmp_path) == {"src/queue.js": "javascript"}


def test_licences_gate_the_package(tmp_path):
    gpl = NpmPackage("gpl-pkg", "1.0.0", "GPL-3.0", "0" * 64)
    assert package_files(gpl, tmp_path) == []  # not permissive: never fetched (no tarball, no network)
    stated = cached(tmp_path, "relicensed", {"src/queue.js": JS}, license="GPL-3.0", pinned_license="MIT")
    with pytest.raises(ValueError, match="states licence 'GPL-3.0', pinned 'MIT'"):
        package_files(stated, tmp_path)


def test_a_tarball_that_does_not_match_its_pinned_sha256_stops_the_build(tmp_path):
    pkg = cached(tmp_path, "tampered", {"src/queue.js": JS})
    (tmp_path / "tampered-1.0.0.tgz").write_bytes(tarball({"src/queue.js": JS + "evil();\n"}))
    with pytest.raises(ValueError, match="sha256"):
        package_files(pkg, tmp_path)


def test_scoped_packages_have_the_registry_url_and_a_flat_cache_name(tmp_path):
    pkg = NpmPackage("@scope/name", "2.0.1", "MIT", "0" * 64)
    assert pkg.url == "https://registry.npmjs.org/@scope/name/-/name-2.0.1.tgz"
    real = cached(tmp_path, "@scope/name", {"src/clamp.ts": TS})
    assert kept_paths(real, tmp_path) == {"src/clamp.ts": "typescript"}


def test_the_pinned_list_is_exact_permissive_and_holds_out_listed_packages():
    names = [p.name for p in npm_sources.NPM_PACKAGES]
    assert 25 <= len(names) <= 40 and len(set(names)) == len(names)
    for p in npm_sources.NPM_PACKAGES:
        assert re.fullmatch(r"\d+\.\d+\.\d+", p.version), p  # exact, no ranges or tags
        assert p.license in {"MIT", "ISC", "BSD-2-Clause", "BSD-3-Clause", "Apache-2.0", "0BSD"}, p
        assert re.fullmatch(r"[0-9a-f]{64}", p.sha256), p
        assert "thealgorithms" not in p.name.lower() and "thealgorithms" not in p.url.lower()
        assert all(r.endswith("/") for r in p.roots), p
    assert npm_sources.NPM_HELDOUT <= set(names) and {"knex", "@trpc/server"} == npm_sources.NPM_HELDOUT
    python = {n for n, _, _ in corpus.PACKAGES} | {"python-stdlib"}
    assert not python & set(names)  # the manifest and the split key packages by name


def write_old_format(path: Path) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"package": "toolz", "license": "BSD-3-Clause", "path": "toolz/a.py",
                            "text": "def f():\n    return 1\n"}) + "\n")


def test_corpora_written_before_languages_read_as_python(tmp_path):
    write_old_format(tmp_path / "train.jsonl.gz")
    (doc,) = corpus.iter_docs(tmp_path / "train.jsonl.gz")
    assert doc["language"] == "python" and doc["text"].startswith("def f")
    assert list(corpus.iter_texts(tmp_path / "train.jsonl.gz")) == [doc["text"]]


def test_build_writes_javascript_and_typescript_docs_with_their_language_split_and_manifest(tmp_path, monkeypatch):
    cache = tmp_path / "npm"
    cache.mkdir()
    packages = (
        cached(cache, "js-lib", {"lib/queue.js": JS, "lib/long.js": "x = '" + "a" * 1200 + "';\n"}),
        cached(cache, "ts-lib", {"src/clamp.ts": TS, "src/copy.js": JS.replace("  ", "    ")}),  # near duplicate
        cached(cache, "held", {"src/clamp2.ts": TS.replace("clamp", "bound")}),
    )
    monkeypatch.setattr(npm_sources, "NPM_PACKAGES", packages)
    monkeypatch.setattr(npm_sources, "NPM_HELDOUT", frozenset({"held"}))
    manifest = corpus.build(tmp_path / "out", tmp_path / "sdists", cache, ("javascript", "typescript"))
    train = list(corpus.iter_docs(tmp_path / "out" / "train.jsonl.gz"))
    held = list(corpus.iter_docs(tmp_path / "out" / "heldout.jsonl.gz"))
    assert [(d["package"], d["path"], d["language"]) for d in train] == [
        ("js-lib", "lib/queue.js", "javascript"), ("ts-lib", "src/clamp.ts", "typescript")]  # long line, dup gone
    assert [(d["package"], d["language"]) for d in held] == [("held", "typescript")]
    assert manifest["ts-lib"] == {"version": "1.0.0", "license": "MIT", "files": 1, "bytes": len(TS.encode()),
                                  "split": "train", "languages": {"typescript": {"files": 1,
                                                                                 "bytes": len(TS.encode())}}}
    assert manifest["held"]["split"] == "heldout"
    assert not (tmp_path / "sdists").exists()  # no Python part was asked for

    only_ts = corpus.build(tmp_path / "ts", tmp_path / "sdists", cache, ("typescript",))
    assert set(only_ts) == {"ts-lib", "held"}


def test_the_languages_flag_takes_a_subset_and_refuses_others():
    assert corpus.parse_languages("javascript, typescript") == ("javascript", "typescript")
    assert corpus.parse_languages("python") == ("python",)
    for bad in ("rust", "", "python,go"):
        with pytest.raises(Exception, match="comma-separated subset"):
            corpus.parse_languages(bad)


def test_the_tokenizer_tools_read_a_corpus_of_old_python_and_new_javascript_docs(tmp_path, tokenizer):
    from fim_server.tokenizer import train_tokenizer
    from fim_server.train.train_tokenizer import by_language

    write_old_format(tmp_path / "train.jsonl.gz")
    with gzip.open(tmp_path / "train.jsonl.gz", "at", encoding="utf-8") as f:
        f.write(json.dumps({"package": "js-lib", "license": "MIT", "path": "lib/queue.js", "text": JS,
                            "language": "javascript"}) + "\n")
    with gzip.open(tmp_path / "heldout.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"package": "held", "license": "MIT", "path": "src/clamp.ts", "text": TS,
                            "language": "typescript"}) + "\n")
    lines = by_language(tokenizer, tmp_path)
    assert [x.split(":")[0] for x in lines] == ["train javascript", "train python", "heldout typescript"]
    assert lines[0].startswith(f"train javascript: 1 files, {len(JS.encode()) / 1e6:.2f} MB")
    tok = train_tokenizer(corpus.iter_texts(tmp_path / "train.jsonl.gz"), vocab_size=300)
    assert tok.decode(tok.encode(JS)) == JS  # byte-level: JavaScript round-trips exactly


def test_python_goes_first_and_keeps_its_files_when_every_language_is_built(tmp_path, monkeypatch):
    """The Python part is what it was: its documents are read first, so dedupe never drops one for a
    JavaScript file; its split and format are as before, plus "language"."""
    from fim_server.train.corpus import Doc

    py = [Doc("python-stdlib", "PSF-2.0", "a.py", "x = [1, 2, 3]\n"), Doc("toolz", "BSD-3-Clause", "t.py", "y = 1\n"),
          Doc("arrow", "Apache-2.0", "b.py", "z = 2\n")]
    monkeypatch.setattr(corpus, "stdlib_docs", lambda: py[:1])
    monkeypatch.setattr(corpus, "package_docs", lambda cache: py[1:])
    cache = tmp_path / "npm"
    cache.mkdir()
    same_text = cached(cache, "js-lib", {"lib/a.js": "x = [1, 2, 3]\n", "lib/queue.js": JS})
    monkeypatch.setattr(npm_sources, "NPM_PACKAGES", (same_text,))
    manifest = corpus.build(tmp_path / "out", tmp_path / "sdists", cache)
    train = list(corpus.iter_docs(tmp_path / "out" / "train.jsonl.gz"))
    assert [(d["package"], d["path"], d["language"]) for d in train] == [
        ("python-stdlib", "a.py", "python"), ("toolz", "t.py", "python"), ("js-lib", "lib/queue.js", "javascript")]
    assert [d["package"] for d in corpus.iter_docs(tmp_path / "out" / "heldout.jsonl.gz")] == ["arrow"]
    assert manifest["toolz"]["version"] == "1.0.0" and manifest["toolz"]["split"] == "train"

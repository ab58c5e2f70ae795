"""JavaScript/TypeScript sources for the training corpus: pinned npm packages, fetched and filtered.

Contract: `package_files(pkg, cache)` -> the package's kept source files as `(path, text, language)`, path
inside the tarball without its top folder, language "javascript" or "typescript"; corpus.py wraps them into
documents and applies the same size/line/banner filter (`keep`), dedupe and HumanEval check as for Python.
The tarball is downloaded over HTTPS from the npm registry into `cache` once and must match the sha256
pinned below (reproducible: a republished or tampered tarball stops the build instead of changing the data).

Choosing packages: only ones whose tarball ships hand-written sources (a `src/` or `lib/` of readable code, or
TypeScript sources beside their compiled `dist/`), under the licence their package.json states (checked
against the pin at build time). Left out after looking inside, with the reason:
- compiled or bundled output only: fp-ts, yargs, hono, kysely, valibot, ts-pattern, neverthrow, pinia,
  vue-router, @tanstack/table-core, d3-*, acorn, marked, markdown-it, mitt, date-fns (also mostly locale data);
- too big for its worth here: effect (24 MB of TypeScript, more than all other packages together), three
  (7.9 MB of examples beside its src/);
- anything of the TheAlgorithms organisation, never (an invariant test pins it; a file that names it is
  dropped as well).

Filters, each for a reason:
- extensions: .js .mjs .cjs .jsx are JavaScript, .ts .mts .cts .tsx TypeScript; everything else is not code
  a user types in those languages;
- declaration files (.d.ts, .d.mts, .d.cts) are skipped: in these packages they are mostly emitted by tsc from
  the sources we already keep (signatures without bodies, the same names twice), and a model that fills
  middles should see bodies. Hand-written typings (commander's, chalk's) are a small share and go too;
- minified files (*.min.js, *-min.js) and source maps: not code anyone writes;
- build output (a path through dist/, build/, esm/, cjs/, umd/, es/, es6/, amd/, min/, dist-module/) when the
  package also ships sources outside such folders: the bundle repeats the sources, transpiled;
- vendored `node_modules/`: other packages' code, under their own licences;
- `roots`, per package where the generic rule is not enough (moment's root bundle and compiled locales,
  mocha's browser bundle, zod's
  compiled v3/ and v4/ export folders): only paths under these folders are read.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REGISTRY = "https://registry.npmjs.org"
PERMISSIVE = frozenset({"MIT", "ISC", "BSD-2-Clause", "BSD-3-Clause", "Apache-2.0", "0BSD"})
LANGUAGE_OF = {".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
               ".ts": "typescript", ".mts": "typescript", ".cts": "typescript", ".tsx": "typescript"}
DECLARATION = (".d.ts", ".d.mts", ".d.cts")
MINIFIED = (".min.js", ".min.mjs", ".min.cjs", "-min.js")
BUILD_DIRS = frozenset({"dist", "build", "esm", "cjs", "umd", "es", "es6", "amd", "min", "dist-module"})


@dataclass(frozen=True)
class NpmPackage:
    name: str
    version: str  # exact
    license: str  # as the tarball's package.json states it
    sha256: str  # of the registry tarball
    roots: tuple[str, ...] = ()  # read only under these folders (empty: the generic rules decide)

    @property
    def url(self) -> str:
        return f"{REGISTRY}/{self.name}/-/{self.name.rsplit('/', 1)[-1]}-{self.version}.tgz"


# Each package's latest release when pinned (December 2026); sha256 of the registry's tarball.
NPM_PACKAGES: tuple[NpmPackage, ...] = (
    # JavaScript
    NpmPackage("express", "5.3.0", "MIT", "62450d99e36dc393295f1ddd93cb9291e658c169f3b700b0110c1ae8fa799930"),
    NpmPackage("koa", "3.3.0", "MIT", "2b1cae002c5c8a066b9c77ac9bf197e2369ba8501fb76b75c9f21d474ef02cf4"),
    NpmPackage("commander", "15.1.0", "MIT", "308f16a324f6d0c889c1a388858868d84e1b4eb4e2bf856caa001f01c1c55bdf"),
    NpmPackage("chalk", "6.0.1", "MIT", "22a5b05d62a304c950f24dedb466ea07fb4b458e58bb37b2fe2c69ed2c9ba6c3"),
    NpmPackage("axios", "1.21.1", "MIT", "5659acb8c9414ad88aa539db8e529947c9bac8cdf55973e314a078fc0205751c"),
    NpmPackage("preact", "11.2.0", "MIT", "3c4456766bd32b6b534d52bf4e9c2a29b33e7eedf6e96ed479300ba1a7888ebf"),
    NpmPackage("lodash-es", "4.18.1", "MIT", "b0c810e5cd4cd580ed7b18fc71384b9a80c151dc5c85b1729bd656a49e3f16f8"),
    NpmPackage("debug", "4.4.3", "MIT", "89c1ac9c946ee8905a875837114528e97eeae35e03be3190584b2216af43e4a7"),
    NpmPackage("semver", "7.8.6", "ISC", "c6584c324e8b1e5d0403c6c16ee2b25dd61567c13f0449a58820350c21cd71bf"),
    NpmPackage("eslint", "10.16.0", "MIT", "dd276c6ce30dce8c2a2ab63db48f814baa2f492e85e7b124d9976d7bb023b751"),
    NpmPackage("webpack", "5.113.0", "MIT", "095755cb8e271b3f38615ae794264f314b1e4dd3158c5677e8700aee9ea20bb7"),
    NpmPackage("mocha", "12.0.3", "MIT", "3a93ba09b4b5f591a947ef5226ca9ae76220b124fe610dbcd5b76eb320512919",
               roots=("lib/", "bin/")),
    NpmPackage("jquery", "4.1.0", "MIT", "1cf3fd7020a7ba620a7cf7b7123312374ee1c169eb41a29d67ea4c9f9c15c187"),
    NpmPackage("ramda", "0.32.0", "MIT", "e99a665207ddba7c1177c8062f607c37d31ac376674d41200418627428863967"),
    NpmPackage("moment", "2.31.0", "MIT", "efddf549c13aa7cf270f573d9c464978ab0810c0652673ae6af1189bb56ab3f8",
               roots=("src/lib/",)),
    NpmPackage("handlebars", "4.7.10", "MIT", "14f356e6cadb5b064a156d2b39dd843abba8f4b1a38ee036935adecc1a13ad9f"),
    NpmPackage("ws", "8.23.1", "MIT", "86236e8c3cc4fd2d136d413670efb5b105ebddfbda975f1143b8b0429d584ade"),
    NpmPackage("pino", "10.4.0", "MIT", "f745d3dee0bddd39f11226335ee6dbbe3d49cc037168f2b31a8cdbe78f0e6216"),
    NpmPackage("undici", "8.14.1", "MIT", "9819815615cee4bb63cdab40ae6cc46b5956970c001ba6b27670338de42c1979"),
    NpmPackage("node-fetch", "3.3.2", "MIT", "615af90e363f8f276b4b54f8e6c163cf3686dce1d8867dd7e52cbed4d38d2dab"),
    NpmPackage("fastify", "5.12.8", "MIT", "459048aabd9311309f4f95b36e8ca065e3a4613ded292bcf50442926931e4748"),
    NpmPackage("svelte", "5.60.1", "MIT", "7f7922c6d1dc2ab40467211a586e144dc63c03ddc7a94c1e32bf4ae1a9de4bf5",
               roots=("src/",)),
    NpmPackage("yjs", "13.6.33", "MIT", "cfd28813389c4204a6d1ae3db7847c8b47195523c9ef8e31a8a4b69a2b499f34"),
    NpmPackage("leaflet", "1.9.4", "BSD-2-Clause", "84c65a256e50657896f54c33bd857b6849ebe94c817803be818bf32a3dde0b77"),
    NpmPackage("knex", "3.3.0", "MIT", "6f017ec9d4b8d665c739fa5ed20833bc96e61bc3903ea7ab6ad8498c926f1cc5"),
    # TypeScript (sources shipped beside the compiled output)
    NpmPackage("rxjs", "7.8.2", "Apache-2.0", "2312f8ffd9726ffd7bd53ea12c5f13663d09a3dc3326f448c70b88f5ef6fac82"),
    NpmPackage("immer", "11.2.14", "MIT", "590d2d7d6b5a114cbbe07af2ca99ee9c4fd362f135d1757b14c869c445e9dc22"),
    NpmPackage("redux", "5.0.1", "MIT", "adacd4f8a377e638a3feb568e45e8b8ff22c926516941db25b1acfc34d94398b"),
    NpmPackage("@reduxjs/toolkit", "2.16.0", "MIT",
               "f815be44e3876a2c72f01135768a872048c00cb7bfabf313b238004302c32f2a"),
    NpmPackage("react-redux", "9.3.1", "MIT", "cafd0c188ca611c8997f186e6573c906f1c413c1d023aa70f940578fa0404564"),
    NpmPackage("zod", "4.6.7", "MIT", "84efd155bed93270286e793fc951be270b536cbd5b0eeb111f0fa3967201d698",
               roots=("src/",)),  # v3/, v4/ beside it are its compiled export folders
    NpmPackage("mobx", "7.1.3", "MIT", "bbd07665d8851ee01df2fd4e12db106c60fd878839610dd8b899548969625616"),
    NpmPackage("@tanstack/query-core", "5.108.4", "MIT",
               "7660b37f747ce33f1e5456299009dbe217a08514f402c13e633ae95727e361e0"),
    NpmPackage("@tanstack/react-query", "5.108.4", "MIT",
               "73928ec1c55576aa838adaca5f055d3c3ea03bfd86af48e4ce934697b3a8de83"),
    NpmPackage("@tanstack/virtual-core", "3.19.13", "MIT",
               "4a85771a886c85d88d680f788c8a37a35d550e4cf4ee866d2de7032e3574dea5"),
    NpmPackage("@tanstack/router-core", "1.171.39", "MIT",
               "0c9345f2830bda69901d464a293d101f10635d3c935f7f1e310681b71bd2e962"),
    NpmPackage("ajv", "8.20.0", "MIT", "b2f0b3a893bbb8cc5efb6814f08b1499e19e31d5dd73683f5893382f48f6e7b3"),
    NpmPackage("prosemirror-model", "1.25.13", "MIT",
               "d7cb62718cc012c2eeda679512d3f409220ab15a782fe8a61bd08c010e015a0f"),
    NpmPackage("@trpc/server", "11.25.2", "MIT", "43d5562bf3d3ca2ba55bb37a91020c19d90ddaa3359a1eb55e5fefc62c6cb29a"),
)
# Held out by package, like corpus.HELDOUT: a JavaScript one (knex, 0.6 MB) and a TypeScript one
# (@trpc/server, 0.3 MB), mid-sized and of a kind (a query builder, an RPC server) no training package repeats.
NPM_HELDOUT = frozenset({"knex", "@trpc/server"})


def language_of(path: str) -> str | None:
    """The language of a source file by its name, or None for anything not kept (declarations, minified)."""
    name = path.rsplit("/", 1)[-1].lower()
    if name.endswith(DECLARATION) or name.endswith(MINIFIED):
        return None
    dot = name.rfind(".")
    return LANGUAGE_OF.get(name[dot:]) if dot > 0 else None


def _is_build_output(path: str) -> bool:
    return any(part in BUILD_DIRS for part in path.split("/")[:-1])


def select(pkg: NpmPackage, members: dict[str, bytes]) -> list[tuple[str, str, str]]:
    """The files of a tarball (path without the top folder -> bytes) kept for the corpus, sorted by path:
    (path, text, language). See the module docstring for the rules."""
    code = {p: data for p, data in members.items()
            if language_of(p) and "node_modules" not in p.split("/")
            and (not pkg.roots or p.startswith(pkg.roots))}
    if any(not _is_build_output(p) for p in code):
        code = {p: d for p, d in code.items() if not _is_build_output(p)}
    out = []
    for p in sorted(code):
        try:
            text = code[p].decode("utf-8")
        except UnicodeDecodeError:
            continue
        if "thealgorithms" in text.lower():
            continue
        out.append((p, text, language_of(p)))
    return out


def read_tarball(data: bytes) -> tuple[dict, dict[str, bytes]]:
    """-> (package.json, {path without the top folder: bytes}) of an npm tarball's regular files."""
    members: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as t:
        for m in t.getmembers():
            if not m.isfile():
                continue
            f = t.extractfile(m)
            if f is not None:
                members[m.name.split("/", 1)[-1]] = f.read()
    return json.loads(members.get("package.json", b"{}")), members


def stated_license(package_json: dict) -> str:
    lic = package_json.get("license", "")
    return lic.get("type", "") if isinstance(lic, dict) else str(lic)


def fetch(pkg: NpmPackage, cache: Path) -> bytes:
    """The package's tarball, from `cache` or the registry, checked against its pinned sha256."""
    path = cache / f"{pkg.name.replace('/', '+')}-{pkg.version}.tgz"
    if path.exists():
        data = path.read_bytes()
    else:
        with urllib.request.urlopen(pkg.url, timeout=120) as r:
            data = r.read()
    got = hashlib.sha256(data).hexdigest()
    if got != pkg.sha256:
        raise ValueError(f"{pkg.name}@{pkg.version}: tarball sha256 {got}, pinned {pkg.sha256}")
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(path)
    return data


def package_files(pkg: NpmPackage, cache: Path) -> list[tuple[str, str, str]]:
    """The kept source files of a pinned package (fetched into `cache` if needed); its package.json must
    state the pinned licence, and that licence must be permissive."""
    if pkg.license not in PERMISSIVE:
        return []
    package_json, members = read_tarball(fetch(pkg, cache))
    if stated_license(package_json) != pkg.license:
        raise ValueError(f"{pkg.name}@{pkg.version}: package.json states licence "
                         f"{stated_license(package_json)!r}, pinned {pkg.license!r}")
    return select(pkg, members)

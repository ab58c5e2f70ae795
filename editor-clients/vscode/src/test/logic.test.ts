import { test } from "node:test";
import * as assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as path from "node:path";
import {
  DEFAULTS,
  EDIT_COMMANDS,
  EditorState,
  LspRange,
  SERVER_COMMANDS,
  fillHolesRequest,
  readSettings,
  resultNotice,
  rewriteRequest,
  serverCommand,
  serverOptions,
  statusText,
} from "../logic";

test("server command: explicit command, then python -m lsp, then diffill lsp", () => {
  assert.deepEqual(serverCommand({ ...DEFAULTS, command: ["/opt/d", "lsp", "--tcp"] }), {
    command: "/opt/d",
    args: ["lsp", "--tcp"],
  });
  assert.deepEqual(serverCommand({ ...DEFAULTS, pythonPath: " /venv/bin/python " }), {
    command: "/venv/bin/python",
    args: ["-m", "lsp"],
  });
  assert.deepEqual(serverCommand(DEFAULTS), { command: "diffill", args: ["lsp"] });
});

test("server options are clamped and empty strings become null", () => {
  const o = serverOptions({ ...DEFAULTS, maxTokens: 9999, steps: 0, serverUrl: "  " }).diffill;
  assert.equal(o.maxTokens, 512);
  assert.equal(o.steps, null);
  assert.equal(o.serverUrl, null);
  assert.equal(serverOptions({ ...DEFAULTS, serverUrl: "ws://gpu:8765" }).diffill.serverUrl, "ws://gpu:8765");
  assert.equal(o.backend, null);
  assert.equal(o.apiKey, null);
  const h = serverOptions({ ...DEFAULTS, serverUrl: "https://api.example/v1", backend: "inception", apiKey: " k " });
  assert.deepEqual([h.diffill.backend, h.diffill.apiKey], ["inception", "k"]);
  assert.equal(serverOptions({ ...DEFAULTS, backend: "grpc" }).diffill.backend, null);
  assert.equal(o.contextTokens, 0);
  assert.equal(serverOptions({ ...DEFAULTS, contextTokens: 9000 }).diffill.contextTokens, 4096);
  assert.equal(serverOptions({ ...DEFAULTS, contextTokens: 255.6 }).diffill.contextTokens, 256);
  assert.deepEqual([o.model, o.device], [null, "cpu"]);
  const g = serverOptions({ ...DEFAULTS, model: " /models/dream-coder ", device: "cuda" }).diffill;
  assert.deepEqual([g.model, g.device], ["/models/dream-coder", "cuda"]);
});

test("status text shows state, backend and latency", () => {
  assert.equal(statusText(false, "running", "local", 12), "$(circle-slash) Diffill off");
  assert.equal(statusText(true, "running", "local", 41.6), "$(sparkle) Diffill local 42 ms");
  assert.equal(statusText(true, "running", "ws://gpu:8765", null), "$(sparkle) Diffill ws://gpu:8765");
  assert.equal(statusText(true, "starting", "local", null), "$(loading~spin) Diffill starting");
  assert.equal(statusText(true, "stopped", "local", 12), "$(error) Diffill stopped");
});

test("settings with wrong types fall back to defaults", () => {
  const raw: Record<string, unknown> = { enable: "yes", maxTokens: 32, languages: [1, 2], steps: 4 };
  const s = readSettings((k) => raw[k]);
  assert.equal(s.enable, true);
  assert.equal(s.maxTokens, 32);
  assert.deepEqual(s.languages, DEFAULTS.languages);
  assert.equal(s.steps, 4);
});

const URI = "file:///w/a.py";
const range = (l0: number, c0: number, l1: number, c1: number): LspRange => ({
  start: { line: l0, character: c0 },
  end: { line: l1, character: c1 },
});

test("fill holes sends only non-empty selections, and no ranges at all for bare cursors", () => {
  const sel = [range(1, 4, 1, 4), range(2, 0, 4, 3), range(7, 2, 7, 2), range(9, 1, 9, 5)];
  assert.deepEqual(fillHolesRequest(URI, sel), {
    command: "diffill.lsp.fillHoles",
    arguments: [{ uri: URI, ranges: [range(2, 0, 4, 3), range(9, 1, 9, 5)] }],
  });
  assert.deepEqual(fillHolesRequest(URI, [range(3, 1, 3, 1)]).arguments, [{ uri: URI }]);
  assert.deepEqual(fillHolesRequest(URI, []).arguments, [{ uri: URI }]);
});

test("rewrite carries the all flag; the two rewrite commands differ only in it and use the primary selection", () => {
  assert.deepEqual(rewriteRequest(URI, range(0, 0, 2, 0), true), {
    command: "diffill.lsp.rewrite",
    arguments: [{ uri: URI, range: range(0, 0, 2, 0), all: true }],
  });
  const state: EditorState = {
    uri: URI,
    selection: range(5, 0, 6, 8),
    selections: [range(5, 0, 6, 8), range(9, 0, 9, 3)],
    cursor: { line: 6, character: 8 },
  };
  assert.deepEqual(EDIT_COMMANDS["diffill.rewriteSelection"].request(state).arguments, [
    { uri: URI, range: range(5, 0, 6, 8), all: false },
  ]);
  assert.deepEqual(EDIT_COMMANDS["diffill.rewriteSelectionAll"].request(state).arguments, [
    { uri: URI, range: range(5, 0, 6, 8), all: true },
  ]);
  assert.deepEqual(EDIT_COMMANDS["diffill.completeBlock"].request(state), {
    command: "diffill.lsp.completeBlock",
    arguments: [{ uri: URI, position: { line: 6, character: 8 } }],
  });
  assert.deepEqual(EDIT_COMMANDS["diffill.fillHoles"].request(state).arguments, [
    { uri: URI, ranges: state.selections },
  ]);
});

test("result notice: information when applied, warning otherwise, a fallback when the message is missing", () => {
  assert.deepEqual(resultNotice({ applied: true, edits: 2, message: "filled 2 holes" }), {
    level: "info",
    text: "Diffill: filled 2 holes",
  });
  assert.deepEqual(resultNotice({ applied: false, edits: 0, message: "Diffill: no <FILL_ME> holes" }), {
    level: "warning",
    text: "Diffill: no <FILL_ME> holes",
  });
  assert.deepEqual(resultNotice({ applied: true, edits: 1 }), { level: "info", text: "Diffill: applied 1 edit" });
  assert.deepEqual(resultNotice({ applied: true, edits: 3, message: " " }), {
    level: "info",
    text: "Diffill: applied 3 edits",
  });
  assert.deepEqual(resultNotice({ applied: false }), { level: "warning", text: "Diffill: nothing was changed" });
  assert.deepEqual(resultNotice(null), { level: "warning", text: "Diffill: nothing was changed" });
  assert.equal(resultNotice({ applied: "yes", message: "x" }).level, "warning");
});

test("package.json contributes exactly the registered edit commands, under ids the server does not claim", () => {
  const pkg = JSON.parse(readFileSync(path.join(__dirname, "..", "..", "package.json"), "utf8"));
  const contributed: string[] = pkg.contributes.commands.map((c: { command: string }) => c.command);
  // vscode-languageclient registers the server's ids itself; a second registration fails activation.
  for (const id of contributed) {
    assert.ok(!Object.values<string>(SERVER_COMMANDS).includes(id), id);
  }
  const edits = contributed.filter((id) => id !== "diffill.toggle" && id !== "diffill.trigger");
  assert.deepEqual(edits.sort(), Object.keys(EDIT_COMMANDS).sort());
  const when = (menu: string, id: string): string =>
    pkg.contributes.menus[menu].find((m: { command: string }) => m.command === id).when;
  for (const id of edits) {
    assert.match(when("commandPalette", id), /editorLangId in diffill\.languages/);
    assert.match(when("editor/context", id), /editorLangId in diffill\.languages/);
  }
  assert.match(when("editor/context", "diffill.rewriteSelection"), /editorHasSelection/);
  assert.match(when("editor/context", "diffill.rewriteSelectionAll"), /editorHasSelection/);
  assert.doesNotMatch(when("editor/context", "diffill.fillHoles"), /editorHasSelection/);
});

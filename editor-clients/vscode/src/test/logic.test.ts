import { test } from "node:test";
import * as assert from "node:assert/strict";
import { DEFAULTS, readSettings, serverCommand, serverOptions, statusText } from "../logic";

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
});

test("status text shows state, backend and latency", () => {
  assert.equal(statusText(false, "local", 12), "$(circle-slash) Diffill off");
  assert.equal(statusText(true, "local", 41.6), "$(sparkle) Diffill local 42 ms");
  assert.equal(statusText(true, "ws://gpu:8765", null), "$(sparkle) Diffill ws://gpu:8765");
});

test("settings with wrong types fall back to defaults", () => {
  const raw: Record<string, unknown> = { enable: "yes", maxTokens: 32, languages: [1, 2], steps: 4 };
  const s = readSettings((k) => raw[k]);
  assert.equal(s.enable, true);
  assert.equal(s.maxTokens, 32);
  assert.deepEqual(s.languages, DEFAULTS.languages);
  assert.equal(s.steps, 4);
});

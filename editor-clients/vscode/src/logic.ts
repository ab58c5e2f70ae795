// Pure logic of the extension (no vscode import), unit-tested with node:test: settings, the server's
// launch command, status text, and the workspace/executeCommand requests behind the multi-line edit commands.

export interface Settings {
  enable: boolean;
  languages: string[];
  maxTokens: number;
  steps: number | null;
  serverUrl: string;
  backend: string; // for an http(s) serverUrl: "openai", "inception" or "llamacpp"; "" = openai
  apiKey: string; // for an http(s) serverUrl; "" = the DIFFILL_API_KEY environment variable
  remoteModel: string; // the `model` sent to an http(s) serverUrl; "" = the backend's default
  contextTokens: number; // workspace context sent with each completion (fim_server/shared/workspace.py); 0 = none
  model: string; // model directory for the in-process engine (Diffill's own or a published one); "" = embedded
  device: string; // torch device of the in-process engine: "cpu", "cuda", "cuda:1"...
  command: string[];
  pythonPath: string;
}

export const DEFAULTS: Settings = {
  enable: true,
  languages: ["python", "javascript", "javascriptreact", "typescript", "typescriptreact"],
  maxTokens: 64,
  steps: null,
  serverUrl: "",
  backend: "",
  apiKey: "",
  remoteModel: "",
  contextTokens: 0,
  model: "",
  device: "cpu",
  command: [],
  pythonPath: "",
};

/** The process that runs the language server: an explicit command, else `<python> -m lsp`, else `diffill lsp`. */
export function serverCommand(s: Settings): { command: string; args: string[] } {
  if (s.command.length > 0) {
    return { command: s.command[0], args: s.command.slice(1) };
  }
  if (s.pythonPath.trim() !== "") {
    return { command: s.pythonPath.trim(), args: ["-m", "lsp"] };
  }
  return { command: "diffill", args: ["lsp"] };
}

/** The HTTP FIM APIs the language server can use as its backend (lsp/config.py BACKENDS). */
export const BACKENDS = ["openai", "inception", "llamacpp"];

/** initializationOptions / didChangeConfiguration payload understood by `diffill lsp`. */
export function serverOptions(s: Settings): { diffill: Record<string, unknown> } {
  const opts: Record<string, unknown> = {
    enabled: s.enable,
    languages: s.languages,
    maxTokens: Math.max(1, Math.min(512, Math.round(s.maxTokens))),
    steps: s.steps === null || s.steps < 1 ? null : Math.round(s.steps),
    serverUrl: s.serverUrl.trim() === "" ? null : s.serverUrl.trim(),
    backend: BACKENDS.includes(s.backend) ? s.backend : null,
    apiKey: s.apiKey.trim() === "" ? null : s.apiKey.trim(),
    remoteModel: s.remoteModel.trim() === "" ? null : s.remoteModel.trim(),
    contextTokens: Math.max(0, Math.min(4096, Math.round(s.contextTokens))),
    model: s.model.trim() === "" ? null : s.model.trim(),
    device: s.device.trim() === "" ? "cpu" : s.device.trim(),
  };
  return { diffill: opts };
}

/** The language server as the status bar tells it: until it has answered `initialize` no suggestion can come. */
export type ServerState = "starting" | "running" | "stopped";

/** Status bar text: on/off, the server's state, the model (or remote server) and the last request's latency. */
export function statusText(enabled: boolean, server: ServerState, backend: string, lastMs: number | null): string {
  if (!enabled) {
    return "$(circle-slash) Diffill off";
  }
  if (server === "starting") {
    return "$(loading~spin) Diffill starting";
  }
  if (server === "stopped") {
    return "$(error) Diffill stopped";
  }
  const latency = lastMs === null ? "" : ` ${Math.round(lastMs)} ms`;
  return `$(sparkle) Diffill ${backend}${latency}`;
}

/** Read settings from a getter (vscode's WorkspaceConfiguration.get), falling back to defaults on bad types. */
export function readSettings(get: (key: string) => unknown): Settings {
  const pick = <T>(key: keyof Settings, ok: (v: unknown) => boolean): T => {
    const v = get(key);
    return (ok(v) ? v : DEFAULTS[key]) as T;
  };
  const isStrArray = (v: unknown) => Array.isArray(v) && v.every((x) => typeof x === "string");
  return {
    enable: pick("enable", (v) => typeof v === "boolean"),
    languages: pick("languages", isStrArray),
    maxTokens: pick("maxTokens", (v) => typeof v === "number" && v >= 1),
    steps: pick("steps", (v) => v === null || (typeof v === "number" && v >= 1)),
    serverUrl: pick("serverUrl", (v) => typeof v === "string"),
    backend: pick("backend", (v) => typeof v === "string"),
    apiKey: pick("apiKey", (v) => typeof v === "string"),
    remoteModel: pick("remoteModel", (v) => typeof v === "string"),
    contextTokens: pick("contextTokens", (v) => typeof v === "number" && v >= 0),
    model: pick("model", (v) => typeof v === "string"),
    device: pick("device", (v) => typeof v === "string"),
    command: pick("command", isStrArray),
    pythonPath: pick("pythonPath", (v) => typeof v === "string"),
  };
}

// Multi-line edits. The server (lsp/, interface in its executeCommandProvider) applies each edit itself with
// workspace/applyEdit and answers {applied, edits, message}. vscode-languageclient registers the server's
// command ids as VS Code commands, so the extension's own commands use other ids (EDIT_COMMANDS below).

/** An LSP position / range as plain data, as client.code2ProtocolConverter produces them. */
export interface LspPosition {
  line: number;
  character: number;
}
export interface LspRange {
  start: LspPosition;
  end: LspPosition;
}

/** The commands `diffill lsp` advertises for workspace/executeCommand. */
export const SERVER_COMMANDS = {
  fillHoles: "diffill.lsp.fillHoles",
  rewrite: "diffill.lsp.rewrite",
  completeBlock: "diffill.lsp.completeBlock",
} as const;

/** workspace/executeCommand params: the server takes exactly one argument object. */
export interface ExecuteCommandParams {
  command: string;
  arguments: [Record<string, unknown>];
}

export function isEmptyRange(r: LspRange): boolean {
  return r.start.line === r.end.line && r.start.character === r.end.character;
}

/** Fill every <FILL_ME> in the document plus each non-empty selection (cursors alone are not holes). */
export function fillHolesRequest(uri: string, selections: LspRange[]): ExecuteCommandParams {
  const ranges = selections.filter((r) => !isEmptyRange(r));
  const args = ranges.length > 0 ? { uri, ranges } : { uri };
  return { command: SERVER_COMMANDS.fillHoles, arguments: [args] };
}

/** Regenerate the lines `range` touches: only the unlikely tokens, or every token when `all`. */
export function rewriteRequest(uri: string, range: LspRange, all: boolean): ExecuteCommandParams {
  return { command: SERVER_COMMANDS.rewrite, arguments: [{ uri, range, all }] };
}

/** Complete the body of the innermost block around `position`. */
export function completeBlockRequest(uri: string, position: LspPosition): ExecuteCommandParams {
  return { command: SERVER_COMMANDS.completeBlock, arguments: [{ uri, position }] };
}

/** The active editor as plain data: `selection` is the primary one, `cursor` its active end. */
export interface EditorState {
  uri: string;
  selection: LspRange;
  selections: LspRange[];
  cursor: LspPosition;
}

/** The extension's edit commands (ids contributed in package.json): progress title and server request. */
export const EDIT_COMMANDS: Record<string, { progress: string; request: (e: EditorState) => ExecuteCommandParams }> = {
  "diffill.fillHoles": { progress: "Filling holes", request: (e) => fillHolesRequest(e.uri, e.selections) },
  "diffill.rewriteSelection": {
    progress: "Rewriting selection",
    request: (e) => rewriteRequest(e.uri, e.selection, false),
  },
  "diffill.rewriteSelectionAll": {
    progress: "Regenerating selection",
    request: (e) => rewriteRequest(e.uri, e.selection, true),
  },
  "diffill.completeBlock": { progress: "Completing block", request: (e) => completeBlockRequest(e.uri, e.cursor) },
};

/** The notification for a command's result: information when the edit was applied, else a warning. */
export function resultNotice(result: unknown): { level: "info" | "warning"; text: string } {
  const r = typeof result === "object" && result !== null ? (result as Record<string, unknown>) : {};
  const applied = r.applied === true;
  let text: string;
  if (typeof r.message === "string" && r.message.trim() !== "") {
    text = r.message.trim();
  } else if (applied) {
    text = typeof r.edits === "number" ? `applied ${r.edits} edit${r.edits === 1 ? "" : "s"}` : "edit applied";
  } else {
    text = "nothing was changed";
  }
  if (!text.startsWith("Diffill")) {
    text = `Diffill: ${text}`;
  }
  return { level: applied ? "info" : "warning", text };
}

// Pure logic of the extension (no vscode import), unit-tested with node:test.

export interface Settings {
  enable: boolean;
  languages: string[];
  maxTokens: number;
  steps: number | null;
  serverUrl: string;
  command: string[];
  pythonPath: string;
}

export const DEFAULTS: Settings = {
  enable: true,
  languages: ["python", "javascript", "javascriptreact", "typescript", "typescriptreact"],
  maxTokens: 64,
  steps: null,
  serverUrl: "",
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

/** initializationOptions / didChangeConfiguration payload understood by `diffill lsp`. */
export function serverOptions(s: Settings): { diffill: Record<string, unknown> } {
  const opts: Record<string, unknown> = {
    enabled: s.enable,
    languages: s.languages,
    maxTokens: Math.max(1, Math.min(512, Math.round(s.maxTokens))),
    steps: s.steps === null || s.steps < 1 ? null : Math.round(s.steps),
    serverUrl: s.serverUrl.trim() === "" ? null : s.serverUrl.trim(),
  };
  return { diffill: opts };
}

/** Status bar text: on/off, the model (or remote server) and the last request's latency. */
export function statusText(enabled: boolean, backend: string, lastMs: number | null): string {
  if (!enabled) {
    return "$(circle-slash) Diffill off";
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
    command: pick("command", isStrArray),
    pythonPath: pick("pythonPath", (v) => typeof v === "string"),
  };
}

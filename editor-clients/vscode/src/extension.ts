// Diffill for VS Code: starts `diffill lsp` (or a configured command) and lets VS Code's standard inline
// completion (ghost text) ask it for suggestions: vscode-languageclient ≥ 10 registers LSP 3.18
// textDocument/inlineCompletion by default (9.x only after registerProposedFeatures()). Accepting them is
// VS Code's own (Tab, Ctrl+Right for the next word); this extension binds no keys.
// Status bar: on/off, the server's state (starting / stopped), backend, last latency.
// Edit commands (fill holes, rewrite/regenerate selection, complete block) send workspace/executeCommand;
// the server applies the edit itself (workspace/applyEdit, one undo step) and the result is shown.
import * as vscode from "vscode";
import {
  ExecuteCommandRequest,
  LanguageClient,
  LanguageClientOptions,
  LSPErrorCodes,
  ResponseError,
  ServerOptions,
  State,
} from "vscode-languageclient/node";
import {
  EDIT_COMMANDS,
  readSettings,
  resultNotice,
  serverCommand,
  serverOptions,
  ServerState,
  statusText,
} from "./logic";

let client: LanguageClient | undefined;
let status: vscode.StatusBarItem;
let server: ServerState = "starting";
let lastMs: number | null = null;

function settings() {
  const cfg = vscode.workspace.getConfiguration("diffill");
  return readSettings((key) => cfg.get(key));
}

function refreshStatus() {
  const s = settings();
  status.text = statusText(s.enable, server, s.serverUrl.trim() || "local", lastMs);
  status.tooltip =
    server === "stopped"
      ? "Diffill: the language server is not running (see the Diffill output); click to toggle"
      : "Diffill: click to toggle inline completions";
  status.show();
}

async function startClient(context: vscode.ExtensionContext) {
  const s = settings();
  const { command, args } = serverCommand(s);
  const serverProcess: ServerOptions = { command, args };
  const clientOptions: LanguageClientOptions = {
    documentSelector: s.languages.map((language) => ({ language })),
    initializationOptions: serverOptions(s),
    middleware: {
      provideInlineCompletionItems: async (document, position, ctx, token, next) => {
        if (!settings().enable) {
          return null;
        }
        const t0 = Date.now();
        const result = await next(document, position, ctx, token);
        // the latency of a suggestion the user sees: not of one superseded or answered empty
        const shown = Array.isArray(result) ? result.length : (result?.items.length ?? 0);
        if (shown > 0 && !token.isCancellationRequested) {
          lastMs = Date.now() - t0;
          refreshStatus();
        }
        return result;
      },
    },
  };
  // The edit commands' `when` clauses test `editorLangId in diffill.languages`: the languages this client serves.
  await vscode.commands.executeCommand("setContext", "diffill.languages", s.languages);
  client = new LanguageClient("diffill", "Diffill", serverProcess, clientOptions);
  context.subscriptions.push({ dispose: () => void client?.stop() });
  await client.start(); // resolves once the server answered initialize and the providers are registered
  server = "running";
  refreshStatus();
  // after that: a crash ("stopped") and the client's own restart
  context.subscriptions.push(
    client.onDidChangeState((e) => {
      server = e.newState === State.Running ? "running" : e.newState === State.Starting ? "starting" : "stopped";
      refreshStatus();
    }),
  );
}

/** Run one of EDIT_COMMANDS on the active editor with a cancellable progress notification; show the result. */
async function runEditCommand(id: string) {
  const editor = vscode.window.activeTextEditor;
  if (editor === undefined) {
    void vscode.window.showWarningMessage("Diffill: no active editor");
    return;
  }
  const lc = client;
  if (lc === undefined || !lc.isRunning()) {
    void vscode.window.showErrorMessage("Diffill: the language server is not running");
    return;
  }
  const c2p = lc.code2ProtocolConverter;
  const { progress, request } = EDIT_COMMANDS[id];
  const params = request({
    uri: c2p.asUri(editor.document.uri),
    selection: c2p.asRange(editor.selection),
    selections: editor.selections.map((sel) => c2p.asRange(sel)),
    cursor: c2p.asPosition(editor.selection.active),
  });
  const location = vscode.ProgressLocation.Notification;
  const options = { location, title: `Diffill: ${progress}…`, cancellable: true };
  await vscode.window.withProgress(options, async (_progress, token) => {
    try {
      const notice = resultNotice(await lc.sendRequest(ExecuteCommandRequest.type, params, token));
      if (notice.level === "info") {
        void vscode.window.showInformationMessage(notice.text);
      } else {
        void vscode.window.showWarningMessage(notice.text);
      }
    } catch (err) {
      // A cancelled request is the user's doing, not an error; an edit applied before the cancel is still shown.
      const cancelled = err instanceof ResponseError && err.code === LSPErrorCodes.RequestCancelled;
      if (cancelled || token.isCancellationRequested) {
        return;
      }
      void vscode.window.showErrorMessage(`Diffill: ${err instanceof Error ? err.message : String(err)}`);
    }
  });
}

export async function activate(context: vscode.ExtensionContext) {
  status = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  status.command = "diffill.toggle";
  context.subscriptions.push(status);
  context.subscriptions.push(
    vscode.commands.registerCommand("diffill.toggle", async () => {
      const cfg = vscode.workspace.getConfiguration("diffill");
      await cfg.update("enable", !settings().enable, vscode.ConfigurationTarget.Global);
    }),
    vscode.commands.registerCommand("diffill.trigger", () =>
      vscode.commands.executeCommand("editor.action.inlineSuggest.trigger"),
    ),
    ...Object.keys(EDIT_COMMANDS).map((id) => vscode.commands.registerCommand(id, () => runEditCommand(id))),
    vscode.workspace.onDidChangeConfiguration(async (e) => {
      if (!e.affectsConfiguration("diffill")) {
        return;
      }
      refreshStatus();
      await client?.sendNotification("workspace/didChangeConfiguration", { settings: serverOptions(settings()) });
    }),
  );
  refreshStatus();
  try {
    await startClient(context);
  } catch (err) {
    server = "stopped";
    refreshStatus();
    void vscode.window.showErrorMessage(`Diffill: could not start the language server: ${err}`);
  }
}

export async function deactivate() {
  await client?.stop();
}

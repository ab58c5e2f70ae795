// Diffill for VS Code: starts `diffill lsp` (or a configured command) and lets VS Code's standard inline
// completion (ghost text) ask it for suggestions. Status bar: on/off, backend, last latency.
import * as vscode from "vscode";
import { LanguageClient, LanguageClientOptions, ServerOptions } from "vscode-languageclient/node";
import { readSettings, serverCommand, serverOptions, statusText } from "./logic";

let client: LanguageClient | undefined;
let status: vscode.StatusBarItem;
let lastMs: number | null = null;

function settings() {
  const cfg = vscode.workspace.getConfiguration("diffill");
  return readSettings((key) => cfg.get(key));
}

function refreshStatus() {
  const s = settings();
  status.text = statusText(s.enable, s.serverUrl.trim() || "local", lastMs);
  status.tooltip = "Diffill: click to toggle inline completions";
  status.show();
}

async function startClient(context: vscode.ExtensionContext) {
  const s = settings();
  const { command, args } = serverCommand(s);
  const server: ServerOptions = { command, args };
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
        lastMs = Date.now() - t0;
        refreshStatus();
        return result;
      },
    },
  };
  client = new LanguageClient("diffill", "Diffill", server, clientOptions);
  await client.start();
  context.subscriptions.push({ dispose: () => void client?.stop() });
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
    void vscode.window.showErrorMessage(`Diffill: could not start the language server: ${err}`);
  }
}

export async function deactivate() {
  await client?.stop();
}

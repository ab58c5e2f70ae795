"""The VS Code extension end to end in a real VS Code build (code-server), driven as a user drives it.

Contract: installs the packed extension (`diffill.vsix`) into a code-server of its own (temporary user-data
and extensions dirs, `--auth none`, telemetry off, bound to 127.0.0.1 on a port the OS picks) whose settings
point `diffill.pythonPath` at this checkout's Python; drives headless Chromium over the DevTools protocol
(keystrokes as a keyboard sends them, the DOM read back, screenshots); and checks what a user would notice:

1. typing in a Python file shows ghost text, and the status bar the latency ("Diffill local N ms");
2. typing the suggestion's first characters, a space among them, keeps the rest on screen, and no completion
   list opens over it (the trigger characters "." and " " would open one if the server's completion
   fallback answered VS Code);
3. Ctrl+Right (VS Code's accept-next-word) takes the next word, Tab the rest, and Ctrl+S writes exactly
   what was on screen to disk;
4. "Diffill: Fill holes" from the command palette fills a `<FILL_ME>` and the saved file has the filled line.

Every wait is bounded polling. A failure exits 1 with the reason and `failure.png`; the screenshots are in
--out (git-ignored). tests/vscode_e2e/setup.sh installs code-server and Chromium and prints the launcher.

    python tests/vscode_e2e/run.py --code-server "$(bash tests/vscode_e2e/setup.sh)"
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parents[2]
VIEWPORT = (1100, 640)  # CSS pixels: small enough for a README screenshot, wide enough for the status bar

POINT = (  # the user types "        self." on the blank line 4 (the shipped model answers "y = y")
    "class Point:\n"
    "    def __init__(self, x, y):\n"
    "        self.x = x\n"
    "\n"
    "\n"
    "    def norm(self):\n"
    "        return (self.x ** 2 + self.y ** 2) ** 0.5\n"
)
TYPED = "        self."
HOLE_LINE = "        self.y = "  # the shipped model fills "y"
HOLES = (
    "class Point:\n"
    "    def __init__(self, x, y):\n"
    "        self.x = x\n"
    f"{HOLE_LINE}<FILL_ME>\n"
)


class E2EError(Exception):
    """Something a user would see is missing or wrong."""


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    """Poll `check` every 100 ms until it returns something truthy; E2EError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise E2EError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


# --- processes --------------------------------------------------------------------------------------------


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `cmd` in its own process group (so stop() ends its children too), output to `log`."""
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def log_match(proc: subprocess.Popen, log: Path, pattern: str, what: str, timeout: float) -> re.Match:
    def check():
        if proc.poll() is not None:
            raise E2EError(f"{what}: the process exited ({proc.returncode}); its log {log}:\n{log.read_text()}")
        return re.search(pattern, log.read_text(errors="replace"))
    return wait_for(what, check, timeout)


def code_server_settings(python: Path) -> dict[str, Any]:
    """User settings: the extension's server is this checkout's; nothing else opens over the editor."""
    return {
        "diffill.pythonPath": str(python),
        "telemetry.telemetryLevel": "off",
        "update.mode": "none",
        "workbench.startupEditor": "none",
        "workbench.tips.enabled": False,
        "workbench.welcomePage.walkthroughs.openOnInstall": False,
        "security.workspace.trust.enabled": False,
        "extensions.ignoreRecommendations": True,
        "chat.disableAIFeatures": True,  # no chat panel beside the editor
        "workbench.secondarySideBar.defaultVisibility": "hidden",
        "files.autoSave": "off",  # this build saves after a delay by default; the test saves with Ctrl+S
    }


def isolated_env(tmp: Path) -> dict[str, str]:
    """The environment of code-server and Chromium: what they keep under XDG dirs (code-server's config and
    logs, Chromium's crash reports) and their temporary files and sockets go into tmp, not the user's home
    or /tmp; and no extension gallery for code-server (its default is open-vsx.org): nothing is fetched from
    outside this machine."""
    (tmp / "tmp").mkdir(exist_ok=True)
    xdg = {f"XDG_{kind.upper()}_HOME": str(tmp / "home" / kind) for kind in ("config", "data", "cache", "state")}
    return {**os.environ, **xdg, "TMPDIR": str(tmp / "tmp"), "EXTENSIONS_GALLERY": "{}"}


def start_code_server(code_server: str, vsix: Path, python: Path, tmp: Path) -> tuple[subprocess.Popen, str]:
    """Install the extension, start code-server on a free port; -> (process, base URL)."""
    user_data, extensions = tmp / "user-data", tmp / "extensions"
    (user_data / "User").mkdir(parents=True)
    (user_data / "User" / "settings.json").write_text(json.dumps(code_server_settings(python), indent=1))
    env = isolated_env(tmp)
    dirs = ["--user-data-dir", str(user_data), "--extensions-dir", str(extensions)]
    subprocess.run([code_server, *dirs, "--install-extension", str(vsix)], env=env, check=True,
                   stdout=subprocess.DEVNULL, timeout=120)
    if not list(extensions.glob("diffill.diffill-*")):
        raise E2EError(f"code-server did not install {vsix}")
    log = tmp / "code-server.log"
    proc = start([code_server, *dirs, "--bind-addr", "127.0.0.1:0", "--auth", "none", "--disable-telemetry",
                  "--disable-update-check", "--disable-workspace-trust", "--disable-getting-started-override",
                  "--config", str(tmp / "code-server.yaml"), str(tmp / "workspace")], log, env)
    m = log_match(proc, log, r"HTTP server listening on (http://127\.0\.0\.1:\d+)", "code-server to listen", 60)
    return proc, m.group(1)


def start_chromium(chromium: str, tmp: Path) -> tuple[subprocess.Popen, str]:
    """Headless Chromium with the DevTools protocol on a free port; -> (process, its first tab's ws URL)."""
    profile = tmp / "chromium"
    proc = start([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--no-default-browser-check", "--remote-debugging-port=0", f"--user-data-dir={profile}",
                  f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}", "about:blank"], tmp / "chromium.log",
                 isolated_env(tmp))
    m = log_match(proc, tmp / "chromium.log", r"DevTools listening on ws://127\.0\.0\.1:(\d+)/",
                  "Chromium's DevTools port", 30)
    with urllib.request.urlopen(f"http://127.0.0.1:{m.group(1)}/json/list", timeout=10) as r:
        pages = [t for t in json.load(r) if t["type"] == "page"]
    return proc, pages[0]["webSocketDebuggerUrl"]


# --- the page ---------------------------------------------------------------------------------------------

# key -> (DOM `code`, Windows virtual key code) for the keys this test presses that are not letters
SPECIAL_KEYS = {
    "Enter": ("Enter", 13), "Tab": ("Tab", 9), "Escape": ("Escape", 27), "ArrowRight": ("ArrowRight", 39),
    " ": ("Space", 32),
    ".": ("Period", 190), ":": ("Semicolon", 186),
}
CTRL, SHIFT = 2, 8  # CDP modifier bits

# The ghost text of the editor with focus: VS Code draws the suggestion's first line as a decoration inside the
# view line and further lines as a view zone (`.ghost-text`); spaces come as U+00A0.
GHOST_TEXT_JS = """(() => {
  const ed = document.querySelector('.monaco-editor.focused');
  if (!ed) return null;
  const first = [...ed.querySelectorAll('.ghost-text-decoration')].map(e => e.textContent).join('');
  const more = [...ed.querySelectorAll('.ghost-text .view-line')].map(e => e.textContent);
  return [first, ...more].join('\\n').replace(/\\u00a0/g, ' ');
})()"""
SUGGEST_WIDGET_JS = "!!document.querySelector('.editor-widget.suggest-widget.visible')"
STATUS_JS = """[...document.querySelectorAll('.statusbar-item')].map(e => e.textContent.trim())
  .find(t => t.includes('Diffill')) || null"""
QUICK_INPUT_JS = "!!document.activeElement?.closest('.quick-input-widget')"  # Quick Open, palette, Go to Line
QUICK_INPUT_ROWS_JS = "[...document.querySelectorAll('.quick-input-list .monaco-list-row')].map(r => r.textContent)"
NOTIFICATIONS_JS = "[...document.querySelectorAll('.notification-list-item-message')].map(e => e.textContent)"


class Page:
    """One Chromium tab over the DevTools protocol (JSON over a websocket): a call returns its result; the
    protocol's events are never enabled, so every message read is an answer."""

    def __init__(self, ws: ClientConnection, out: Path):
        self.ws = ws
        self.out = out
        self.last_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.last_id += 1
        self.ws.send(json.dumps({"id": self.last_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.last_id:
                if "error" in msg:
                    raise E2EError(f"DevTools {method}: {msg['error']}")
                return msg["result"]

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise E2EError(f"in the page: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_js(self, what: str, expression: str, timeout: float) -> Any:
        return wait_for(what, lambda: self.js(expression), timeout)

    def press(self, key: str, modifiers: int = 0) -> None:
        """One key as the keyboard sends it: keyDown (with its text, if it types one) and keyUp."""
        if key in SPECIAL_KEYS:
            code, vk = SPECIAL_KEYS[key]
        elif key.isalnum() and len(key) == 1:
            code, vk = (f"Digit{key}" if key.isdigit() else f"Key{key.upper()}"), ord(key.upper())
        else:
            raise ValueError(f"no key code for {key!r}")
        text = key if len(key) == 1 and not modifiers & CTRL else ""
        if key == ":":
            modifiers |= SHIFT
        common = {"key": key, "code": code, "windowsVirtualKeyCode": vk, "modifiers": modifiers}
        self.call("Input.dispatchKeyEvent", type="keyDown" if text else "rawKeyDown", text=text, **common)
        self.call("Input.dispatchKeyEvent", type="keyUp", **common)

    def type(self, text: str) -> None:
        for ch in text:
            self.press(ch)

    def screenshot(self, name: str) -> Path:
        path = self.out / f"{name}.png"
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path


# --- the user's session ----------------------------------------------------------------------------------


def quick_input(page: Page, key: str, modifiers: int, text: str, row: str | None = None) -> None:
    """Open a quick input (Quick Open, command palette, Go to Line) with its key, type `text`, wait for a row
    holding `row` if given, Enter."""
    page.press(key, modifiers)
    page.wait_js("the quick input to have focus", QUICK_INPUT_JS, 30)
    page.type(text)
    if row is not None:
        page.wait_js(f"{row!r} in the quick input", f"({QUICK_INPUT_ROWS_JS}).some(t => t.includes({json.dumps(row)}))",
                     30)
    page.press("Enter")
    page.wait_js("the quick input to close", f"!{QUICK_INPUT_JS}", 30)


def open_file(page: Page, name: str) -> None:
    """Quick Open (Ctrl+P), the file's name, Enter; then wait until its editor has focus."""
    quick_input(page, "p", CTRL, name, row=name)
    page.wait_js(f"the editor of {name} to have focus",
                 f"document.querySelector('.tab.active')?.textContent.includes({json.dumps(name)}) && "
                 "!!document.querySelector('.monaco-editor.focused')", 30)


def go_to_line(page: Page, line: int) -> None:
    """Ctrl+G, the line number, Enter: the cursor at the line's start."""
    quick_input(page, "g", CTRL, str(line))
    page.wait_js("the editor to have focus again", "!!document.querySelector('.monaco-editor.focused')", 30)


def save_and_read(page: Page, path: Path, before: str) -> str:
    """Ctrl+S; -> the file's text once it differs from `before`."""
    page.press("s", CTRL)
    return wait_for(f"{path.name} to be saved", lambda: (t := path.read_text()) != before and t, 30)


def no_suggest_widget(page: Page, what: str, seconds: float = 1.0) -> None:
    """Watch for `seconds`: the suggest widget (a completion list) must not open over the ghost text."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if page.js(SUGGEST_WIDGET_JS):
            page.screenshot("failure-suggest-widget")
            raise E2EError(f"{what}: a completion list opened over the ghost text")
        time.sleep(0.1)


def wait_for_server(page: Page) -> None:
    """The status bar says "Diffill local" once the server has answered `initialize` ("Diffill starting"
    before): until then nothing asks it, and what is typed gets no suggestion."""
    page.wait_js("the language server to be running (status bar)",
                 f"(t => t && t.includes('Diffill local') && t)({STATUS_JS})", 60)


def accepted_line(page: Page, path: Path, before: str) -> str:
    """Save (Ctrl+S) and -> line 4 as saved, after the text typed into it."""
    line = save_and_read(page, path, before).split("\n")[3]
    if not line.startswith(TYPED):
        raise E2EError(f"line 4 is {line!r}, not what was typed")
    return line[len(TYPED):]


def check_ghost_text_and_accept(page: Page, path: Path) -> None:
    """Scenarios 1-3 in point.py: type; see ghost text and the latency; type through the suggestion's start,
    a space included, and still see the rest; accept the next word (Ctrl+Right), then the rest (Tab); save."""
    open_file(page, path.name)
    wait_for_server(page)
    go_to_line(page, 4)
    page.type(TYPED)  # "." is a completion trigger character
    shown = page.wait_js("ghost text after typing", GHOST_TEXT_JS, 60)
    page.screenshot("1-ghost-text")
    print(f"ghost text: {shown!r}")
    no_suggest_widget(page, f"after typing {TYPED.strip()!r}")
    status = page.wait_js("the latency in the status bar",
                          f"(t => t && /Diffill local \\d+ ms/.test(t) && t)({STATUS_JS})", 10)
    print(f"status bar: {status!r}")

    # Typing what the ghost text shows keeps the rest on screen (the server answers it from its cache, at once).
    # A space is a completion trigger too: a completion list holding the same text would open over the ghost
    # text, and Tab would accept the list's item instead.
    through = shown[: shown.find(" ") + 1] or shown[:1]
    page.type(through)
    rest = wait_for(f"the ghost text to show the rest after typing {through!r}",
                    lambda: (g := page.js(GHOST_TEXT_JS)) == shown[len(through):] and g, 10)
    no_suggest_widget(page, f"after typing through {through!r}")
    page.screenshot("2-typed-through")

    page.press("ArrowRight", CTRL)  # editor.action.inlineSuggest.acceptNextWord
    # the command is asynchronous: the ghost text shrinks (or goes) once the word is in the document
    wait_for("the ghost text to change after Ctrl+Right", lambda: page.js(GHOST_TEXT_JS) != rest, 10)
    word = accepted_line(page, path, POINT)[len(through):]
    if not (word and rest.startswith(word)):
        raise E2EError(f"accept next word took {word!r} of the ghost text {rest!r}")
    print(f"typed through {through!r}, accepted next word {word!r}")
    last = page.js(GHOST_TEXT_JS)
    if not last:
        raise E2EError(f"the suggestion {shown!r} ended after a word: Tab was not exercised")
    saved = path.read_text()
    page.press("Tab")  # editor.action.inlineSuggest.commit
    wait_for("the ghost text to go after Tab", lambda: not page.js(GHOST_TEXT_JS), 10)
    page.screenshot("3-accepted")
    line = accepted_line(page, path, saved)
    print(f"accepted with Tab: {last!r}")
    if line != through + word + last:
        raise E2EError(f"after Tab line 4 is {TYPED + line!r}; on screen was {TYPED + through + word + last!r}")
    lines = POINT.split("\n")
    lines[3] = TYPED + line
    if path.read_text() != "\n".join(lines):
        raise E2EError(f"lines other than the 4th changed:\n{path.read_text()}")


def check_fill_holes(page: Page, path: Path) -> None:
    """Scenario 4 (run first): "Diffill: Fill holes" from the command palette; the saved file has the hole
    filled."""
    open_file(page, path.name)
    wait_for_server(page)
    quick_input(page, "p", CTRL | SHIFT, "Diffill: Fill holes", row="Diffill: Fill holes")
    # the progress notification ("Diffill: Filling holes…") goes, the result's comes once the edit is applied;
    # this is the run's first request to the engine, so it also waits for the model to load
    notice = page.wait_js("the command's result notification",
                          f"({NOTIFICATIONS_JS}).find(t => t.startsWith('Diffill: ') && !t.endsWith('…')) || null",
                          120)
    print(f"notification: {notice!r}")
    text = save_and_read(page, path, HOLES)
    page.screenshot("0-fill-holes")
    line = text.split("\n")[3]
    if "<FILL_ME>" in text or not (line.startswith(HOLE_LINE) and line[len(HOLE_LINE):].strip()):
        raise E2EError(f"fill holes: the saved file is\n{text}")
    if text.split("\n")[:3] != HOLES.split("\n")[:3]:
        raise E2EError(f"fill holes changed the lines before the hole:\n{text}")
    print(f"filled: {line.strip()!r}")
    page.press("Escape")  # hides the notification toast (notifications.hideToasts)
    page.wait_js("the notification to hide", f"!({NOTIFICATIONS_JS}).length", 10)


def run_session(a: argparse.Namespace, tmp: Path) -> None:
    """Start code-server and Chromium, run the scenarios, stop both; a failure leaves failure.png in a.out."""
    workspace = tmp / "workspace"
    workspace.mkdir()
    (workspace / "point.py").write_text(POINT)
    (workspace / "holes.py").write_text(HOLES)
    with ExitStack() as stack:
        server, url = start_code_server(a.code_server, a.vsix, a.python, tmp)
        stack.callback(stop, server)
        browser, ws_url = start_chromium(a.chromium, tmp)
        stack.callback(stop, browser)
        page = Page(stack.enter_context(connect(ws_url, max_size=None, open_timeout=30)), a.out)
        try:
            page.call("Emulation.setDeviceMetricsOverride", width=VIEWPORT[0], height=VIEWPORT[1],
                      deviceScaleFactor=1, mobile=False)
            page.call("Emulation.setFocusEmulationEnabled", enabled=True)  # headless: the tab keeps focus
            page.call("Page.navigate", url=f"{url}/?folder={workspace}")
            page.wait_js("the workbench", "!!document.querySelector('.monaco-workbench .part.editor')", 60)
            # holes first: its command waits for the model to load, so the ghost text's latency is a warm one
            check_fill_holes(page, workspace / "holes.py")
            check_ghost_text_and_accept(page, workspace / "point.py")
        except E2EError:
            page.screenshot("failure")
            raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--code-server", required=True, help="code-server launcher (setup.sh prints it)")
    p.add_argument("--vsix", type=Path, default=ROOT / "editor-clients" / "vscode" / "diffill.vsix")
    p.add_argument("--python", type=Path, default=Path(sys.executable), help="Python with diffill installed")
    p.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "vscode_e2e" / "out", help="screenshots")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    for old in a.out.glob("*.png"):
        old.unlink()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="diffill-e2e-") as d:
        tmp = Path(d)
        try:
            run_session(a, tmp)
        except (E2EError, subprocess.SubprocessError, OSError) as e:
            # the Diffill output channel holds the language server's stderr
            logs = [tmp / "code-server.log", *(tmp / "user-data" / "logs").rglob("*Diffill*.log")]
            for log in filter(Path.exists, logs):
                print(f"--- {log.name} (end)\n{log.read_text(errors='replace')[-4000:]}", file=sys.stderr)
            print(f"VS Code e2e FAILED: {e}\nscreenshots: {a.out}", file=sys.stderr)
            return 1
    print(f"VS Code e2e passed in {time.monotonic() - t0:.1f} s; screenshots in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

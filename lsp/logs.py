"""Where the language server's logs go: to the client, as `window/logMessage` at their own level, so an editor
files them as logs. Neovim writes everything a server prints on stderr to lsp.log as [ERROR], so stderr is
left to what happens before a client is there to send to (and to crashes); `--log-file` sends everything
to a file instead.

Contract: `ClientLogHandler(server)` is a logging.Handler. Records before the client's first message wait
(at most MAX_WAITING, then the oldest are dropped); from then on each record is sent from the server's event
loop, whichever thread logged it (the engine's worker logs from its own). A record that cannot be sent (the
client is gone) is dropped; logging never raises, and sending never logs (no loops).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque

from lsprotocol import types

MAX_WAITING = 200

_TYPES = ((logging.ERROR, types.MessageType.Error), (logging.WARNING, types.MessageType.Warning),
          (logging.INFO, types.MessageType.Info))


def message_type(level: int) -> types.MessageType:
    return next((t for lv, t in _TYPES if level >= lv), types.MessageType.Log)


class ClientLogHandler(logging.Handler):
    def __init__(self, server, level: int = logging.INFO):
        super().__init__(level)
        self.server = server
        self.loop: asyncio.AbstractEventLoop | None = None
        self.waiting: deque[tuple[types.MessageType, str]] = deque(maxlen=MAX_WAITING)
        self._sending = threading.local()
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def connected(self, loop: asyncio.AbstractEventLoop) -> None:
        """The client has spoken: send what waited, and everything from now on."""
        self.loop = loop
        while self.waiting:
            self._send(*self.waiting.popleft())

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._sending, "busy", False):
            return  # a record logged while sending one (by the writer, say): dropped, never a loop
        try:
            item = (message_type(record.levelno), self.format(record))
        except Exception:
            return
        loop = self.loop
        if loop is None:
            self.waiting.append(item)
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._send(*item)
        elif not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._send, *item)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def _send(self, kind: types.MessageType, text: str) -> None:
        self._sending.busy = True
        try:
            self.server.window_log_message(types.LogMessageParams(type=kind, message=text))
        except Exception:
            pass  # the client is gone, or the writer is closed: nothing to tell it
        finally:
            self._sending.busy = False

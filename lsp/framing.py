"""The LSP base protocol's framing (`Content-Length: N\\r\\n\\r\\n` and N bytes of JSON), read from a byte
stream that may be malformed. Sans-I/O: `feed(bytes)` in, `next_event()` out; lsp/transport.py does the I/O.

Contract: `Deframer.next_event()` gives a `Body` (the bytes of one message), a `FramingError` (something was
skipped; one per run of garbage), or None when it needs more bytes. It never raises and never holds more
than `max_body` bytes of a body plus a header line: a declared length over `max_body` is an error and the
body is never read into memory.

Reading is lenient where the intent is clear: header names are case-insensitive (LSP base protocol), any
spaces or tabs may surround the colon and the value, and lines may end in LF alone. Writing stays strict
(pygls writes `Content-Length: N\\r\\n\\r\\n`; `frame` here does the same).

After a framing error the reader resynchronises on the next `Content-Length` header rather than exiting:
exiting would rely on the client restarting the server, and not every client does (Neovim's built-in client
does not; VS Code's gives up after a few restarts), so one bad message would end completions for the
session and lose every open document. Resynchronising costs only the malformed message, and it is safe: a
header can end a garbage line (`...}Content-Length: 52`) but can never occur inside a JSON body followed by
a raw line break, because JSON escapes line breaks inside strings. A body longer than its declared length
leaves bytes behind; the caller hands them back with `unread` once it has decoded the body's first JSON value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fim_server.shared.protocol import MAX_MESSAGE_BYTES

MAX_HEADER_LINE = 1024  # bytes; real header lines are ~30 bytes
_KEEP = 64  # bytes kept of an overlong garbage line: enough for a `Content-Length: N` header at its end
_HEADER = re.compile(rb"[ \t]*([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]*:[ \t]*(.*?)[ \t]*")
_LENGTH_AT_END = re.compile(rb"content-length[ \t]*:[ \t]*\d+[ \t]*$", re.IGNORECASE)
_DIGITS = re.compile(rb"\d{1,20}")


@dataclass(frozen=True)
class Body:
    data: bytes


@dataclass(frozen=True)
class FramingError:
    message: str


def frame(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


class Deframer:
    def __init__(self, max_body: int = MAX_MESSAGE_BYTES):
        self.max_body = max_body
        self._buf = bytearray()
        self._need: int | None = None  # reading a body of this many bytes
        self._length: int | None = None  # Content-Length of the header block being read, if valid
        self._in_header = False  # a header line of this block was read
        self._lost = False  # skipping garbage until a Content-Length header

    def feed(self, data: bytes) -> None:
        self._buf += data

    def unread(self, data: bytes) -> None:
        """Put back bytes that followed a body's JSON value: the start of the next frame."""
        self._buf[:0] = data

    def next_event(self) -> Body | FramingError | None:
        while True:
            if self._need is not None:
                if len(self._buf) < self._need:
                    return None
                body = bytes(self._buf[:self._need])
                del self._buf[:self._need]
                self._need = None
                return Body(body)
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) <= MAX_HEADER_LINE:
                    return None
                del self._buf[:-_KEEP]  # an overlong line: only its end can hold the next header
                if not self._lost:
                    return self._lose(f"a header line over {MAX_HEADER_LINE} bytes")
                continue
            line = bytes(self._buf[:nl]).rstrip(b"\r")
            del self._buf[:nl + 1]
            event = self._line(line)
            if event is not None:
                return event

    def _lose(self, why: str) -> FramingError:
        self._lost, self._length, self._in_header = True, None, False
        return FramingError(f"{why}; skipping to the next Content-Length header")

    def _line(self, line: bytes) -> FramingError | None:
        at_end = _LENGTH_AT_END.search(line)
        if self._lost or (at_end is not None and at_end.start() > 0):
            if at_end is None:
                return None  # still skipping
            skipped = at_end.start()
            was_lost, self._lost = self._lost, False
            self._length, self._in_header = None, False
            self._line(at_end.group())
            return None if was_lost else FramingError(f"{skipped} bytes before a header were skipped")
        if not line.strip():
            if not self._in_header:
                return None  # a stray blank line between messages
            length = self._length
            self._length, self._in_header = None, False
            if length is None:
                return self._lose("a header block without a valid Content-Length")
            if length > self.max_body:
                return self._lose(f"a body of {length} bytes is over the {self.max_body}-byte cap")
            self._need = length
            return None
        m = _HEADER.fullmatch(line)
        if m is None:
            return self._lose(f"{line[:40]!r} is not a header")
        self._in_header = True
        name, value = m.groups()
        if name.lower() == b"content-length":
            self._length = int(value) if _DIGITS.fullmatch(value) else None
        return None

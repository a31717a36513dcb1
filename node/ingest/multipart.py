"""An incremental `multipart/related` body parser (RFC 2046 5.1.1, RFC 2387) for STOW-RS.

The body arrives in chunks of any size; the parser holds at most one delimiter's length of it
plus one part's header lines, and hands each part's content on as it goes, so a request of
hundreds of megabytes never sits in memory. Lines may end in CRLF (the RFC) or a bare LF
(clients built on text tools); the line break before a delimiter belongs to the delimiter.
"""

from __future__ import annotations

from email.message import Message
from typing import Protocol

# RFC 2046 5.1.1 allows 70 characters; Orthanc's DICOMweb plugin sends 73 (two UUIDs), so be lenient
MAX_BOUNDARY = 256
MAX_HEADER_BYTES = 16 * 1024  # the header lines of one part; more is not a STOW-RS client
_BOUNDARY_LINE_SLACK = 1024  # transport padding allowed after a delimiter, before its line break


class MalformedMultipart(ValueError):
    """The body is not a well-formed multipart body; the message says where it breaks."""


class PartSink(Protocol):
    """Receives the parts of a body, in order; `data` may be called many times per part."""

    def begin(self, headers: dict[str, str]) -> None: ...
    def data(self, chunk: bytes) -> None: ...
    def end(self) -> None: ...


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """The media type (lower case) and its parameters (names lower case, values unquoted)."""
    message = Message()
    message["content-type"] = value
    params = message.get_params(header="content-type") or []
    if not params or "/" not in params[0][0]:
        return "", {}
    media_type = params[0][0].strip().lower()
    return media_type, {str(k).lower(): str(v) for k, v in params[1:]}


def boundary_of(params: dict[str, str]) -> bytes:
    """The `boundary` parameter of a multipart Content-Type, checked as RFC 2046 5.1.1 asks."""
    boundary = params.get("boundary", "")
    if not boundary:
        raise MalformedMultipart("the Content-Type has no boundary parameter")
    if len(boundary) > MAX_BOUNDARY or not boundary.isascii() or boundary.endswith(" "):
        raise MalformedMultipart(
            f"boundary {boundary[:80]!r} is not valid: 1-70 ASCII characters (RFC 2046 5.1.1), not ending in a space"
        )
    return boundary.encode("ascii")


_PREAMBLE, _AFTER_DELIMITER, _HEADERS, _BODY, _EPILOGUE = range(5)


class MultipartParser:
    """Feed the body with `feed()`, then call `close()`; parts go to `sink` as they arrive.

    Raises MalformedMultipart from `feed()` or `close()` at the first byte that breaks the
    syntax; the sink has then seen `begin` without `end` for a part cut short.
    """

    def __init__(self, boundary: bytes, sink: PartSink) -> None:
        self._dash_boundary = b"--" + boundary
        self._delimiter = b"\n" + self._dash_boundary  # a CR before it is stripped from the part
        self._sink = sink
        self._buffer = bytearray()
        self._state = _PREAMBLE
        self._at_start = True  # the body may open with the dash-boundary, without a line break
        self._headers: list[str] = []
        self._header_bytes = 0
        self.parts = 0

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._state == _EPILOGUE or not chunk:
            return  # the epilogue is ignored (RFC 2046 5.1.1)
        self._buffer += chunk
        while self._step():
            pass

    def close(self) -> None:
        """The body ended: anything but a closing delimiter before this is malformed."""
        if self._state == _EPILOGUE:
            return
        if self._state == _PREAMBLE:
            raise MalformedMultipart(
                f"no delimiter line '{self._dash_boundary.decode()}' in the body"
                " (does the body use the Content-Type's boundary?)"
            )
        where = "in a part's header lines" if self._state == _HEADERS else "inside a part"
        raise MalformedMultipart(
            f"the body ends {where}, before the closing delimiter '{self._dash_boundary.decode()}--'"
        )

    # -- the states ------------------------------------------------------------------------------

    def _step(self) -> bool:
        """Advance through the buffer; False when more bytes are needed."""
        if self._state == _BODY:
            return self._body()
        if self._state == _PREAMBLE:
            return self._preamble()
        if self._state == _AFTER_DELIMITER:
            return self._after_delimiter()
        if self._state == _HEADERS:
            return self._header_line()
        self._buffer.clear()  # epilogue
        return False

    def _preamble(self) -> bool:
        buf = self._buffer
        if self._at_start:
            if len(buf) < len(self._dash_boundary):
                if self._dash_boundary.startswith(bytes(buf)):
                    return False
            elif buf.startswith(self._dash_boundary):
                del buf[: len(self._dash_boundary)]
                self._state = _AFTER_DELIMITER
                return True
            self._at_start = False
        found = buf.find(self._delimiter)
        if found < 0:
            # keep what could be the start of a delimiter; the rest is preamble, ignored
            del buf[: max(0, len(buf) - len(self._delimiter) + 1)]
            return False
        del buf[: found + len(self._delimiter)]
        self._state = _AFTER_DELIMITER
        return True

    def _after_delimiter(self) -> bool:
        buf = self._buffer
        if len(buf) < 2:
            return False
        if buf[:2] == b"--":
            self._state = _EPILOGUE
            buf.clear()
            return False
        line_end = buf.find(b"\n")
        if line_end < 0:
            if len(buf) > _BOUNDARY_LINE_SLACK or buf.strip(b" \t\r"):
                raise MalformedMultipart(self._after_delimiter_problem(bytes(buf[:40])))
            return False
        padding = bytes(buf[:line_end]).rstrip(b"\r")
        if padding.strip(b" \t"):
            raise MalformedMultipart(self._after_delimiter_problem(padding[:40]))
        del buf[: line_end + 1]
        self._state = _HEADERS
        self._headers = []
        self._header_bytes = 0
        return True

    def _after_delimiter_problem(self, found: bytes) -> str:
        return (
            f"{found!r} follows the delimiter '{self._dash_boundary.decode()}' where a line break"
            " or '--' belongs (is the boundary also part of the content?)"
        )

    def _header_line(self) -> bool:
        buf = self._buffer
        line_end = buf.find(b"\n")
        if line_end < 0:
            if self._header_bytes + len(buf) > MAX_HEADER_BYTES:
                raise MalformedMultipart(f"part {self.parts + 1}: header lines longer than {MAX_HEADER_BYTES} bytes")
            return False
        self._header_bytes += line_end + 1
        if self._header_bytes > MAX_HEADER_BYTES:
            raise MalformedMultipart(f"part {self.parts + 1}: header lines longer than {MAX_HEADER_BYTES} bytes")
        line = bytes(buf[:line_end]).rstrip(b"\r").decode("latin-1")
        del buf[: line_end + 1]
        if line:
            if line[0] in " \t" and self._headers:
                self._headers[-1] += " " + line.strip()  # folded header line (RFC 5322 2.2.3)
            else:
                self._headers.append(line)
            return True
        headers: dict[str, str] = {}
        for entry in self._headers:
            name, colon, value = entry.partition(":")
            if not colon or not name.strip():
                raise MalformedMultipart(f"part {self.parts + 1}: header line {entry[:80]!r} has no name")
            headers[name.strip().lower()] = value.strip()
        self.parts += 1
        self._state = _BODY
        self._sink.begin(headers)
        return True

    def _body(self) -> bool:
        buf = self._buffer
        found = buf.find(self._delimiter)
        if found < 0:
            # hand on all but what could be a CR and the start of the next delimiter
            keep = len(self._delimiter)
            if len(buf) > keep:
                self._sink.data(bytes(buf[: len(buf) - keep]))
                del buf[: len(buf) - keep]
            return False
        end = found - 1 if found > 0 and buf[found - 1] == 0x0D else found
        if end:
            self._sink.data(bytes(buf[:end]))
        del buf[: found + len(self._delimiter)]
        self._sink.end()
        self._state = _AFTER_DELIMITER
        return True

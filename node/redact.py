"""Error texts without patient data: what an exception may say outside the results.

The node's own messages name tags, UIDs, sizes and settings, never values read from a data set.
Messages of other libraries do not keep to that: pydicom's "Unable to convert '<value>' to
'DA'", a highdicom ValueError quoting an attribute. So an exception's message is kept only when
it was raised in the node's own code (or in a configured pipeline module); for one raised inside
a library, only its type and where it was raised are told (`error_text`). Tracebacks in the log follow the same rule
(`format_exception`), and so do third-party log records and warnings (`withhold_values`):
anything quoted in them is replaced, since values are what libraries quote.
"""

from __future__ import annotations

import os
import re
import traceback
from pathlib import Path
from types import TracebackType

_NODE_PACKAGE = str(Path(__file__).resolve().parent)
_trusted: set[str] = set()  # files and package folders of configured pipelines (node.pipelines)
_QUOTED = re.compile(r"""b?'(?:[^'\\]|\\.)*'|b?"(?:[^"\\]|\\.)*\"""", re.DOTALL)
WITHHELD = "<withheld>"


def _raised_in_node(tb: TracebackType | None) -> bool:
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return False
    filename = last.tb_frame.f_code.co_filename
    return filename.startswith(_NODE_PACKAGE) or filename in _trusted or any(
        filename.startswith(folder + os.sep) for folder in _trusted)


def trust(path: Path) -> None:
    """Keep the messages of exceptions raised in this file, or in any file under this folder (a
    configured pipeline module or package: it is the node's code too, and must name tags, never
    values, as the node's does)."""
    _trusted.add(str(path))


def _origin(tb: TracebackType | None) -> str:
    frames = traceback.extract_tb(tb) if tb is not None else []
    if not frames:
        return ""
    last = frames[-1]
    return f" in {Path(last.filename).name}:{last.lineno}"


def error_text(exc: BaseException) -> str:
    """`Type: message` for an exception the node raised; `Type raised in file:line` for one a
    library raised, whose message may quote a value from the data set."""
    name = type(exc).__name__
    if _raised_in_node(exc.__traceback__) or exc.__traceback__ is None and type(exc).__module__.startswith("node."):
        message = str(exc)
        return f"{name}: {message}" if message else name
    return f"{name} raised{_origin(exc.__traceback__)} (message withheld: it may quote data set values)"


def format_exception(exc: BaseException) -> str:
    """A traceback for the log: every frame (file, line, function), each exception in the chain
    told by `error_text`, never a library's message."""
    lines: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    chain: list[BaseException] = []
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    for position, item in enumerate(reversed(chain)):
        if position:
            lines.append("The above exception led to:")
        lines.append("Traceback (most recent call last):")
        for frame in traceback.extract_tb(item.__traceback__):
            lines.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}')
        lines.append(error_text(item))
    return "\n".join(lines)


def withhold_values(text: str) -> str:
    """`text` with every quoted part replaced: third-party messages quote values."""
    return _QUOTED.sub(WITHHELD, text)

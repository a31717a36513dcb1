"""The shell commands of the documentation, as a reader sees them, and the marks that exempt one.

A command is a line of a fenced code block tagged `sh`, `bash`, `shell` or `console` (in a
`console` block only the lines after a `$ ` prompt), with backslash-continued lines joined.
Every other fenced block must name its language too (`text` for a diagram), and must not hold a
line that reads like a command: a command cannot hide from the test in an untagged block.

A command that cannot run here is exempted by an HTML comment on the line right above its
block, which a rendered page does not show:

    <!-- not testable here: REASON -->                   every command of the block
    <!-- not testable here (`make test`): REASON -->     commands that start with `make test`

A mark without a reason, or one that exempts no command, is an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SHELL_LANGUAGES = frozenset({"sh", "bash", "shell", "console"})
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
MARK = re.compile(r"^\s*<!--\s*not testable here(?:\s*\(`(?P<prefix>[^`]+)`\))?\s*:\s*(?P<reason>.*?)\s*-->\s*$")
MARK_LIKE = re.compile(r"not\s+testable", re.IGNORECASE)
# a line of a non-shell block that reads like a command a user types
COMMAND_LIKE = re.compile(
    r"^\s*(\$ |\.venv/bin/|\./|fracnode |make |storescu |echoscu |curl |docker |sudo |systemctl |"
    r"apt-get |pip |python3? -m |promtool |sqlite3 )"
)


class DocError(ValueError):
    """The documentation breaks the rules above; the message names the file and line."""


@dataclass(frozen=True)
class Command:
    path: Path
    line: int  # 1-based line of the command's first line
    text: str  # as printed (continuations joined with their backslashes and newlines)
    not_testable: str  # the reason, or "" for a command the test runs

    def where(self) -> str:
        return f"{self.path.name}:{self.line}"


@dataclass(frozen=True)
class _Mark:
    line: int
    prefix: str
    reason: str


def _block_commands(lines: list[tuple[int, str]], console: bool) -> list[tuple[int, str]]:
    commands: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in lines:
        line = raw.rstrip()
        if not pending:
            if console:
                if not line.lstrip().startswith("$ "):
                    continue  # output shown after a prompt
                line = line.lstrip()[2:]
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            start = number
        pending.append(line)
        if not line.endswith("\\"):
            commands.append((start, "\n".join(pending)))
            pending = []
    if pending:
        commands.append((start, "\n".join(pending)))
    return commands


def commands_in(path: Path, text: str | None = None) -> list[Command]:
    """Every shell command of one Markdown file, in order, each with its mark's reason (if any)."""
    source = path.read_text(encoding="utf-8") if text is None else text
    lines = source.splitlines()
    found: list[Command] = []
    stray: set[int] = set()  # marks seen outside blocks, until a block below takes them
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            if MARK.match(lines[index]):
                stray.add(index + 1)
            elif MARK_LIKE.search(lines[index]) and lines[index].lstrip().startswith("<!--"):
                raise DocError(f"{path}:{index + 1}: write a mark as `<!-- not testable here: REASON -->`")
            index += 1
            continue
        fence, indent = opening["fence"], opening["indent"]
        language = opening["info"].strip().split(" ")[0].lower()
        body: list[tuple[int, str]] = []
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            text_line = lines[end]
            body.append((end + 1, text_line.removeprefix(indent)))
            end += 1
        if end == len(lines):
            raise DocError(f"{path}:{index + 1}: code block never closed")
        marks = _marks_above(path, lines, index)
        stray -= {m.line for m in marks}
        if not language:
            raise DocError(f"{path}:{index + 1}: name the code block's language (`sh` for commands, `text` otherwise)")
        if language in SHELL_LANGUAGES:
            found += _marked(path, index + 1, _block_commands(body, language == "console"), marks)
        else:
            if marks:
                raise DocError(f"{path}:{marks[0].line}: a not-testable mark above a `{language}` block")
            for number, text_line in body:
                if COMMAND_LIKE.match(text_line):
                    raise DocError(
                        f"{path}:{number}: {text_line.strip()!r} reads like a command in a"
                        f" `{language}` block: put it in an `sh` block, where the test runs it"
                    )
        index = end + 1
    if stray:
        raise DocError(f"{path}:{min(stray)}: a not-testable mark must stand on the line right above a code block")
    return found


def _marks_above(path: Path, lines: list[str], fence_index: int) -> list[_Mark]:
    marks: list[_Mark] = []
    above = fence_index - 1
    while above >= 0 and MARK.match(lines[above]):
        found = MARK.match(lines[above])
        assert found is not None
        if not found["reason"]:
            raise DocError(f"{path}:{above + 1}: a not-testable mark must say why")
        marks.append(_Mark(above + 1, found["prefix"] or "", found["reason"]))
        above -= 1
    return marks


def _marked(path: Path, block_line: int, commands: list[tuple[int, str]], marks: list[_Mark]) -> list[Command]:
    used: set[_Mark] = set()
    result = []
    for number, text in commands:
        # the mark naming the longest start of the command wins over one for the whole block
        mark = next((m for m in sorted(marks, key=lambda m: -len(m.prefix)) if text.startswith(m.prefix)), None)
        if mark is not None:
            used.add(mark)
        result.append(Command(path, number, text, mark.reason if mark else ""))
    for mark in marks:
        if mark not in used:
            raise DocError(
                f"{path}:{mark.line}: the mark for `{mark.prefix}` matches no command of the block at line {block_line}"
            )
    return result

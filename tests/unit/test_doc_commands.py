"""How the documentation's commands are found, and how one is exempted: a command added to a page
is either run by tests/integration/test_doc_commands.py or carries a mark with a reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.doccommands import DocError, commands_in

PAGE = Path("page.md")


def found(text: str) -> list[tuple[int, str, str]]:
    return [(c.line, c.text, c.not_testable) for c in commands_in(PAGE, text)]


def test_a_new_unmarked_command_is_found_to_be_run():
    text = "Intro\n\n```sh\nmake serve   # starts it\n\n# a comment line\n.venv/bin/fracnode status\n```\n"
    assert found(text) == [(4, "make serve   # starts it", ""), (7, ".venv/bin/fracnode status", "")]


def test_continued_lines_form_one_command_and_indented_blocks_count():
    text = "- item\n\n  ```bash\n  curl -H 'A: b' \\\n       http://localhost:8080/x\n  ```\n"
    assert found(text) == [(4, "curl -H 'A: b' \\\n     http://localhost:8080/x", "")]


def test_console_blocks_run_the_prompted_lines_only():
    text = "```console\n$ .venv/bin/fracnode status\njobs:    none\n$ echo done\ndone\n```\n"
    assert [t for _, t, _ in found(text)] == [".venv/bin/fracnode status", "echo done"]


def test_a_mark_above_a_block_exempts_all_its_commands_with_the_reason():
    text = "<!-- not testable here: no Docker daemon -->\n```sh\ndocker build .\ndocker run x\n```\n"
    assert found(text) == [(3, "docker build .", "no Docker daemon"), (4, "docker run x", "no Docker daemon")]


def test_a_mark_naming_a_command_exempts_only_that_one():
    text = "<!-- not testable here (`make test`): it is this suite -->\n```sh\nmake serve\nmake test\n```\n"
    assert found(text) == [(3, "make serve", ""), (4, "make test", "it is this suite")]


@pytest.mark.parametrize(
    "text, says",
    [
        ("<!-- not testable here: -->\n```sh\nmake x\n```\n", "must say why"),
        ("<!-- not testable here (`make y`): why -->\n```sh\nmake x\n```\n", "matches no command"),
        ("<!-- not testable here: why -->\n\n```sh\nmake x\n```\n", "right above a code block"),
        ("<!-- not testable: why -->\n```sh\nmake x\n```\n", "write a mark as"),
        ("```\nmake x\n```\n", "name the code block's language"),
        ("```text\n.venv/bin/fracnode status\n```\n", "reads like a command"),
        ("<!-- not testable here: why -->\n```yaml\na: 1\n```\n", "above a `yaml` block"),
        ("```sh\nmake x\n", "never closed"),
    ],
)
def test_a_command_cannot_hide_from_the_test(text, says):
    with pytest.raises(DocError, match=says):
        commands_in(PAGE, text)

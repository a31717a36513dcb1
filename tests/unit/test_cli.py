"""The command line: where -c may go, and `config check` reporting every problem at once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node.cli import build_parser


def run(argv: list[str]) -> int:
    # not cli.main(): it resets SIGPIPE handling, which must not leak into the test process
    args = build_parser().parse_args(argv)
    return int(args.func(args))


@pytest.mark.parametrize(
    ("argv", "config"),
    [
        (["serve"], None),
        (["-c", "a.yaml", "serve"], "a.yaml"),
        (["serve", "-c", "b.yaml"], "b.yaml"),
        (["--config", "a.yaml", "serve", "--config", "b.yaml"], "b.yaml"),
        (["config", "check", "-c", "c.yaml"], "c.yaml"),
        (["status", "--limit", "3", "-c", "s.yaml"], "s.yaml"),
        (["echo", "pacs", "-c", "e.yaml"], "e.yaml"),
        (["send", "pacs", "f.dcm", "-c", "e.yaml"], "e.yaml"),
    ],
)
def test_config_option_is_accepted_before_or_after_the_command(argv: list[str], config: str | None) -> None:
    assert build_parser().parse_args(argv).config == config


def test_config_check_reports_field_and_reference_problems_in_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in [v for v in os.environ if v.startswith("FRACNODE_")]:
        monkeypatch.delenv(variable)
    path = tmp_path / "site.yaml"
    path.write_text("node:\n  aetitle: X\nroutes:\n  - {name: r, pipeline: p, destinations: [nowhere]}\n")
    assert run(["config", "check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "2 problem(s)" in out
    assert "node.aetitle (line 2): unknown setting 'aetitle'" in out
    assert "did you mean 'ae_title'?" in out
    assert "routes[0].destinations[0] (line 4): route 'r': unknown destination 'nowhere'" in out


def test_config_check_of_the_default_file_is_ok(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in [v for v in os.environ if v.startswith("FRACNODE_")]:
        monkeypatch.delenv(variable)
    default = Path(__file__).resolve().parents[2] / "config" / "fracnode.yaml"
    assert run(["config", "check", str(default)]) == 0
    assert "OK" in capsys.readouterr().out

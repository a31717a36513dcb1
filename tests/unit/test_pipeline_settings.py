"""Each pipeline owns its settings, `pipelines: {name: {...}}`; the old `cspine:` section still reads."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from node import pipelines
from node.config import Config, ConfigError, load, parse
from node.pipelines.cspine.settings import CSpineSettings
from tests.unit.test_cli import run

REPO = Path(__file__).resolve().parents[2]
DEFAULT_FILE = REPO / "config" / "fracnode.yaml"
CSPINE = "cspine-fracture"
SETTINGS = ("max_obliquity_deg", "max_slice_thickness_mm", "min_slices")


@pytest.fixture(autouse=True)
def builtin_pipelines() -> None:
    pipelines.load_modules([])


def test_the_default_file_spells_out_each_pipelines_own_defaults() -> None:
    config = load(DEFAULT_FILE, environ={})
    assert set(config.pipelines) == {CSPINE}  # radiograph-fracture has no settings
    assert pipelines.settings(config, CSPINE, CSpineSettings) == CSpineSettings()
    assert config.pipelines[CSPINE] == CSpineSettings().model_dump()
    assert pipelines.check_settings(config) == []


def test_a_pipelines_settings_are_its_section_with_defaults_for_the_rest() -> None:
    config = parse(f"pipelines:\n  {CSPINE}:\n    min_slices: 12\n", environ={})
    assert pipelines.settings(config, CSPINE, CSpineSettings) == CSpineSettings(min_slices=12)
    assert pipelines.settings(Config(), CSPINE, CSpineSettings) == CSpineSettings()


def test_the_old_cspine_section_is_read_with_a_deprecation_naming_the_new_key() -> None:
    config = parse("cspine:\n  min_slices: 12\n  max_obliquity_deg: 10\n", environ={})
    assert config.pipelines == {CSPINE: {"min_slices": 12, "max_obliquity_deg": 10}}
    assert pipelines.settings(config, CSPINE, CSpineSettings) == CSpineSettings(min_slices=12, max_obliquity_deg=10)
    (note,) = config.deprecations
    assert "'cspine:'" in note and f"pipelines: {{{CSPINE}: ...}}" in note
    assert parse(f"pipelines:\n  {CSPINE}:\n    min_slices: 12\n", environ={}).deprecations == ()


def test_the_old_section_is_read_from_the_environment_too() -> None:
    config = parse("", environ={"FRACNODE_CSPINE__MIN_SLICES": "12"})
    assert pipelines.settings(config, CSPINE, CSpineSettings).min_slices == 12
    assert config.deprecations


def test_old_and_new_section_together_are_refused() -> None:
    text = f"cspine:\n  min_slices: 12\npipelines:\n  {CSPINE}:\n    min_slices: 20\n"
    with pytest.raises(ConfigError, match=f"cspine: and pipelines.{CSPINE}: are both given"):
        parse(text, environ={})


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        (f"{CSPINE}: {{min_slices: 2}}", f"pipelines.{CSPINE}.min_slices: Input should be greater than or equal to 3"),
        (f"{CSPINE}: {{min_slice: 40}}",
         f"pipelines.{CSPINE}.min_slice: unknown setting; settings of {CSPINE}: {', '.join(sorted(SETTINGS))}"),
        ("radiograph-fracture: {threshold: 0.5}", "pipelines.radiograph-fracture: pipeline 'radiograph-fracture' has no settings"),
        ("cspine-fractur: {}", "pipelines.cspine-fractur: unknown pipeline 'cspine-fractur' (known: "),
    ],
    ids=["out-of-range", "misspelt", "no-settings", "unknown-pipeline"],
)
def test_a_bad_pipeline_section_is_a_problem_that_names_its_path(section: str, problem: str) -> None:
    config = parse(f"pipelines:\n  {section}\n", environ={})  # the pipeline, not the file, knows its settings
    (found,) = pipelines.check_settings(config)
    assert found.startswith(problem)
    assert found in pipelines.check(config)


def config_check(text: str, folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
                 ) -> tuple[int, str]:
    """`fracnode config check` of a file holding `text`, without the environment's FRACNODE_ settings."""
    for variable in [v for v in os.environ if v.startswith("FRACNODE_")]:
        monkeypatch.delenv(variable)
    path = folder / "site.yaml"
    path.write_text(text)
    return run(["config", "check", str(path)]), capsys.readouterr().out


def test_config_check_says_the_old_section_is_deprecated_and_where_it_goes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = textwrap.dedent(f"""\
        storage: {{data_dir: {tmp_path / "data"}}}
        destinations: [{{name: results-folder, type: folder, path: {tmp_path / "results"}}}]
        cspine: {{min_slices: 12}}
        """)
    code, out = config_check(text, tmp_path, capsys, monkeypatch)
    assert code == 0
    assert "deprecated: the top-level 'cspine:' section is deprecated" in out
    assert f"pipelines: {{{CSPINE}: ...}}" in out and "OK" in out


def test_config_check_reports_a_bad_pipeline_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out = config_check(f"pipelines:\n  {CSPINE}: {{min_slices: 2}}\n", tmp_path, capsys, monkeypatch)
    assert code == 1
    assert f"pipelines.{CSPINE}.min_slices: Input should be greater than or equal to 3" in out


@pytest.mark.parametrize("path", sorted((REPO / "config" / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_the_examples_pipeline_settings_are_valid(path: Path) -> None:
    config = load(path, environ={})
    assert pipelines.check_settings(config) == [] and config.deprecations == ()

"""Reading the YAML file: environment overrides, validation, and errors that name the YAML path and line."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from node.config.model import REFERENCES_CHECKED_BY_CALLER, Config, format_loc, reference_problems

# Short environment variables for the settings operators change most; any other setting can be
# given as FRACNODE_<SECTION>__<KEY> (e.g. FRACNODE_ASSEMBLY__QUIET_PERIOD_S=2).
ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "FRACNODE_AE_TITLE": ("node", "ae_title"),
    "FRACNODE_BIND": ("node", "bind"),
    "FRACNODE_PORT": ("node", "port"),
    "FRACNODE_HTTP_PORT": ("web", "port"),
    "FRACNODE_DATA_DIR": ("storage", "data_dir"),
    "FRACNODE_WORKERS": ("jobs", "workers"),
    "FRACNODE_LOG_LEVEL": ("logging", "level"),
}


@dataclass(frozen=True)
class ConfigProblem:
    path: str
    line: int | None
    message: str
    hint: str

    def __str__(self) -> str:
        where = f"{self.path} (line {self.line})" if self.line else self.path
        text = f"{where}: {self.message}"
        return f"{text}\n    hint: {self.hint}" if self.hint else text


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists every error found."""

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"configuration {source}: {len(problems)} problem(s)"]
        lines += [f"  {p}" for p in problems]
        super().__init__("\n".join(lines))


def _env_overrides(environ: dict[str, str]) -> list[tuple[tuple[str, ...], str, str]]:
    """(setting path, value, variable name) for every FRACNODE_ variable that names a setting."""
    overrides = []
    for key, value in environ.items():
        if key in ENV_ALIASES:
            overrides.append((ENV_ALIASES[key], value, key))
        elif key.startswith("FRACNODE_") and "__" in key:
            path = tuple(part.lower() for part in key[len("FRACNODE_") :].split("__"))
            overrides.append((path, value, key))
    return overrides


def _apply(raw: dict[str, Any], path: tuple[str, ...], value: str) -> None:
    target = raw
    for part in path[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            return
    # Plain text stays text and pydantic converts it to the setting's type ("11200" → 11200,
    # "true" → True); parsing it as YAML would turn AE title "1234" or "NO" into a number or a
    # bool. Only YAML lists and mappings are parsed: FRACNODE_NODE__CALLING_AE_TITLES='[A, B]'.
    stripped = value.strip()
    if stripped.startswith(("[", "{")):
        try:
            target[path[-1]] = yaml.safe_load(stripped)
            return
        except yaml.YAMLError:
            pass
    target[path[-1]] = value


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """Find the YAML line of a pydantic error location by walking the composed node tree."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if part < len(node.value) else None
        else:
            node = None
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


_HINTS = {
    "extra_forbidden": "remove it or fix its spelling; see the configuration reference in README.md",
    "missing": "this setting is required here",
    "union_tag_invalid": "type must be one of: folder, dimse, dicomweb, sender",
    "union_tag_not_found": "add a 'type:' (folder, dimse, dicomweb or sender)",
    "int_parsing": "give a whole number",
    "float_parsing": "give a number",
    "bool_parsing": "give true or false",
    "literal_error": "use one of the listed values",
}


_UNION_TAGS = ("folder", "dimse", "dicomweb", "sender")
_AUTH_TAGS = ("none", "basic", "bearer")
# hints that depend on which list the entry is in
_HINTS_AT = {
    ("peers", "peer_type_invalid"): "DIMSE peers have ae_title, host, port; DICOMweb peers a url",
    ("auth", "union_tag_invalid"): "auth type must be one of: none, basic, bearer",
    ("auth", "union_tag_not_found"): "add a 'type:' (none, basic or bearer)",
}


def _hint(loc: tuple[int | str, ...], error_type: str) -> str:
    for part in reversed(loc):
        if isinstance(part, str) and (part, error_type) in _HINTS_AT:
            return _HINTS_AT[(part, error_type)]
    return _HINTS.get(error_type, "")


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    # pydantic adds the union member's tag ('folder', 'dimse', ...) after a list index
    cleaned: list[int | str] = []
    for i, part in enumerate(loc):
        if i > 0 and part in _UNION_TAGS and isinstance(loc[i - 1], int):
            continue
        if i > 0 and part in _AUTH_TAGS and loc[i - 1] == "auth":
            continue
        cleaned.append(part)
    return tuple(cleaned)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


def _settings_at(loc: tuple[int | str, ...]) -> list[str]:
    """The valid setting names in the mapping at `loc` (a raw pydantic location), for hints."""
    models: list[type[BaseModel]] = [Config]
    for part in loc:
        if isinstance(part, int):
            continue
        tagged = [m for m in models if "type" in m.model_fields and part in get_args(m.model_fields["type"].annotation)]
        if len(models) > 1 and tagged:  # a discriminated union member, e.g. destinations[0].dimse
            models = tagged
            continue
        fields = [m.model_fields[part] for m in models if part in m.model_fields]
        if not fields:
            return []
        models = _models_in(fields[0].annotation)
    return sorted({name for m in models for name in m.model_fields})


def _unknown_setting_hint(loc: tuple[int | str, ...]) -> str:
    known = _settings_at(loc[:-1])
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    if known:
        return f"remove it or fix its spelling; settings here: {', '.join(known)}"
    return _HINTS["extra_forbidden"]


def _overridden_by(loc: tuple[int | str, ...], overrides: dict[tuple[str, ...], str]) -> str | None:
    for path, variable in overrides.items():
        if tuple(loc[: len(path)]) == path:
            return variable
    return None


def parse(text: str, source: str = "<config>", environ: dict[str, str] | None = None) -> Config:
    """Parse and validate YAML text; raise ConfigError listing every problem.

    Field errors and cross-references (route → destination, destination → peer, unique names)
    are reported together, each with its YAML path and line.
    """
    try:
        root = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(
            source,
            [ConfigProblem("(file)", mark.line + 1 if mark else None, f"not valid YAML: {exc}", "")],
        ) from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, [ConfigProblem("(top level)", 1, "must be a mapping", "")])
    overrides: dict[tuple[str, ...], str] = {}
    for path, value, variable in _env_overrides(dict(os.environ) if environ is None else environ):
        _apply(raw, path, value)
        overrides[path] = variable

    def problem(loc: tuple[int | str, ...], message: str, hint: str) -> ConfigProblem:
        variable = _overridden_by(loc, overrides)
        if variable is not None:  # the value came from the environment, not from a line
            return ConfigProblem(format_loc(loc), None, f"{message} (from {variable})", hint)
        return ConfigProblem(format_loc(loc), _line_of(root, loc), message, hint)

    problems: list[ConfigProblem] = []
    config: Config | None = None
    try:
        config = Config.model_validate(raw, context={REFERENCES_CHECKED_BY_CALLER: True})
    except ValidationError as exc:
        for err in exc.errors():
            loc = _clean_loc(tuple(err["loc"]))
            message = err["msg"].removeprefix("Value error, ")
            hint = _hint(loc, err["type"])
            if err["type"] == "extra_forbidden":
                message = f"unknown setting {loc[-1]!r}"
                hint = _unknown_setting_hint(tuple(err["loc"]))
            problems.append(problem(loc, message, hint))
    problems += [problem(loc, message, "") for loc, message in reference_problems(raw)]
    if problems or config is None:
        problems.sort(key=lambda p: (p.line is None, p.line or 0))  # in file order
        raise ConfigError(source, problems)
    return config


def load(path: Path | None, environ: dict[str, str] | None = None) -> Config:
    """Load the configuration file, or the embedded defaults when `path` is None."""
    if path is None:
        return parse("", "<embedded defaults>", environ)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [ConfigProblem("(file)", None, f"cannot read: {exc.strerror}", "")]) from exc
    return parse(text, str(path), environ)

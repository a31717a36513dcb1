"""The start-up banner: what a person needs on the first screen, in plain lines on stderr.

Where DICOM arrives, where the dashboard is and how to sign in, where results go, which models
run with their measured accuracy (read from each bundle's metadata), and that the results are
not for diagnostic use. The JSON log lines follow it; this is the part meant to be read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from node import __version__, pipelines
from node.config import Config, DicomwebDestination, DimseDestination, FolderDestination
from node.dispatch.folder import writable_problem
from node.inference.cards import read_card

if TYPE_CHECKING:
    from node.service import Node

NOTICE = "AI results: research use only, not for diagnostic use"


def _url_host(bind: str) -> str:
    return "localhost" if bind in ("0.0.0.0", "::", "127.0.0.1", "::1") else bind


def destination_lines(config: Config) -> list[str]:
    lines = []
    for dest in config.destinations:
        if isinstance(dest, FolderDestination):
            where = f"folder {dest.path.resolve()}"
        elif isinstance(dest, DimseDestination | DicomwebDestination):
            where = f"{dest.type} peer {dest.peer}"
        else:
            where = "back to the sending peer"
        lines.append(f"{dest.name}: {where}")
    return lines


def model_lines(config: Config) -> list[str]:
    """One line per bundle the routed pipelines load: version and measured accuracy."""
    lines = []
    for name in dict.fromkeys(route.pipeline for route in config.routes):
        bundles = pipelines.bundles_of(name)
        if not bundles:
            lines.append(f"{name}: no model bundle")
        for bundle in bundles:
            lines.append(f"{name}: {read_card(config.inference.bundle(bundle)).headline}")
    return lines


def route_lines(config: Config) -> list[str]:
    lines = []
    for route in config.routes:
        rule = route.match
        what = ", ".join(rule.modality) or "any modality"
        if rule.body_part:
            what += f", body part {rule.body_part}"
        if rule.exclude_body_part:
            what += ", out-of-scope body parts excluded (exclude_body_part)"
        lines.append(f"{route.name}: {what} -> {route.pipeline} -> {', '.join(route.destinations)}")
    return lines


def warnings(config: Config) -> list[str]:
    found = []
    for dest in config.destinations:
        if isinstance(dest, FolderDestination):
            problem = writable_problem(dest.path)
            if problem:
                found.append(f"destination {dest.name}: {problem}; its results will wait in the outbox")
    if not config.routes:
        found.append("no routes: studies are received and kept, nothing is analysed")
    return found


def banner(config: Config, node: Node) -> str:
    rows: list[tuple[str, str]] = []
    if not node.roles.all:
        rows.append(("roles", f"{node.roles} (this process; the others share the database)"))
    if "listener" in node.roles:
        rows.append(("DICOM", f"listening as {config.node.ae_title} on {config.node.bind}:{node.ingest.port}"))
    if node.web is not None:
        url = f"http://{_url_host(config.web.bind)}:{node.web.port}/"
        rows.append(("dashboard", f"{url}  (REST API {url}api/v1, metrics {url}metrics)"))
        credentials = node.web.app.state.credentials
        if credentials.disabled:
            rows.append(("sign in", "not needed: web.auth.disabled is true"))
        elif credentials.token_file is not None:
            rows.append(("sign in", f"with the token in {credentials.token_file}"))
        else:
            rows.append(("sign in", "with a token or user from web.auth"))
    elif "web" in node.roles:
        rows.append(("dashboard", "off (web.enabled: false)"))
    rows += [("routes", line) for line in route_lines(config) or ["none"]]
    rows += [("results", line) for line in destination_lines(config)]
    rows += [("models", line) for line in model_lines(config) or ["none routed"]]
    index = "index in PostgreSQL" if node.shared else "index"
    rows.append(("data", f"{config.storage.data_dir.resolve()} (spool, {index}, outbox)"))
    rows.append(("logs", f"{config.logging.format} lines on stderr, level {config.logging.level}"))
    rows += [("WARNING", line) for line in warnings(config)]
    width = max(len(label) for label, _ in rows)
    # a label is written once, for the first of its lines
    shown = [(label if i == 0 or rows[i - 1][0] != label else "", text) for i, (label, text) in enumerate(rows)]
    body = "\n".join(f"  {label.ljust(width)}  {text}" for label, text in shown)
    return f"fracnode {__version__} - {NOTICE}\n{body}\n  (Ctrl-C stops)"

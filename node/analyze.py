"""`fracnode analyze PATH... --out DIR`: the node's routing, models and writers on files, offline.

Files are grouped into studies and series from their headers, routed with the configured routes,
run through the same pipelines as `fracnode serve`, and the results written under
`DIR/<StudyInstanceUID>/`: the DICOM objects, a PNG preview per analysed image with its regions
drawn, and `DIR/summary.csv` (one row per image). Nothing touches the network.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from node import pipelines
from node.assembly import summarize_series
from node.config import Config
from node.records import FindingRow, PipelineInput, SeriesInput, Study
from node.routing import route_study
from node.spool import UnreadableInstance, read_header

SUMMARY_COLUMNS = (
    "study_uid", "sop_instance_uid", "file", "route", "pipeline", "category", "fracture_probability",
    "regions", "body_region", "result",
)


@dataclass
class Grouped:
    studies: dict[str, list[tuple[dict, Path]]]  # study UID → (header fields, file)
    unreadable: list[tuple[Path, str]]


def group(files: list[Path]) -> Grouped:
    grouped = Grouped({}, [])
    for path in files:
        try:
            header = asdict(read_header(path.read_bytes()))
        except UnreadableInstance as exc:
            grouped.unreadable.append((path, str(exc)))
            continue
        grouped.studies.setdefault(header["study_uid"], []).append((header, path))
    return grouped


def _write(folder: Path, datasets) -> list[Path]:  # type: ignore[no-untyped-def]
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for ds in datasets:
        path = folder / f"{ds.Modality}_{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def _summary_row(
    base: dict, row: FindingRow, files_of: dict[str, str], written: str, summary: str, previews: dict[str, Path]
) -> dict:
    """One line of summary.csv; an analysed image names its preview, any other item the job summary."""
    line = {**base, "sop_instance_uid": row.sop_instance_uid, "file": files_of.get(row.sop_instance_uid, "")}
    if row.skipped:
        return {**line, "result": f"skipped: {row.skipped}"}
    preview = previews.get(row.sop_instance_uid)
    return {
        **line, "category": row.category or "", "regions": "" if row.regions is None else row.regions,
        "fracture_probability": "" if row.fracture_probability is None else f"{row.fracture_probability:.4f}",
        "body_region": row.body_region,
        "result": f"{written}, preview {preview.name}" if preview else f"{written}: {summary}",
    }


def analyze(config: Config, files: list[Path], out: Path, overlays: frozenset[str]) -> list[dict]:
    pipelines.load_modules(config.pipeline_modules)
    problems = pipelines.check(config)
    if problems:
        raise ValueError("; ".join(problems))
    grouped = group(files)
    rows: list[dict] = [
        {"file": str(path), "result": f"skipped: {reason}"} for path, reason in grouped.unreadable
    ]
    cache: dict[str, pipelines.Pipeline] = {}
    for study_uid, members in tqdm(grouped.studies.items(), desc="analysing", unit="study", file=sys.stderr):
        files_of = {h["sop_instance_uid"]: str(p) for h, p in members}
        series = summarize_series(members_header for members_header, _ in members)
        matches = route_study(Study(study_uid, 1, "", series), config.routes)
        if not matches:
            rows += [{"study_uid": study_uid, "file": f, "result": "no route matched"} for f in files_of.values()]
        paths: dict[str, list[Path]] = {}
        for header, path in members:
            paths.setdefault(header["series_uid"], []).append(path)
        for match in matches:
            request = PipelineInput(
                study_uid, 1, "",
                tuple(SeriesInput(s, tuple(paths[s.series_instance_uid])) for s in series
                      if s.series_instance_uid in match.series_uids),
                overlays,
            )
            if match.pipeline not in cache:
                cache[match.pipeline] = pipelines.create(match.pipeline, config)
            pipeline = cache[match.pipeline]
            outcome = pipeline.run(request)
            folder = out / study_uid
            written = _write(folder, outcome.datasets)
            base = {"study_uid": study_uid, "route": match.route, "pipeline": match.pipeline}
            if outcome.findings is None:
                rows.append({**base, "result": outcome.not_applicable or outcome.summary})
                continue
            previews: dict[str, Path] = {}
            if isinstance(pipeline, pipelines.DrawsPreviews):
                previews = pipeline.write_previews(outcome.findings, folder)
            for row in outcome.findings.rows():
                rows.append(_summary_row(base, row, files_of, f"{len(written)} object(s)", outcome.summary, previews))
    out.mkdir(parents=True, exist_ok=True)
    with (out / "summary.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, SUMMARY_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return rows


def print_table(rows: list[dict]) -> None:
    columns = ("file", "category", "fracture_probability", "regions", "body_region", "result")
    rows = [{**row, "file": Path(row.get("file", "")).name} for row in rows]
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))

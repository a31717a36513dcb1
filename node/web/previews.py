"""PNG previews of a job's result: the source image from the spool with the regions drawn.

The picture is the secondary capture's burn-in (node.pipelines.radiograph.preview: regions outlined in the
category's colour, the label, "not for diagnostic use"), drawn from the findings the job
recorded (node.outcomes), so it matches what the PACS got. Rendered on demand, a few kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from io import BytesIO
from typing import Any

from fastapi import HTTPException
from pydicom import dcmread

from node.outcomes import JobOutcomes, image_findings
from node.pipelines.radiograph import ImageFinding
from node.store import Database, instances, jobs

CACHED = 32  # previews kept in memory (about 0.3-1 MB each)


class PreviewCache:
    def __init__(self, size: int = CACHED) -> None:
        self.size = size
        self._items: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[object, ...]) -> bytes | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key: tuple[object, ...], png: bytes) -> None:
        with self._lock:
            self._items[key] = png
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def _job_with_images(db: Database, outcomes: JobOutcomes, study_uid: str, job_id: int | None) -> int:
    if job_id is not None:
        job = jobs.get(db, job_id)
        if job is None or job.job.study_instance_uid != study_uid:
            raise HTTPException(404, f"study {study_uid} has no job {job_id}")
        return job_id
    ids = jobs.ids_of_study(db, study_uid)
    if not ids:
        raise HTTPException(404, f"no job for study {study_uid}")
    recorded = outcomes.many(ids)
    for candidate in ids:
        findings = recorded[candidate].findings if candidate in recorded else None
        if image_findings(findings) or (findings and findings.get("vertebrae")):
            return candidate
    raise HTTPException(404, f"no job of study {study_uid} recorded image findings to preview")


def _pick(images: list[dict[str, Any]], instance: str | None, job_id: int) -> dict[str, Any]:
    if instance is not None:
        for image in images:
            if image["sop_instance_uid"] == instance:
                return image
        raise HTTPException(404, f"job {job_id} has no finding for instance {instance}")
    return next((i for i in images if i.get("regions")), images[0])


def _ct_preview(db: Database, cache: PreviewCache, study_uid: str, job_id: int,
                findings: dict[str, Any], recorded_at: float) -> bytes:
    from node.pipelines.cspine.preview import sagittal_png

    key = (job_id, "sagittal", recorded_at)
    cached = cache.get(key)
    if cached is not None:
        return cached
    paths = [p for p in instances.paths(db, study_uid, findings.get("series_instance_uid", "")) if p.exists()]
    if not paths:
        raise HTTPException(404, "the analysed CT series is no longer in the spool (storage.retention_days)")
    try:
        png = sagittal_png(paths, findings)
    except ValueError as exc:
        raise HTTPException(404, f"no CT preview for job {job_id}: {exc}") from exc
    cache.put(key, png)
    return png


def preview_png(
    db: Database, outcomes: JobOutcomes, cache: PreviewCache,
    study_uid: str, job_id: int | None, instance: str | None,
) -> bytes:
    """The PNG, or an HTTPException (404) that says what is missing."""
    from node.pipelines.radiograph.preview import render

    job_id = _job_with_images(db, outcomes, study_uid, job_id)
    outcome = outcomes.get(job_id)
    if outcome is not None and outcome.findings and outcome.findings.get("kind") == "CSpineFindings":
        return _ct_preview(db, cache, study_uid, job_id, outcome.findings, outcome.recorded_at)
    images = image_findings(outcome.findings if outcome else None)
    if outcome is None or not images:
        raise HTTPException(404, f"job {job_id} recorded no image findings to preview")
    image = _pick(images, instance, job_id)
    uid = image["sop_instance_uid"]
    key = (job_id, uid, outcome.recorded_at)
    cached = cache.get(key)
    if cached is not None:
        return cached
    path = instances.path_in_study(db, uid, study_uid)
    if path is None or not path.exists():
        raise HTTPException(
            404, f"the source image {uid} is no longer in the spool (storage.retention_days removed it)"
        )
    buffer = BytesIO()
    thresholds = [float(value) for _, value in (outcome.findings or {}).get("thresholds", [])]
    render(dcmread(path), ImageFinding.from_stored(image, path), min(thresholds, default=None)).save(
        buffer, format="PNG"
    )
    png = buffer.getvalue()
    cache.put(key, png)
    return png

"""The outbox: which objects go to which destination (overlays only where asked for)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node.config import JobSettings, RetrySettings
from node.dispatch.outbox import Outbox, wanted_by
from node.jobs import DONE, JobQueue
from node.records import RouteMatch, SeriesAttributes, Study
from node.store import Database

SR = "1.2.840.10008.5.1.4.1.1.88.34"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
SC = "1.2.840.10008.5.1.4.1.1.7"
RADIOGRAPH_SEG = "radiograph SEG"  # a SEG without a frame of reference, made by _dataset


@pytest.mark.parametrize(
    ("overlays", "sop_class", "wanted"),
    [
        ((), SR, True),
        ((), SEG, True),  # a SEG in a frame of reference (CT vertebrae): always sent
        ((), RADIOGRAPH_SEG, False),
        ((), GSPS, False),
        ((), SC, False),
        (("gsps",), GSPS, True),
        (("gsps",), SC, False),
        (("gsps",), RADIOGRAPH_SEG, False),
        (("radiograph_seg",), RADIOGRAPH_SEG, True),
        (("secondary_capture",), SC, True),
        (("secondary_capture",), "1.2.840.10008.5.1.4.1.1.7.4", True),
        (("gsps", "secondary_capture"), SR, True),
    ],
)
def test_wanted_by(overlays, sop_class, wanted) -> None:
    assert wanted_by(overlays, _dataset(sop_class)) is wanted


def _dataset(sop_class: str) -> Dataset:
    ds = Dataset()
    if sop_class == RADIOGRAPH_SEG:
        sop_class = SEG  # a radiograph's SEG: no frame of reference
    elif sop_class == SEG:
        ds.FrameOfReferenceUID = generate_uid()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def test_stage_sends_overlays_only_to_the_destinations_that_take_them(tmp_path: Path, db: Database) -> None:
    queue = JobQueue(db, JobSettings())
    study = Study("1.2.3", 1, "MOD", (SeriesAttributes("1.2.3.1", modality="CR"),))
    queue.enqueue(study, RouteMatch("r", "p", ("pacs", "legacy", "folder"), ("1.2.3.1",)), 0.0)
    job = queue.claim("w", 0.0)
    outbox = Outbox(tmp_path / "outbox", db, RetrySettings())
    datasets = [_dataset(SR), _dataset(SEG), _dataset(RADIOGRAPH_SEG), _dataset(GSPS), _dataset(SC)]
    overlays = {"pacs": frozenset(), "legacy": frozenset({"gsps", "secondary_capture"}),
                "folder": frozenset({"gsps", "radiograph_seg"})}
    assert outbox.stage(job, datasets, "summary", 1.0, overlays) == 2 + 4 + 4
    sent = {
        name: sorted(item.sop_class_uid for item in outbox.due(name, 2.0, 10)) for name in ("pacs", "legacy", "folder")
    }
    assert sent == {
        "pacs": sorted([SR, SEG]),
        "legacy": sorted([SR, SEG, GSPS, SC]),
        "folder": sorted([SR, SEG, SEG, GSPS]),
    }
    assert db.query("SELECT state FROM jobs WHERE id = ?", (job.id,))[0]["state"] == DONE

"""Assembly: the completion rule, the series summary, and run_once over a real index."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from node.assembly import Assembly, is_complete, summarize_series
from node.config import AssemblySettings
from node.dispatch.outbox import encode
from node.records import SeriesAttributes
from node.spool import Spool
from node.store import Database
from tests.support import dicomgen

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
T0 = 1_800_000_000.0


@pytest.mark.parametrize(
    ("last_received_at", "now", "quiet_period_s", "release_ready", "expected"),
    [
        (100.0, 100.0, 5.0, False, False),  # just arrived
        (100.0, 104.9, 5.0, False, False),
        (100.0, 105.0, 5.0, False, True),  # exactly the quiet period
        (100.0, 1000.0, 5.0, False, True),
        (100.0, 100.0, 5.0, True, True),  # released: no need to wait
        (100.0, 100.5, 0.5, False, True),
        (100.0, 99.0, 5.0, False, False),  # clock stepped back: not complete yet
    ],
)
def test_is_complete(
    last_received_at: float, now: float, quiet_period_s: float, release_ready: bool, expected: bool
) -> None:
    assert is_complete(last_received_at, now, quiet_period_s, release_ready) is expected


def row(
    series_uid: str,
    sop_class: str = CT_IMAGE,
    image_type: str = "ORIGINAL\\PRIMARY\\AXIAL",
    **attributes: str,
) -> dict[str, str]:
    base = {
        "modality": "CT",
        "body_part": "NECK",
        "series_description": "Bone",
        "protocol_name": "C-Spine",
    }
    return {
        "series_uid": series_uid,
        "sop_class_uid": sop_class,
        "image_type": image_type,
        **base,
        **attributes,
    }


def test_summarize_series_groups_rows_by_series_in_uid_order() -> None:
    rows = [
        row("1.2.9"),
        row(
            "1.2.1",
            modality="CR",
            body_part="HAND",
            series_description="Hand PA",
            protocol_name="",
            sop_class="1.2.840.10008.5.1.4.1.1.1",
            image_type="ORIGINAL\\PRIMARY",
        ),
        row("1.2.9", image_type="ORIGINAL\\PRIMARY\\LOCALIZER"),
        row("1.2.9"),
        row("1.2.9", sop_class="1.2.840.10008.5.1.4.1.1.2.1", image_type=""),
    ]
    assert summarize_series(rows) == (
        SeriesAttributes(
            "1.2.1",
            "CR",
            "HAND",
            "Hand PA",
            "",
            ("1.2.840.10008.5.1.4.1.1.1",),
            ("ORIGINAL\\PRIMARY",),
            1,
        ),
        SeriesAttributes(
            "1.2.9",
            "CT",
            "NECK",
            "Bone",
            "C-Spine",
            (CT_IMAGE, "1.2.840.10008.5.1.4.1.1.2.1"),
            ("ORIGINAL\\PRIMARY\\AXIAL", "ORIGINAL\\PRIMARY\\LOCALIZER"),
            4,
        ),
    )


def test_summarize_series_of_nothing_is_empty() -> None:
    assert summarize_series([]) == ()


def test_summarize_series_takes_series_attributes_from_the_first_instance() -> None:
    (series,) = summarize_series(
        [row("1.2", series_description="first"), row("1.2", series_description="later")]
    )
    assert series.series_description == "first"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock(T0)
    monkeypatch.setattr("node.spool.time", SimpleNamespace(time=clock.time))
    return clock


def store(spool: Spool, datasets: list[Dataset], calling_ae: str = "CT01") -> None:
    for ds in datasets:
        spool.store(encode(ds), calling_ae, "assoc-1")


def studies(db: Database) -> dict[str, dict]:
    return {r["study_uid"]: dict(r) for r in db.query("SELECT * FROM studies")}


def test_study_completes_only_after_the_quiet_period(
    db: Database, spool: Spool, clock: Clock
) -> None:
    study_uid = generate_uid()
    store(spool, dicomgen.ct_series(3, study_uid=study_uid, size=8))
    assembly = Assembly(db, AssemblySettings(quiet_period_s=5.0))

    assert assembly.run_once(T0 + 4.9) == []
    assert studies(db)[study_uid]["pending"] == 1

    (study,) = assembly.run_once(T0 + 5.0)
    assert (study.study_instance_uid, study.revision, study.calling_ae) == (study_uid, 1, "CT01")
    (series,) = study.series
    assert (series.modality, series.body_part_examined, series.instance_count) == ("CT", "NECK", 3)
    assert series.series_description == "CT Neck 1.0 Bone"
    assert series.image_types == ("ORIGINAL\\PRIMARY\\AXIAL",)
    assert series.sop_class_uids == (CT_IMAGE,)
    row_after = studies(db)[study_uid]
    assert (row_after["pending"], row_after["revision"], row_after["completed_at"]) == (
        0,
        1,
        T0 + 5.0,
    )
    assert assembly.run_once(T0 + 100) == []  # completed once, not again


def test_quiet_period_runs_from_the_last_instance(db: Database, spool: Spool, clock: Clock) -> None:
    study_uid = generate_uid()
    first, second = dicomgen.ct_series(2, study_uid=study_uid, size=8)
    assembly = Assembly(db, AssemblySettings(quiet_period_s=5.0))
    store(spool, [first])
    clock.now = T0 + 4.0
    store(spool, [second])
    assert assembly.run_once(T0 + 6.0) == []
    (study,) = assembly.run_once(T0 + 9.0)
    assert study.series[0].instance_count == 2


def test_each_study_completes_on_its_own_schedule(db: Database, spool: Spool, clock: Clock) -> None:
    early, late = generate_uid(), generate_uid()
    store(spool, dicomgen.ct_series(1, study_uid=early, size=8))
    clock.now = T0 + 3.0
    store(spool, [dicomgen.cr_image(study_uid=late, size=8)], calling_ae="CR01")
    assembly = Assembly(db, AssemblySettings(quiet_period_s=5.0))
    assert [s.study_instance_uid for s in assembly.run_once(T0 + 5.0)] == [early]
    (study,) = assembly.run_once(T0 + 8.0)
    assert (study.study_instance_uid, study.calling_ae, study.series[0].modality) == (
        late,
        "CR01",
        "CR",
    )


def test_release_completes_at_once_with_complete_on_release(
    db: Database, spool: Spool, clock: Clock
) -> None:
    study_uid = generate_uid()
    store(spool, dicomgen.ct_series(2, study_uid=study_uid, size=8))
    assembly = Assembly(db, AssemblySettings(quiet_period_s=60.0, complete_on_release=True))
    assert assembly.run_once(T0 + 1.0) == []
    assembly.mark_released({study_uid})
    (study,) = assembly.run_once(T0 + 1.0)
    assert study.study_instance_uid == study_uid
    assert studies(db)[study_uid]["release_ready"] == 0  # consumed by the completion


def test_release_is_ignored_without_complete_on_release(
    db: Database, spool: Spool, clock: Clock
) -> None:
    study_uid = generate_uid()
    store(spool, dicomgen.ct_series(1, study_uid=study_uid, size=8))
    assembly = Assembly(db, AssemblySettings(quiet_period_s=60.0, complete_on_release=False))
    assembly.mark_released({study_uid})
    assert studies(db)[study_uid]["release_ready"] == 0
    assert assembly.run_once(T0 + 1.0) == []


def test_release_flag_left_from_an_earlier_run_is_ignored_without_complete_on_release(
    db: Database, spool: Spool, clock: Clock
) -> None:
    # e.g. the node ran with complete_on_release, stopped, and was restarted without it
    study_uid = generate_uid()
    store(spool, dicomgen.ct_series(1, study_uid=study_uid, size=8))
    db.execute("UPDATE studies SET release_ready = 1 WHERE study_uid = ?", (study_uid,))
    assembly = Assembly(db, AssemblySettings(quiet_period_s=60.0, complete_on_release=False))
    assert assembly.run_once(T0 + 1.0) == []
    assert len(assembly.run_once(T0 + 60.0)) == 1


def test_release_of_a_study_already_complete_changes_nothing(
    db: Database, spool: Spool, clock: Clock
) -> None:
    study_uid = generate_uid()
    store(spool, dicomgen.ct_series(1, study_uid=study_uid, size=8))
    assembly = Assembly(db, AssemblySettings(quiet_period_s=1.0, complete_on_release=True))
    assert len(assembly.run_once(T0 + 1.0)) == 1
    assembly.mark_released({study_uid})
    assert studies(db)[study_uid]["release_ready"] == 0
    assert assembly.run_once(T0 + 2.0) == []


def test_instances_after_completion_start_a_new_revision(
    db: Database, spool: Spool, clock: Clock
) -> None:
    study_uid = generate_uid()
    store(spool, dicomgen.ct_series(2, study_uid=study_uid, size=8))
    assembly = Assembly(db, AssemblySettings(quiet_period_s=5.0))
    (first,) = assembly.run_once(T0 + 5.0)
    assert first.revision == 1

    clock.now = T0 + 100.0
    store(
        spool,
        dicomgen.ct_series(
            3, study_uid=study_uid, size=8, series_number=2, description="CT Neck soft tissue"
        ),
    )
    assert studies(db)[study_uid]["pending"] == 1
    assert assembly.run_once(T0 + 101.0) == []
    (second,) = assembly.run_once(T0 + 105.0)
    assert second.revision == 2
    assert sorted(s.instance_count for s in second.series) == [2, 3]  # the whole study, both series


def test_identical_resend_after_completion_does_not_start_a_revision(
    db: Database, spool: Spool, clock: Clock
) -> None:
    study_uid = generate_uid()
    datasets = dicomgen.ct_series(2, study_uid=study_uid, size=8)
    store(spool, datasets)
    assembly = Assembly(db, AssemblySettings(quiet_period_s=5.0))
    assert len(assembly.run_once(T0 + 5.0)) == 1
    clock.now = T0 + 50.0
    store(spool, datasets)
    assert studies(db)[study_uid]["pending"] == 0
    assert assembly.run_once(T0 + 100.0) == []


def test_study_rows_inserted_directly_complete_by_the_same_rule(db: Database) -> None:
    db.execute(
        "INSERT INTO studies (study_uid, calling_ae, first_received_at, last_received_at) VALUES (?,?,?,?)",
        ("1.2.3", "PACS", 10.0, 20.0),
    )
    db.execute(
        """INSERT INTO instances (sop_instance_uid, sop_class_uid, study_uid, series_uid,
        transfer_syntax_uid, modality, path, digest, size, received_at)
        VALUES ('1.2.3.4.1', ?, '1.2.3', '1.2.3.4', '1.2.840.10008.1.2.1', 'CT', '/x', 'd', 1, 20.0)""",
        (CT_IMAGE,),
    )
    assembly = Assembly(db, AssemblySettings(quiet_period_s=2.0))
    assert assembly.run_once(21.9) == []
    (study,) = assembly.run_once(22.0)
    assert (study.calling_ae, study.revision, len(study.series)) == ("PACS", 1, 1)

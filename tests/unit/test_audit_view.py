"""The dashboard's audit view (node.web.audit) reads the node's own ATNA audit file, newest first,
from its end only."""

from __future__ import annotations

import time

from node.audit import Audit
from node.config import Config
from node.web.audit import AtnaFileTrail, parse

STUDY = "1.2.826.0.1.3680043.8.498.1"


def audit(tmp_path) -> Audit:  # type: ignore[no-untyped-def]
    config = Config.model_validate({"storage": {"data_dir": str(tmp_path / "data")}, "node": {"ae_title": "FRACNODE"}})
    return Audit(config)


def test_events_come_back_newest_first_with_who_where_what_and_outcome(tmp_path) -> None:
    trail = audit(tmp_path)
    trail.association("CT01", "10.0.0.7", accepted=True, tls_subject="ct01.hospital")
    trail.association_ended("CT01", "10.0.0.7", "released", {STUDY: 12}, failed=1)
    trail.association("EVIL", "10.0.0.9", accepted=False, reason="calling AE title not allowed")
    trail.delivered("results-folder", "/data/results", {STUDY: 2})
    trail.trail.close()

    events = AtnaFileTrail(tmp_path / "data" / "audit.log").recent(10)

    assert [e.kind for e in events] == [
        "DICOM Instances Transferred",
        "User Authentication: Login",
        "DICOM Instances Transferred",
        "User Authentication: Logout",
        "User Authentication: Login",
    ]
    delivered, rejected, received, logout, login = events
    assert (login.who, login.where, login.outcome) == ("CT01 (ct01.hospital)", "10.0.0.7", "success")
    assert (rejected.who, rejected.outcome, rejected.detail) == (
        "EVIL",
        "minor failure",
        "calling AE title not allowed",
    )
    assert received.outcome == "minor failure" and received.who == "CT01"
    assert received.detail == f"1 instance(s) refused; {STUDY}: 12 instances stored"
    assert logout.outcome == "success" and logout.detail == ""
    assert delivered.who == "FRACNODE" and delivered.detail == f"to results-folder; {STUDY}: 2 result objects delivered"
    assert all(abs(e.at - time.time()) < 60 for e in events)


def test_only_the_files_end_is_read_and_a_line_being_written_is_skipped(tmp_path) -> None:
    path = tmp_path / "data" / "audit.log"
    trail = audit(tmp_path)
    for i in range(3000):  # about 2 MB
        trail.operator_action("admin", "127.0.0.1", f"POST /api/v1/jobs/{i}/retry")
    trail.trail.close()
    with path.open("a", encoding="utf-8") as out:
        out.write("<84>1 2026-12-03T13:04:26.000Z host fracnode 1 IHE+RFC-3881 - \ufeff<AuditMessage><Even")

    events = AtnaFileTrail(path).recent(5)

    assert [e.detail for e in events] == [f"POST /api/v1/jobs/{i}/retry" for i in (2999, 2998, 2997, 2996, 2995)]
    assert all(e.kind == "Security Alert: Use of Restricted Function" and e.who == "admin" for e in events)


def test_a_missing_file_or_a_foreign_line_is_no_event(tmp_path) -> None:
    assert AtnaFileTrail(tmp_path / "absent.log").recent(10) == []
    assert parse("<13>1 2026-12-03T13:04:26Z host other 1 - - hello") is None
    assert parse("<84>1 2026-12-03T13:04:26Z host fracnode 1 IHE+RFC-3881 - \ufeff<not-xml") is None

"""STOW-RS client: what each Store Instances Response (PS3.18 10.5.3) means for each instance."""

from __future__ import annotations

from typing import Any

import pytest

from node.dispatch.dicomweb import classify, failure_is_transient

A, B = "1.2.3.1", "1.2.3.2"


def response(stored: tuple[str, ...] = (), failed: dict[str, int] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [uid]}} for uid in stored]}
    }
    if failed:
        body["00081198"] = {
            "vr": "SQ",
            "Value": [
                {"00081155": {"vr": "UI", "Value": [uid]}, "00081197": {"vr": "US", "Value": [reason]}}
                for uid, reason in failed.items()
            ],
        }
    return body


@pytest.mark.parametrize(
    ("reason", "transient"),
    [
        (0xA700, True),  # out of resources
        (0xA7FF, True),
        (0x0110, True),  # processing failure
        (0xA900, False),  # data set does not match SOP class
        (0xC000, False),  # cannot understand
        (0xC122, False),  # transfer syntax not supported
        (0x0122, False),  # SOP class not supported
        (0x0124, False),  # not authorized
    ],
)
def test_failure_reasons_that_a_retry_can_cure(reason: int, transient: bool) -> None:
    assert failure_is_transient(reason) is transient


def outcomes(status: int, body: dict[str, Any] | None) -> dict[str, tuple[bool, bool]]:
    return {o.sop_instance_uid: (o.delivered, o.retry) for o in classify(status, body, [A, B], "pacs")}


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        pytest.param(200, response((A, B)), {A: (True, False), B: (True, False)}, id="200-all-listed"),
        pytest.param(200, None, {A: (True, False), B: (True, False)}, id="200-without-body"),
        pytest.param(200, {}, {A: (True, False), B: (True, False)}, id="200-empty-dataset"),
        pytest.param(
            202, response((A,), {B: 0xA700}), {A: (True, False), B: (False, True)}, id="202-out-of-resources-retried"
        ),
        pytest.param(
            202, response((A,), {B: 0xC000}), {A: (True, False), B: (False, False)}, id="202-cannot-understand-given-up"
        ),
        pytest.param(202, response((A,)), {A: (True, False), B: (False, True)}, id="202-unlisted-is-not-confirmed"),
        pytest.param(
            409,
            response((), {A: 0x0122, B: 0xA701}),
            {A: (False, False), B: (False, True)},
            id="409-per-instance-reasons",
        ),
        pytest.param(409, None, {A: (False, False), B: (False, False)}, id="409-without-body"),
        pytest.param(200, response((A,), {B: 0xA900}), {A: (True, False), B: (False, False)}, id="200-yet-one-failed"),
    ],
)
def test_store_response_decides_each_instance(
    status: int, body: dict[str, Any] | None, expected: dict[str, tuple[bool, bool]]
) -> None:
    assert outcomes(status, body) == expected


def test_refusal_message_names_the_peer_and_failure_reason() -> None:
    (_, refused) = classify(202, response((A,), {B: 0xC000}), [A, B], "pacs-web")
    assert "pacs-web" in refused.message and "0xC000" in refused.message

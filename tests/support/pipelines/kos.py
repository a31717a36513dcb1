"""Test pipelines that make DICOM: `test-kos` produces a real derived object, a Key Object Selection
document (PS3.3 A.59) that references every instance of the routed series, so a test can check
which instances the node processed. `test-flaky` fails a set number of times first (FLAKY_FAILURES);
`test-decline` is never applicable; `test-slow-kos` takes `TEST_PIPELINE_DELAY_S` seconds (default
1) before it concludes as `test-kos`, so that a test can kill its worker mid-job.
"""

from __future__ import annotations

import os
import threading
import time

import highdicom as hd
from pydicom import Dataset, dcmread
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from node.records import PipelineInput, PipelineOutcome

FLAKY_FAILURES = {"remaining": 0}
_flaky_lock = threading.Lock()


class KeyObjectPipeline:
    name = "test-kos"

    def run(self, request: PipelineInput) -> PipelineOutcome:
        evidence = [dcmread(path, stop_before_pixels=True) for series in request.series for path in series.paths]
        content = hd.ko.KeyObjectSelection(
            document_title=codes.DCM.OfInterest,
            referenced_objects=evidence,
            description=f"fracnode test pipeline, revision {request.revision}",
        )
        document = hd.ko.KeyObjectSelectionDocument(
            evidence=evidence,
            content=content,
            series_instance_uid=generate_uid(),
            series_number=990,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer="fracnode",
        )
        return PipelineOutcome(datasets=(document,), summary=f"{len(evidence)} instance(s) selected")


class SlowPipeline(KeyObjectPipeline):
    name = "test-slow-kos"

    def run(self, request: PipelineInput) -> PipelineOutcome:
        time.sleep(float(os.environ.get("TEST_PIPELINE_DELAY_S", "1")))
        return super().run(request)


class FlakyPipeline(KeyObjectPipeline):
    name = "test-flaky"

    def run(self, request: PipelineInput) -> PipelineOutcome:
        with _flaky_lock:
            if FLAKY_FAILURES["remaining"] > 0:
                FLAKY_FAILURES["remaining"] -= 1
                raise RuntimeError("simulated model failure")
        return super().run(request)


class DecliningPipeline:
    name = "test-decline"

    def run(self, request: PipelineInput) -> PipelineOutcome:
        return PipelineOutcome(not_applicable="the test pipeline declines every study")


def referenced_instances(document: Dataset) -> set[str]:
    return {
        item.ReferencedSOPInstanceUID
        for study in document.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }

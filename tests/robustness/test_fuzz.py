"""The short fuzz run of `make test`: a few hundred structure-aware cases against `fracnode serve`
(the long run, 10,000 cases and more, is `python -m tests.robustness.fuzz`; see bench/RESULTS.md)."""

from __future__ import annotations

import pytest

from tests.robustness.fuzz import fuzz

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom, reading back stored files


def test_a_short_fuzz_run_finds_the_node_standing_and_honest(tmp_path):
    report = fuzz(tmp_path, cases=300, seed=20)
    assert report.cases == 300
    assert report.failures == [], "\n".join(report.failures[:20])
    # every family of cases ran, and the node refused as well as stored
    assert {kind.split(":")[0] for kind in report.kinds} == {"associate", "p-data", "data-set", "stow"}
    assert report.outcomes["data-set:status-0xc210"] > 0 and report.outcomes["data-set:status-0x0"] > 0

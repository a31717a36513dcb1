"""The Orthanc plugin's decisions and state, outside Orthanc (plugins/orthanc/fracnode_handover.py).

The plugin's Orthanc glue runs for real in tests/integration/test_orthanc_plugin.py; these tests
pin down what it decides for each kind of study and what its configuration refuses.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

PLUGIN_DIR = Path(__file__).resolve().parents[2] / "plugins" / "orthanc"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fracnode_handover", PLUGIN_DIR / "fracnode_handover.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fracnode_handover", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


handover = _load()
Settings, Series, decide = handover.Settings, handover.Series, handover.decide
MODALITIES = {"DicomModalities": {"fracnode": ["FRACNODE", "fracnode.lan", 11112]}}


def settings_of(**fracnode: object) -> object:
    return Settings.from_config({**MODALITIES, "Fracnode": fracnode})


def series(sid: str, modality: str, *instances: str, **tags: str) -> object:
    return Series(sid, {"Modality": modality, **tags}, instances)


CR = series("s1", "CR", "i1", "i2", Manufacturer="ACME")
SR = series("s2", "SR", "r1", Manufacturer="fracnode")
SEG = series("s3", "SEG", "r2", Manufacturer="FRACNODE ")
CT = series("s4", "CT", "c1")


@pytest.mark.parametrize(
    ("study", "handed", "forced", "expected"),
    [
        ([CR], set(), False, ("i1", "i2")),
        ([CR, SR, SEG], set(), False, ("i1", "i2")),  # own results are never sent back
        ([CR, SR, SEG], {"i1", "i2"}, False, ()),  # results arrived: stable again, nothing new
        ([CR], {"i1"}, False, ("i1", "i2")),  # a new original: the whole study again
        ([CR, CT], set(), False, ("i1", "i2")),  # CT is not in Modalities
        ([CT], set(), False, ()),
        ([CT, SR], set(), True, ("c1",)),  # forced: Modalities aside, own results still not
        ([CR], {"i1", "i2"}, True, ("i1", "i2")),
        ([SR, SEG], set(), True, ()),
    ],
)
def test_decide_hands_over_originals_once(study, handed, forced, expected):
    decision = decide(study, frozenset(handed), Settings(), forced)
    assert decision.instances == expected
    assert decision.reason


def test_a_study_already_handed_over_says_so():
    assert decide([CR], frozenset({"i1", "i2"}), Settings(), False).reason == "already handed over"


def test_exclude_patterns_match_series_tags_case_insensitively():
    settings = settings_of(Exclude={"SeriesDescription": ["*scout*"]})
    scout = series("s5", "CR", "x1", SeriesDescription="Scout AP")
    assert decide([CR, scout], frozenset(), settings, False).instances == ("i1", "i2")
    assert handover.exclusion(scout, settings) == "SeriesDescription excluded"


def test_own_results_count_when_skipping_them_is_turned_off():
    settings = settings_of(SkipOwnResults=False, Modalities=[])
    assert decide([SR], frozenset(), settings, False).instances == ("r1",)


def test_settings_defaults_and_state_file_beside_the_storage(tmp_path):
    settings = Settings.from_config({**MODALITIES, "StorageDirectory": str(tmp_path)})
    assert (settings.mode, settings.modality, settings.modalities) == ("store", "fracnode", ("CR", "DX"))
    assert settings.state_file == str(tmp_path / "fracnode-plugin.sqlite")


@pytest.mark.parametrize(
    ("fracnode", "message"),
    [
        ({"Modalitys": ["CR"]}, "unknown key(s) ['Modalitys']"),
        ({"Mode": "push"}, '"Fracnode.Mode" must be "store" or "pull"'),
        ({"Modalities": "CR"}, '"Fracnode.Modalities" must be a list'),
        ({"Modalities": [1]}, "list of modality codes"),
        ({"Exclude": {"PatientName": ["*"]}}, "'PatientName' is not a series tag"),
        ({"Enabled": "yes"}, '"Fracnode.Enabled" must be a bool'),
        ({"MaxAttempts": 0}, "at least 1"),
        ({"Mode": "pull"}, '"Fracnode.Url" must be'),
        ({"Mode": "pull", "Url": "http://fracnode.lan:8080"}, '"Fracnode.Peer" must name'),
        ({"Modality": "ai"}, "'ai' is not in \"DicomModalities\""),
        ({"Host": "fracnode.lan"}, 'which "DicomModalities" defines too'),
    ],
)
def test_bad_settings_name_the_key_to_fix(fracnode, message):
    with pytest.raises(ValueError) as error:
        Settings.from_config({**MODALITIES, "Fracnode": fracnode})
    assert message in str(error.value)


def test_the_plugin_can_define_fracnode_as_a_modality_itself():
    settings = Settings.from_config({"Fracnode": {"Host": "fracnode.lan", "Port": 104, "AeTitle": "AI "}})
    assert settings.modality_definition == {"AET": "AI", "Host": "fracnode.lan", "Port": 104}
    with pytest.raises(ValueError, match='is not in "DicomModalities"'):
        Settings.from_config({"Fracnode": {}})
    with pytest.raises(ValueError, match="Port"):
        Settings.from_config({"Fracnode": {"Host": "fracnode.lan", "Port": 0}})
    # pull mode needs no modality; with DicomModalitiesInDatabase it may be in Orthanc's database
    pull = {"Mode": "pull", "Url": "http://fracnode.lan:8080/", "Peer": "orthanc"}
    assert Settings.from_config({"Fracnode": pull}).url == "http://fracnode.lan:8080"
    assert Settings.from_config({"DicomModalitiesInDatabase": True}).host == ""


def test_retry_delay_doubles():
    settings = Settings(retry_delay_s=10)
    assert [handover.retry_delay(settings, n) for n in (1, 2, 3)] == [10, 20, 40]


def test_state_remembers_hand_overs_across_reopening(tmp_path):
    path = str(tmp_path / "state" / "plugin.sqlite")
    state = handover.State(path)
    first = state.record("study-a", ("i1", "i2"), "stable", "store", "", "submitted")
    state.update(first, job="job-1")
    state.set_meta("changes_cursor", "42")
    state.close()

    state = handover.State(path)
    assert state.handed("study-a") == {"i1", "i2"}
    assert state.handed("study-b") == frozenset()
    assert state.by_job("job-1")["id"] == first
    assert state.by_job("") is None
    assert state.meta("changes_cursor") == "42"
    [row] = state.recent()
    assert (row["study"], row["count"], row["state"]) == ("study-a", 2, "submitted")
    assert row["instances_sha256"] == handover.digest(("i2", "i1"))
    state.close()

"""The cervical-spine models: channel mapping, the Model Zoo bundle, shipped weights, geometry.

The shipped weights are trained on synthetic phantoms (models/cspine_*/docs/README.md); the
thresholds below are what they measurably do on phantoms never seen in training, with margin.
"""

from __future__ import annotations

import shutil
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom import Dataset

from node.config import Config
from node.imaging.volume import build_volume
from node.inference import bundle as bundles
from node.inference.bundle import BundleError
from node.pipelines.cspine.models import CSpineModels
from node.pipelines.cspine.vertebrae import VertebraModel, vertebra_channels
from training.cspine.metrics import dice_per_label
from training.phantom.generate import PhantomSpec, PhantomStudy, generate_study

REPO = Path(__file__).resolve().parents[2]
VERTEBRA_BUNDLE = REPO / "models" / "cspine_vertebrae"
FRACTURE_BUNDLE = REPO / "models" / "cspine_fracture"
MODEL_ZOO_BUNDLE = REPO.parent / "shared" / "reference" / "model-zoo" / "wholeBody_ct_segmentation"
ZOO_CHANNELS = {1: 41, 2: 40, 3: 39, 4: 38, 5: 37, 6: 36, 7: 35}  # vertebrae_C1 … vertebrae_C7
MIN_DICE = 0.7  # per vertebra on an unseen small neck phantom; measured 0.81-0.91 (4 seeds), 0.83-0.85 held out
SMALL_NECK = PhantomSpec(size=128, pixel_spacing=1.6, slice_thickness=2.0, noise_sd=10.0)


# -- channel mapping ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (("background", *(f"vertebrae_C{n}" for n in range(1, 8))), {n: n for n in range(1, 8)}),
        (("background", "vertebrae_T1", "vertebrae_C7", "C6", "vertebra_c5"), {7: 2, 6: 3, 5: 4}),
        (("bg", "spleen", "Vertebrae C2"), {2: 2}),
    ],
)
def test_channels_map_to_vertebrae_by_name(names: tuple[str, ...], expected: dict[int, int]) -> None:
    assert vertebra_channels(names) == expected


def test_a_bundle_without_cervical_channels_is_refused_by_name() -> None:
    with pytest.raises(BundleError, match="no output channel is named after a cervical vertebra"):
        vertebra_channels(("background", "liver", "vertebrae_T1", "vertebrae_C8"))


def test_two_channels_for_one_vertebra_are_refused() -> None:
    with pytest.raises(BundleError, match="channels 1 and 2 are both C3"):
        vertebra_channels(("background", "vertebrae_C3", "C3"))


# -- the MONAI Model Zoo's wholeBody_ct_segmentation, unchanged, with random weights -------------


def zoo_with_random_weights(target: Path, boost_channel: int | None = None) -> str:
    """A copy of the Zoo bundle (configs byte-identical) with random weights of its SegResNet;
    `boost_channel` makes that output channel win everywhere (bias of the final convolution)."""
    shutil.copytree(MODEL_ZOO_BUNDLE, target)
    torch.manual_seed(0)
    network = bundles.build_network(bundles.read(target))
    if boost_channel is not None:
        final = network.conv_final[-1].conv  # type: ignore[index,union-attr]
        with torch.no_grad():
            final.weight.zero_()
            final.bias.zero_()
            final.bias[boost_channel] = 10.0
    (target / "models").mkdir()
    torch.save(network.state_dict(), target / "models" / "model.pt")
    return bundles.sha256(target / "models" / "model.pt")


def small_volume() -> object:
    study = generate_study(5, PhantomSpec(size=48, pixel_spacing=3.0, slices=24, slice_thickness=4.0))
    return build_volume(study.datasets)


@pytest.mark.skipif(not MODEL_ZOO_BUNDLE.is_dir(), reason=f"{MODEL_ZOO_BUNDLE} not present")
def test_model_zoo_bundle_loads_unchanged_and_maps_channels_41_to_35_to_c1_to_c7(tmp_path: Path) -> None:
    target = tmp_path / "models" / "cspine_vertebrae"
    digest = zoo_with_random_weights(target, boost_channel=38)  # vertebrae_C4
    for name in ("configs/inference.json", "configs/metadata.json"):
        assert (target / name).read_bytes() == (MODEL_ZOO_BUNDLE / name).read_bytes()
    with pytest.raises(BundleError, match="weights_sha256 is empty and no sha256 was given"):
        VertebraModel(target, device="cpu", runtime="eager", warmup=False)
    model = VertebraModel(target, device="cpu", runtime="eager", warmup=False, weights_sha256=digest)
    try:
        assert model.channels == ZOO_CHANNELS
        assert model.window["roi_size"] == (96, 96, 96) and model.window["padding_mode"] == "replicate"
        volume = small_volume()
        segmentation = model.segment(volume)  # type: ignore[arg-type]
    finally:
        model.close()
    # channel 38 wins everywhere: the whole scan is C4, on the CT grid
    assert segmentation.labels.shape == volume.shape  # type: ignore[attr-defined]
    assert np.all(segmentation.labels == 4)
    assert [v.name for v in segmentation.vertebrae] == ["C4"]


@pytest.mark.skipif(not MODEL_ZOO_BUNDLE.is_dir(), reason=f"{MODEL_ZOO_BUNDLE} not present")
def test_model_zoo_bundle_runs_from_the_config_with_its_sha256_given(tmp_path: Path) -> None:
    digest = zoo_with_random_weights(tmp_path / "models" / "cspine_vertebrae")
    shutil.copytree(FRACTURE_BUNDLE, tmp_path / "models" / "cspine_fracture")
    raw = {"inference": {"models_dir": str(tmp_path / "models"), "device": "cpu",
                         "weights_sha256": {"cspine_vertebrae": digest}}}
    with CSpineModels.from_config(Config.model_validate(raw), runtime="eager", warmup=False) as models:
        assert models.vertebrae.channels == ZOO_CHANNELS
        assert models.vertebra_algorithm.weights_sha256 == digest
        assert models.vertebra_algorithm.name == bundles.read(MODEL_ZOO_BUNDLE).name
        analysis = models.analyze(small_volume())  # type: ignore[arg-type]
    assert analysis.segmentation.labels.dtype == np.uint8
    found = {v.name for v in analysis.segmentation.vertebrae}
    assert {v.name for v in analysis.fracture.vertebrae} == found
    assert 0.0 <= analysis.fracture.patient_probability <= 1.0


# -- the shipped bundles: verified weights --------------------------------------------------------


@pytest.mark.parametrize("root", [VERTEBRA_BUNDLE, FRACTURE_BUNDLE], ids=lambda p: p.name)
def test_shipped_weights_match_their_recorded_sha256(root: Path) -> None:
    bundle = bundles.read(root)
    assert len(bundle.weights_sha256) == 64
    assert bundles.sha256(bundle.weights_path) == bundle.weights_sha256
    assert bundle.weights_path.stat().st_size < 50 * 2**20
    assert "synthetic phantoms" in (root / "docs" / "README.md").read_text()


def test_tampered_shipped_weights_are_refused_naming_the_file(tmp_path: Path) -> None:
    models = tmp_path / "models"
    for root in (VERTEBRA_BUNDLE, FRACTURE_BUNDLE):
        shutil.copytree(root, models / root.name)
    weights = models / "cspine_fracture" / "models" / "model.pt"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    config = Config.model_validate({"inference": {"models_dir": str(models), "device": "cpu"}})
    with pytest.raises(BundleError) as caught:
        CSpineModels.from_config(config, warmup=False)
    assert str(weights) in str(caught.value) and "does not match" in str(caught.value)
    weights.unlink()
    with pytest.raises(BundleError, match="model.pt is missing"):
        CSpineModels.from_config(config, warmup=False)


# -- the shipped models on phantoms never seen in training ----------------------------------------


@pytest.fixture(scope="module")
def models() -> CSpineModels:
    with CSpineModels(VERTEBRA_BUNDLE, FRACTURE_BUNDLE, device="cpu") as loaded:
        yield loaded


@pytest.fixture(scope="module")
def neck() -> PhantomStudy:
    return generate_study(987_654, SMALL_NECK)  # seeds of the training data are 100 and 300


def test_shipped_models_find_c1_to_c7_on_a_neck_phantom(models: CSpineModels, neck: PhantomStudy) -> None:
    volume = build_volume(neck.datasets)
    analysis = models.analyze(volume)
    labels = analysis.segmentation.labels
    if volume.slices[0].position[2] != neck.datasets[0].ImagePositionPatient[2]:
        labels = labels[::-1]  # the volume runs along the normal; the phantom in InstanceNumber order
    dice = dice_per_label(labels, neck.labels, range(1, 8))
    assert [v.name for v in analysis.segmentation.vertebrae] == ["C1", "C2", "C3", "C4", "C5", "C6", "C7"]
    assert min(dice.values()) >= MIN_DICE, dice
    assert len(analysis.fracture.vertebrae) == 7
    assert set(models.operating_points) >= {"suspicious", "fracture"}


def test_shipped_models_find_no_cervical_vertebra_on_an_abdomen_phantom(models: CSpineModels) -> None:
    abdomen = generate_study(424_242, PhantomSpec(size=128, pixel_spacing=2.4, slice_thickness=3.0,
                                                  region="abdomen"))
    segmentation = models.segment(build_volume(abdomen.datasets))
    assert not segmentation.present, [(v.name, v.volume_mm3) for v in segmentation.vertebrae]


# -- geometry: labels and centres in the patient frame of an oblique, shuffled series ------------


def rotation(degrees: float) -> np.ndarray:
    """A turn about the patient's left-right axis (a gantry-tilt-like oblique acquisition)."""
    a = np.radians(degrees)
    return np.array([[1.0, 0.0, 0.0], [0.0, np.cos(a), -np.sin(a)], [0.0, np.sin(a), np.cos(a)]])


def turned(datasets: tuple[Dataset, ...], matrix: np.ndarray, seed: int = 3) -> list[Dataset]:
    """The same pixels with the whole frame turned by `matrix` (orientation and positions), in a shuffled order."""
    out = []
    for ds in datasets:
        copy = deepcopy(ds)  # Dataset(ds) would share the data elements and turn the original too
        row, column = np.array(ds.ImageOrientationPatient[:3]), np.array(ds.ImageOrientationPatient[3:])
        copy.ImageOrientationPatient = [round(float(v), 8) for v in (*matrix @ row, *matrix @ column)]
        copy.ImagePositionPatient = [round(float(v), 4) for v in matrix @ np.array(ds.ImagePositionPatient)]
        out.append(copy)
    order = np.random.default_rng(seed).permutation(len(out))
    return [out[i] for i in order]


def phantom_centres(study: PhantomStudy) -> dict[str, np.ndarray]:
    """Centroid of each vertebra of the phantom's own labels, in patient mm (from its DICOM headers)."""
    positions = np.array([ds.ImagePositionPatient for ds in study.datasets], dtype=np.float64)
    first = study.datasets[0]
    row, column = np.array(first.ImageOrientationPatient[:3]), np.array(first.ImageOrientationPatient[3:])
    dy, dx = (float(v) for v in first.PixelSpacing)
    centres = {}
    for label in range(1, 8):
        k, j, i = np.nonzero(study.labels == label)
        step = (positions[-1] - positions[0]) / (len(positions) - 1)
        centres[f"C{label}"] = positions[0] + k.mean() * step + i.mean() * dx * row + j.mean() * dy * column
    return centres


def test_centres_follow_an_oblique_shuffled_series_into_the_patient_frame(
    models: CSpineModels, neck: PhantomStudy
) -> None:
    matrix = rotation(25.0)
    straight = models.segment(build_volume(neck.datasets))
    oblique_volume = build_volume(turned(neck.datasets, matrix))
    oblique = models.segment(oblique_volume)
    truth = phantom_centres(neck)
    assert [v.name for v in oblique.vertebrae] == [v.name for v in straight.vertebrae] == list(truth)
    for before, after in zip(straight.vertebrae, oblique.vertebrae, strict=True):
        # same pixels, turned frame: the centre turns with it, exactly up to rounding
        assert np.allclose(after.centre, matrix @ np.array(before.centre), atol=0.5), after.name
        # and lies where the phantom put that vertebra, turned
        assert np.linalg.norm(np.array(after.centre) - matrix @ truth[after.name]) < 4.0, after.name
    assert oblique_volume.shape == straight.labels.shape
    assert np.array_equal(np.nonzero(oblique.labels)[0].size, np.nonzero(straight.labels)[0].size)


def test_vertebra_model_card_lists_every_fine_tuning_stage_in_order(tmp_path: Path) -> None:
    import json

    from training.cspine import model_card as cspine_card

    bundle = tmp_path / "cspine_vertebrae"
    shutil.copytree(VERTEBRA_BUNDLE, bundle)
    path = bundle / "configs" / "metadata.json"
    metadata = json.loads(path.read_text())
    stage = {"seed": 7, "split": {"train": 112, "val": 24, "test": 24}, "negatives": {"train": 45, "val": 10, "test": 9},
             "epochs": 5, "learning_rate": 0.001, "best_epoch": 4, "training_seconds": 290.0}
    first = {**stage, "epochs": 25, "best_epoch": 25, "training_seconds": 1314.4}
    metadata["fracnode"]["training"] = {**stage, "training_seconds": 3.0,
                                        "fine_tune_of": {**stage, "training_seconds": 2.0, "fine_tune_of": first}}
    path.write_text(json.dumps(metadata))
    card = cspine_card.render_vertebrae(bundle)
    one, two, three = (card.index(f"\n{n}. ") for n in (1, 2, 3))
    assert one < two < three
    assert "25 epochs" in card[one:two] and "1314.4 s" in card[one:two]
    assert card[two:].startswith("\n2. Fine-tuned from those weights:") and "2.0 s" in card[two:three]
    assert card[three:].startswith("\n3. Fine-tuned from those weights:") and "3.0 s" in card[three:]

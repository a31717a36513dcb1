"""The bundle's EfficientNet-Lite encoder against the reference implementation (efficientnet-lite-pytorch)
with the ImageNet weights of the [train] extra: same layers, same padding, same numbers."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "models" / "radiograph_fracture" / "scripts"
reference = pytest.importorskip("efficientnet_lite_pytorch", reason="the [train] extra is not installed")


def _encoder_module():
    sys.path.insert(0, str(SCRIPTS))
    try:
        return importlib.import_module("efficientnet_lite")
    finally:
        sys.path.remove(str(SCRIPTS))


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_encoder_with_imagenet_weights_reproduces_the_reference_logits(variant: str) -> None:
    from training.radiograph.pretrained import weights_file

    lite = _encoder_module()
    path = weights_file(variant)  # also checks the recorded sha256
    size = 256  # a multiple of 32; the reference gets the same size for its static padding
    theirs = reference.EfficientNet.from_pretrained(
        f"efficientnet-{variant}", weights_path=str(path), image_size=size
    ).eval()
    ours = lite.EfficientNetLite(variant, classes=1000).eval()
    ours.load_state_dict(lite.from_reference_state_dict(torch.load(path, weights_only=True), ours))
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected, actual = theirs(x), ours(x)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert expected.abs().max() > 1  # real logits, not an all-zero network


def test_reference_weights_with_a_foreign_key_are_refused_by_name() -> None:
    lite = _encoder_module()
    encoder = lite.EfficientNetLite("lite0")
    with pytest.raises(ValueError, match="unexpected key '_blocks.0._se_reduce.weight'"):
        lite.from_reference_state_dict({"_blocks.0._se_reduce.weight": torch.zeros(1)}, encoder)
    with pytest.raises(ValueError, match="missing"):
        lite.from_reference_state_dict({}, encoder)


def test_variant_layouts_follow_the_lite_scaling_rules() -> None:
    lite = _encoder_module()
    assert [stage[0] for stage in lite.stage_layout("lite0")] == [1, 2, 2, 3, 3, 4, 1]
    assert [stage[0] for stage in lite.stage_layout("lite2")] == [1, 3, 3, 4, 4, 5, 1]  # depth 1.2, ends fixed
    assert [stage[5] for stage in lite.stage_layout("lite2")] == [16, 24, 48, 88, 120, 208, 352]  # width 1.1
    with pytest.raises(ValueError, match="variant 'lite9'"):
        lite.stage_layout("lite9")


def test_a_wrong_weights_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training.radiograph import pretrained

    fake = tmp_path / "weights.pth"
    fake.write_bytes(b"not the ImageNet weights")
    module = importlib.import_module(pretrained.SOURCES["lite0"].package)
    monkeypatch.setattr(
        getattr(module, pretrained.SOURCES["lite0"].file_class), "get_model_file_path", staticmethod(lambda: str(fake))
    )
    with pytest.raises(pretrained.PretrainedError, match="is not the recorded 579344248a93"):
        pretrained.weights_file("lite0")

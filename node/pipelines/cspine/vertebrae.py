"""Cervical vertebrae C1–C7 in a CT volume: a MONAI segmentation bundle run by sliding window.

The bundle says everything model-specific: its `preprocessing` (a MONAI transform chain: the
loader is skipped because the volume is already in memory, the rest runs unchanged), its
`inferer` (roi size, overlap, blending) and its output's `channel_def`, whose names map channels to
vertebrae ("vertebrae_C1" … "vertebrae_C7", the TotalSegmentator names of the Model Zoo's
`wholeBody_ct_segmentation`, where they are channels 41 … 35). Other channels (organs, thoracic
vertebrae) are folded into one "other" channel inside each window, so a 105-channel model needs
memory for 9 blended channels, not 105.

After the argmax on the model's grid, each vertebra keeps its largest connected component and is
dropped below `min_volume_mm3`; the labels then go back to the CT grid by nearest neighbour
(uint8, 1 = C1 … 7 = C7), where voxel counts, boxes and centres are measured.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack

import numpy as np
import SimpleITK as sitk
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import Compose

from node.imaging import voxelgrid
from node.imaging.volume import Volume
from node.inference.bundle import BundleError
from node.inference.engine import BundleModel, EngineOptions
from node.pipelines.cspine.findings import VERTEBRAE

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(?:vertebrae?[_ ]?)?(C[1-7])$", re.IGNORECASE)
_LOADERS = {"LoadImage", "LoadImaged"}
DEFAULT_MIN_VOLUME_MM3 = 500.0


@dataclass(frozen=True)
class VertebraMask:
    """One vertebra found, measured on the CT grid."""

    label: int  # 1 = C1 … 7 = C7, its value in the label volume
    name: str  # "C1" … "C7"
    voxels: int
    volume_mm3: float
    box: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # (start, stop) per (k, j, i)
    centre_index: tuple[float, float, float]  # centroid (k, j, i), fractional voxels
    centre: tuple[float, float, float]  # centroid (x, y, z) mm, patient frame (LPS)


@dataclass(frozen=True, eq=False)
class VertebraSegmentation:
    labels: np.ndarray  # uint8 (slices, rows, columns) on the CT grid, 0 background, 1..7 = C1..C7
    vertebrae: tuple[VertebraMask, ...]  # present vertebrae, in label order
    dropped: tuple[tuple[str, str], ...]  # (vertebra, why) for components too small to keep
    seconds: dict[str, float]  # preprocess, sliding_window, postprocess

    @property
    def present(self) -> bool:
        """Whether any cervical vertebra was found (none: the study is not a C-spine CT)."""
        return bool(self.vertebrae)

    def vertebra(self, name: str) -> VertebraMask | None:
        return next((v for v in self.vertebrae if v.name == name), None)


def vertebra_channels(channel_names: tuple[str, ...]) -> dict[int, int]:
    """Label value (1 = C1 … 7 = C7) → output channel, from the channel names of the bundle."""
    found: dict[int, int] = {}
    for channel, name in enumerate(channel_names):
        match = _NAME.match(name.strip())
        if match:
            label = VERTEBRAE.index(match.group(1).upper()) + 1
            if label in found:
                raise BundleError(f"channels {found[label]} and {channel} are both {match.group(1)}")
            found[label] = channel
    if not found:
        raise BundleError(
            f"no output channel is named after a cervical vertebra (vertebrae_C1 … vertebrae_C7);"
            f" channels: {', '.join(channel_names[:12])}{' …' if len(channel_names) > 12 else ''}"
        )
    return found


def preprocessing(config: dict[str, Any], root: Path) -> Compose:
    """The bundle's `preprocessing` chain without its file loader (the volume is in memory)."""
    spec = config.get("preprocessing")
    if not isinstance(spec, dict) or spec.get("_target_") not in ("Compose", "monai.transforms.Compose"):
        raise BundleError(
            f"{root / 'configs' / 'inference.json'}: preprocessing must be a MONAI Compose of"
            " dictionary transforms (LoadImaged, Orientationd, Spacingd, intensity scaling)"
        )
    parser = ConfigParser(config)
    parser["bundle_root"] = str(root)
    kept = []
    for index, item in enumerate(spec.get("transforms", [])):
        if str(item.get("_target_", "")).rsplit(".", 1)[-1] in _LOADERS:
            continue  # not even built: a reader may need packages the node does not use
        with warnings.catch_warnings():
            # Orientationd warns about a changed default of `labels` that does not apply to RAS input
            warnings.simplefilter("ignore", FutureWarning)
            kept.append(parser.get_parsed_content(f"preprocessing#transforms#{index}", instantiate=True))
    return Compose(kept, lazy=True)  # Orientation and Spacing fuse into one resampling


def inferer_settings(config: dict[str, Any], root: Path) -> dict[str, Any]:
    """roi size, overlap, blending and padding of the bundle's SlidingWindowInferer."""
    spec = config.get("inferer")
    if not isinstance(spec, dict) or not str(spec.get("_target_", "")).endswith("SlidingWindowInferer"):
        raise BundleError(f"{root / 'configs' / 'inference.json'}: inferer must be a SlidingWindowInferer")
    parser = ConfigParser(config)
    parser["bundle_root"] = str(root)
    resolved = {key: parser.get_parsed_content(f"inferer#{key}") for key in spec if key != "_target_"}
    return {
        "roi_size": tuple(int(v) for v in resolved["roi_size"]),
        "overlap": float(resolved.get("overlap", 0.25)),
        "mode": str(resolved.get("mode", "constant")),
        "sigma_scale": resolved.get("sigma_scale", 0.125),
        "padding_mode": str(resolved.get("padding_mode", "constant")),
        "sw_batch_size": int(resolved.get("sw_batch_size", 1)),
    }


def reorients(config: dict[str, Any]) -> bool:
    """Whether the bundle's preprocessing turns its input to a fixed orientation (Orientation(d))."""
    spec = config.get("preprocessing")
    transforms = spec.get("transforms", []) if isinstance(spec, dict) else []
    return any(str(t.get("_target_", "")).rsplit(".", 1)[-1] in ("Orientationd", "Orientation") for t in transforms)


def to_metatensor(volume: Volume, native_order: bool = False) -> MetaTensor:
    """The volume as MONAI's ITK reader would load it: (i, j, k) array, RAS affine, no channel.

    `native_order` keeps the volume's own (k, j, i) memory order with the matching affine: the same
    image, and when an Orientation transform follows, the same result, 4× faster (no transposing
    copy of the whole volume before the resampling; 2.6 s → 0.7 s at 512×512×329).
    """
    hu = volume.hu if volume.hu.dtype == np.float32 else volume.hu.astype(np.float32)
    if native_order:
        array = torch.from_numpy(hu)
        affine = torch.as_tensor(voxelgrid.LPS_FROM_RAS @ voxelgrid.volume_affine(volume))
    else:
        array = torch.from_numpy(hu).permute(2, 1, 0)  # a view: no copy of the volume
        affine = torch.as_tensor(voxelgrid.volume_affine_ijk_ras(volume))
    meta = {"original_channel_dim": "no_channel", "space": "RAS", "spatial_shape": tuple(array.shape),
            "original_affine": affine.clone(), "filename_or_obj": volume.series_instance_uid}
    return MetaTensor(array, affine=affine, meta=meta)


class VertebraModel(BundleModel):
    """A vertebra segmentation bundle, loaded and verified once (sha256), run on whole CT volumes."""

    max_batch = 4  # sliding-window patches per forward
    max_wait_ms = 0.0  # one volume's patches: nothing to wait for

    def __init__(
        self, bundle_path: Path | str, *, min_volume_mm3: float | None = None, **options: Unpack[EngineOptions]
    ) -> None:
        super().__init__(bundle_path, **options)
        output = self.contract.outputs[0]
        self.output_name = output.name
        self.channels = vertebra_channels(output.channels)  # label -> channel
        others = set(range(len(output.channels))) - set(self.channels.values())
        background = [c for c, n in enumerate(output.channels) if n.lower() == "background"] or [0]
        self.background = background[0]
        self.others = sorted(others - {self.background})
        self.softmax = output.activation == "none"
        self.transforms = preprocessing(self.bundle.config, self.bundle.root)
        self.native_order = reorients(self.bundle.config)
        self.window = inferer_settings(self.bundle.config, self.bundle.root)
        if tuple(self.window["roi_size"]) != self.contract.spatial_shape:
            raise BundleError(
                f"{self.bundle.root}: inferer roi_size {self.window['roi_size']} differs from the"
                f" input spatial_shape {self.contract.spatial_shape} in metadata.json"
            )
        given = min_volume_mm3 if min_volume_mm3 is not None else self.bundle.extras.get("min_vertebra_volume_mm3")
        self.min_volume_mm3 = float(given if given is not None else DEFAULT_MIN_VOLUME_MM3)
        self.min_probability = float(self.bundle.extras.get("min_vertebra_probability", 0.0))

    # -- the stages -------------------------------------------------------------------------------

    def prepare(self, volume: Volume) -> MetaTensor:
        """The bundle's preprocessing of the volume: (1, X, Y, Z) on the model's grid, RAS affine."""
        key = str(self.bundle.config.get("image_key", "image"))  # what the bundle's dictionary transforms read
        image = self.transforms({key: to_metatensor(volume, self.native_order)})[key]
        return image if isinstance(image, MetaTensor) else MetaTensor(image)

    def _predict(self, windows: torch.Tensor) -> torch.Tensor:
        """One batch of windows → (n, 9, …): background, C1 … C7, the largest other probability."""
        rows = self.infer([w.numpy() for w in windows.detach().float().cpu()])
        logits = torch.from_numpy(np.stack([row[self.output_name] for row in rows]))
        probabilities = torch.softmax(logits, dim=1) if self.softmax else logits
        kept = [probabilities[:, self.background]]
        kept += [probabilities[:, self.channels[label]] if label in self.channels
                 else torch.zeros_like(probabilities[:, 0]) for label in range(1, 8)]
        if self.others:
            kept.append(probabilities[:, self.others].amax(dim=1))
        return torch.stack(kept, dim=1)

    def predict_grid(self, image: MetaTensor) -> tuple[np.ndarray, np.ndarray]:
        """Label map (uint8, 0..7) on the model's grid, argmax of the blended window outputs, and
        the winning probability of each voxel (float32)."""
        w = self.window
        blended = sliding_window_inference(
            image.as_tensor()[None].float(), w["roi_size"], w["sw_batch_size"], self._predict,
            overlap=w["overlap"], mode=w["mode"], sigma_scale=w["sigma_scale"],
            padding_mode=w["padding_mode"], progress=False,
        )
        confidence, winner = torch.max(blended[0], dim=0)
        labels = winner.to(torch.uint8).numpy()
        labels[labels > 7] = 0  # "other" is not a vertebra
        return labels, confidence.float().numpy()

    def clean(
        self, labels: np.ndarray, voxel_mm3: float, confidence: np.ndarray | None = None
    ) -> tuple[np.ndarray, list[tuple[str, str]]]:
        """Largest connected component per vertebra; dropped when under min_volume_mm3, or when its
        mean probability is under min_probability (the bundle's `fracnode.min_vertebra_probability`)."""
        dropped: list[tuple[str, str]] = []
        cleaned = np.zeros_like(labels)
        for label in range(1, 8):
            mask = labels == label
            if not mask.any():
                continue
            components = sitk.RelabelComponent(
                sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True),
                sortByObjectSize=True,
            )
            largest = sitk.GetArrayViewFromImage(components) == 1
            volume_mm3 = float(largest.sum()) * voxel_mm3
            name = VERTEBRAE[label - 1]
            if volume_mm3 < self.min_volume_mm3:
                dropped.append((name, f"{volume_mm3:.0f} mm³ < {self.min_volume_mm3:.0f} mm³"))
                continue
            if confidence is not None and self.min_probability > 0:
                mean = float(confidence[largest].mean())
                if mean < self.min_probability:
                    dropped.append((name, f"mean probability {mean:.2f} < {self.min_probability:.2f}"))
                    continue
            cleaned[largest] = label
        return cleaned, dropped

    def segment(self, volume: Volume) -> VertebraSegmentation:
        """C1–C7 of a CT volume: label volume on the CT grid and per-vertebra measurements."""
        seconds: dict[str, float] = {}
        start = time.perf_counter()
        image = self.prepare(volume)
        seconds["preprocess"] = time.perf_counter() - start
        start = time.perf_counter()
        grid, confidence = self.predict_grid(image)
        seconds["sliding_window"] = time.perf_counter() - start
        start = time.perf_counter()
        model_affine = voxelgrid.LPS_FROM_RAS @ np.asarray(image.affine, dtype=np.float64)
        voxel_mm3 = float(abs(np.linalg.det(model_affine[:3, :3])))
        grid, dropped = self.clean(grid, voxel_mm3, confidence)
        labels = to_ct_grid(grid, model_affine, volume)
        vertebrae = measure(labels, volume)
        seconds["postprocess"] = time.perf_counter() - start
        return VertebraSegmentation(labels, vertebrae, tuple(dropped), seconds)


def to_ct_grid(grid: np.ndarray, grid_affine_lps: np.ndarray, volume: Volume) -> np.ndarray:
    """Model-grid labels on the CT grid (uint8 (slices, rows, columns)), nearest neighbour; only the
    box around the vertebrae is computed."""
    labels = np.zeros(volume.shape, dtype=np.uint8)
    present = np.nonzero(grid)
    if not present[0].size:
        return labels
    source_box = tuple((int(axis.min()), int(axis.max()) + 1) for axis in present)
    ct_affine = voxelgrid.volume_affine(volume)
    box = voxelgrid.box_to_target(source_box, grid_affine_lps, volume.shape, ct_affine)
    if any(lo >= hi for lo, hi in box):
        return labels
    region = voxelgrid.nearest(grid, grid_affine_lps, volume.shape, ct_affine, box=box)
    labels[tuple(slice(lo, hi) for lo, hi in box)] = region
    return labels


def measure(labels: np.ndarray, volume: Volume) -> tuple[VertebraMask, ...]:
    """Voxel count, box and centroid of each label 1..7 present in a CT-grid label volume."""
    voxel_mm3 = float(np.prod(volume.spacing))
    slices = np.nonzero(labels.reshape(labels.shape[0], -1).any(axis=1))[0]
    if not slices.size:
        return ()
    k0, k1 = int(slices.min()), int(slices.max()) + 1
    block = labels[k0:k1]
    rows, columns = np.nonzero(block.any(axis=(0, 2)))[0], np.nonzero(block.any(axis=(0, 1)))[0]
    j0, i0 = int(rows.min()), int(columns.min())
    block = block[:, j0:int(rows.max()) + 1, i0:int(columns.max()) + 1]  # the spine, not the whole scan
    found = []
    for label in range(1, 8):
        k, j, i = np.nonzero(block == label)
        if not k.size:
            continue
        k, j, i = k + k0, j + j0, i + i0
        centre_index = (float(k.mean()), float(j.mean()), float(i.mean()))
        centre = tuple(float(v) for v in volume.index_to_patient(centre_index))
        found.append(VertebraMask(
            label=label, name=VERTEBRAE[label - 1], voxels=int(k.size), volume_mm3=k.size * voxel_mm3,
            box=((int(k.min()), int(k.max()) + 1), (int(j.min()), int(j.max()) + 1), (int(i.min()), int(i.max()) + 1)),
            centre_index=centre_index, centre=centre,  # type: ignore[arg-type]
        ))
    return tuple(found)

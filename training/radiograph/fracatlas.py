"""FracAtlas as training data: manifest, leakage-safe split, and a preprocessed cache.

The split is by `manifest.csv`'s `group_id` (near-duplicates and neighbouring image IDs share a
group), so no group is ever on both sides. The cache holds every image letterboxed to the model's
input size with its rasterised fracture polygons, so epochs do not decode JPEGs again.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from node.imaging.letterbox import fit

BODY_REGIONS = ("hand", "leg", "hip", "shoulder")
COCO_PATH = Path("Annotations") / "COCO JSON" / "COCO_fracture_masks.json"


class DataError(ValueError):
    pass


@dataclass(frozen=True)
class Record:
    image_id: str
    path: Path
    fractured: bool
    body_regions: tuple[str, ...]
    group_id: str
    hardware: bool = False  # FracAtlas's `hardware` column: orthopaedic implants in the image


@dataclass
class Arrays:
    """Preprocessed images of one split, all size×size."""

    ids: list[str]
    images: np.ndarray  # uint8 (N, S, S), letterboxed, padding 0
    masks: np.ndarray  # uint8 (N, S, S), 1 inside a fracture polygon
    boxes: list[list[tuple[float, float, float, float]]]  # per image, model-space x0, y0, x1, y1
    fractured: np.ndarray  # float32 (N,)
    body: np.ndarray  # float32 (N, len(BODY_REGIONS)), multi-label
    valid: np.ndarray  # bool (N, S, S), True on the image area (not padding)
    hardware: np.ndarray | None = None  # bool (N,): orthopaedic hardware in the image


def read_manifest(root: Path) -> list[Record]:
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        raise DataError(f"{manifest} not found: --data must be a FracAtlas folder with manifest.csv")
    records = []
    with manifest.open(newline="") as handle:
        for row in csv.DictReader(handle):
            regions = tuple(part for part in row["body_part"].split("|") if part in BODY_REGIONS)
            records.append(
                Record(
                    image_id=row["image_id"],
                    path=root / row["image_path"],
                    fractured=row["label"] == "fractured",
                    body_regions=regions,
                    group_id=row["group_id"],
                    hardware=row.get("hardware") == "1",
                )
            )
    if not records:
        raise DataError(f"{manifest} lists no images")
    return records


def _by_group(records: list[Record]) -> dict[str, list[Record]]:
    groups: dict[str, list[Record]] = {}
    for record in records:
        groups.setdefault(record.group_id, []).append(record)
    return groups


def split(records: list[Record], seed: int = 7, fractions=(0.7, 0.15, 0.15)) -> dict[str, list[Record]]:
    """Assign whole groups to train/val/test, stratified by whether the group holds a fracture."""
    groups = _by_group(records)
    rng = random.Random(seed)
    parts: dict[str, list[Record]] = {"train": [], "val": [], "test": []}
    for has_fracture in (True, False):
        keys = sorted(k for k, members in groups.items() if any(r.fractured for r in members) == has_fracture)
        rng.shuffle(keys)
        total = sum(len(groups[k]) for k in keys)
        taken = 0
        for key in keys:
            share = taken / total if total else 0
            name = "test" if share < fractions[2] else "val" if share < fractions[2] + fractions[1] else "train"
            parts[name].extend(groups[key])
            taken += len(groups[key])
    return {name: sorted(members, key=lambda r: r.image_id) for name, members in parts.items()}


def cross_validation_fold(
    parts: dict[str, list[Record]], fold: int, folds: int, seed: int = 7
) -> dict[str, list[Record]]:
    """Fold `fold` (1 to `folds`) of a grouped cross-validation over the train and validation images.

    The train and validation groups are pooled and dealt, whole, into `folds` parts: first the
    groups holding a fracture, each to the part with the fewest fractured images so far, then the
    others, each to the part with the fewest images (largest groups first, ties in a seeded random
    order). This fold's part validates and the others train. The test split is returned untouched,
    so every fold is measured on the same unseen images and no fold ever trains on them.
    """
    if not 1 <= fold <= folds or folds < 2:
        raise ValueError(f"fold {fold} of {folds}: need 2 or more folds and a fold from 1 to {folds}")
    groups = _by_group(parts["train"] + parts["val"])
    fractured = {key: sum(r.fractured for r in members) for key, members in groups.items()}
    rng = random.Random(f"cross-validation {seed} {folds}")
    keys = sorted(groups)
    rng.shuffle(keys)
    keys.sort(key=lambda k: (-fractured[k], -len(groups[k])))  # stable: ties stay shuffled
    dealt: list[list[Record]] = [[] for _ in range(folds)]
    dealt_fractured = [0] * folds
    for key in keys:
        if fractured[key]:
            part = min(range(folds), key=lambda i: (dealt_fractured[i], len(dealt[i])))
        else:
            part = min(range(folds), key=lambda i: len(dealt[i]))
        dealt[part].extend(groups[key])
        dealt_fractured[part] += fractured[key]
    rest = [record for i, members in enumerate(dealt) if i != fold - 1 for record in members]
    return {
        "train": sorted(rest, key=lambda r: r.image_id),
        "val": sorted(dealt[fold - 1], key=lambda r: r.image_id),
        "test": parts["test"],
    }


def _polygons(root: Path) -> dict[str, list[list[tuple[float, float]]]]:
    path = root / COCO_PATH
    if not path.is_file():
        raise DataError(f"{path} not found: the FracAtlas COCO annotations are needed for the region masks")
    coco = json.loads(path.read_text())
    names = {image["id"]: image["file_name"] for image in coco["images"]}
    polygons: dict[str, list[list[tuple[float, float]]]] = {}
    for annotation in coco["annotations"]:
        for flat in annotation["segmentation"]:
            points = list(zip(flat[0::2], flat[1::2], strict=False))  # x, y pairs; a stray last x is dropped
            polygons.setdefault(names[annotation["image_id"]], []).append(points)
    return polygons


def load_image(path: Path) -> np.ndarray:
    """A FracAtlas JPEG as float32 grayscale in [0, 1]."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def build(root: Path, records: list[Record], size: int, cache: Path) -> Arrays:
    """Preprocess `records` (or load them from `cache` when it matches) into Arrays."""
    key = hashlib.sha256(json.dumps([size, [(r.image_id, str(r.path)) for r in records]]).encode()).hexdigest()[:16]
    cached = cache / f"fracatlas-{size}-{key}.npz"
    polygons = _polygons(root)
    if cached.is_file():
        data = np.load(cached, allow_pickle=False)
        images, masks, valid = data["images"], data["masks"], data["valid"]
        boxes = json.loads(str(data["boxes"]))
    else:
        images = np.zeros((len(records), size, size), np.uint8)
        masks = np.zeros_like(images)
        valid = np.zeros(images.shape, bool)
        boxes = []
        for i, record in enumerate(tqdm(records, desc=f"preparing {len(records)} images", unit="img")):
            fitted, box = fit(load_image(record.path), size)
            images[i] = np.clip(fitted * 255 + 0.5, 0, 255).astype(np.uint8)
            valid[
                i, box.top : box.top + round(box.rows * box.scale), box.left : box.left + round(box.columns * box.scale)
            ] = True
            canvas = Image.new("L", (size, size))
            draw = ImageDraw.Draw(canvas)
            image_boxes = []
            for polygon in polygons.get(record.image_id, []):
                points = box.to_model(np.array(polygon))
                draw.polygon([tuple(p) for p in points], fill=1)
                image_boxes.append((*points.min(axis=0).tolist(), *points.max(axis=0).tolist()))
            masks[i] = np.asarray(canvas)
            boxes.append(image_boxes)
        cache.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".tmp.npz")
        np.savez(partial, images=images, masks=masks, valid=valid, boxes=json.dumps(boxes))
        partial.rename(cached)
    missing = [r.image_id for r in records if r.fractured and r.image_id not in polygons]
    if len(missing) > len(records) // 10:
        raise DataError(f"{len(missing)} fractured images have no polygon in {COCO_PATH}")
    return Arrays(
        ids=[r.image_id for r in records],
        images=images,
        masks=masks,
        boxes=[[tuple(b) for b in image_boxes] for image_boxes in boxes],
        fractured=np.array([r.fractured for r in records], np.float32),
        body=np.array([[region in r.body_regions for region in BODY_REGIONS] for r in records], np.float32),
        valid=valid,
        hardware=np.array([r.hardware for r in records], bool),
    )

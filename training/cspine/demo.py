"""The data behind the shipped cervical-spine demo weights: varied synthetic phantoms, reproducible.

    python -m training.cspine.demo --out DIR --studies 160 --negatives 24 --seed 100 --size 256

writes `DIR/neck/` (the RSNA 2022 layout: train.csv, train_images/, segmentations/) and
`DIR/no-neck/train_images/` (abdomen-like CT without any cervical vertebra, the background the
vertebra model must learn to leave alone). Unlike `fracnode phantom cspine`, which draws every
study from one spec, each study here draws its own field of view (170–400 mm, the range of real
C-spine and trauma CT) and, for one study in four, a long scan (300–400 mm, e.g. 600 slices of
0.625 mm) reaching well beyond the neck, so a model trained on small 256×256 matrices also meets
the geometry of full 512×512 series. The model cards give the exact commands used.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np

from training.phantom.generate import PhantomSpec, generate_study, write_rsna_layout

Region = Literal["neck", "abdomen"]

THICKNESSES = (0.625, 1.0, 1.25, 2.0, 3.0)


def demo_spec(rng: np.random.Generator, size: int, region: Region = "neck") -> PhantomSpec:
    """One study's spec: field of view, and for one in four a long scan."""
    fov = float(rng.uniform(170.0, 400.0))
    slices, thickness = None, None
    if rng.random() < 0.25:
        thickness = float(rng.choice(THICKNESSES[1:]))  # long thin scans cost slices, not realism
        slices = math.ceil(float(rng.uniform(300.0, 400.0)) / thickness)
    return PhantomSpec(
        size=size, pixel_spacing=round(fov / size, 4), slices=slices, slice_thickness=thickness, region=region
    )


def generate(
    out: Path, studies: int, negatives: int, seed: int, size: int, log: Callable[[str], None] = print
) -> tuple[Path, Path]:
    """Write `studies` neck phantoms and `negatives` abdomen phantoms under out/neck and out/no-neck."""
    root = np.random.default_rng(seed)
    neck, no_neck = Path(out) / "neck", Path(out) / "no-neck"
    for index in range(studies + negatives):
        rng = np.random.default_rng(root.integers(0, 2**63))
        region: Region = "neck" if index < studies else "abdomen"
        spec = demo_spec(rng, size, region)
        study = generate_study(rng, spec, index)
        write_rsna_layout(neck if region == "neck" else no_neck, [study])
        log(
            f"{index + 1}/{studies + negatives} {region} fov={(spec.pixel_spacing or 0.0) * size:.0f}mm"
            f" slices={len(study.datasets)} fractures={''.join(str(int(f)) for f in study.fractures)}"
        )
    return neck, no_neck


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.cspine.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for neck/ and no-neck/")
    parser.add_argument("--studies", type=int, required=True, help="neck phantoms (RSNA layout)")
    parser.add_argument("--negatives", type=int, default=0, help="abdomen phantoms without a cervical spine")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--size", type=int, default=256, help="rows and columns")
    args = parser.parse_args(argv)
    generate(
        Path(args.out),
        args.studies,
        args.negatives,
        args.seed,
        args.size,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

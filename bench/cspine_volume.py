"""Phantom generation time and `build_volume` time and peak memory on big cervical CT series.

    .venv/bin/python -m bench.cspine_volume [--slices 300 600] [--size 512]

For each slice count: time `generate_study` (one 512×512×N study, slices 0.625 mm), write the
series to a temporary folder, then build its volume in a fresh subprocess and report that
process's peak RSS next to its RSS right after the imports, so the difference is what building
the volume costs. Peak RSS is VmHWM from /proc/self/status: on Linux `getrusage().ru_maxrss`
survives fork + exec, so in a child it would report the (phantom-holding) parent's peak.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
from pathlib import Path
import numpy as np
from node.imaging.volume import build_volume
def hwm():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1])
baseline = hwm()
paths = sorted(Path(sys.argv[1]).glob("*.dcm"))
start = time.perf_counter()
volume = build_volume(paths, dtype=np.dtype(sys.argv[2]).type)
elapsed = time.perf_counter() - start
peak = hwm()
print(json.dumps({"shape": volume.shape, "dtype": str(volume.hu.dtype), "seconds": elapsed,
                  "volume_mb": volume.hu.nbytes / 2**20, "baseline_rss_mb": baseline / 1024,
                  "peak_rss_mb": peak / 1024}))
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slices", type=int, nargs="+", default=[300, 600])
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    from training.phantom.generate import PhantomSpec, generate_study

    for slices in args.slices:
        spec = PhantomSpec(size=args.size, slices=slices, slice_thickness=0.625)
        start = time.perf_counter()
        study = generate_study(1, spec)
        generated = time.perf_counter() - start
        print(f"generate_study {args.size}x{args.size}x{slices}: {generated:.2f} s", flush=True)
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            for ds in study.datasets:
                ds.save_as(Path(folder) / f"{int(ds.InstanceNumber)}.dcm", enforce_file_format=True)
            print(f"  written in {time.perf_counter() - start:.2f} s", flush=True)
            del study
            for dtype in ("float32", "int16"):
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, folder, dtype],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                result = json.loads(out.stdout)
                print(
                    f"  build_volume {dtype}: {result['seconds']:.2f} s, volume {result['volume_mb']:.0f} MB,"
                    f" RSS after imports {result['baseline_rss_mb']:.0f} MB, peak {result['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The radiograph model alone: latency and throughput of each execution path, batch by batch.

    .venv/bin/python -m bench.radiograph_model [--batch 1 8 32] [--paths eager onnxruntime ...]
        [--threads N] [--min-seconds 3] [--bundle models/radiograph_fracture]

For each execution path the network (the bundle's `network_def`, with its trained weights when
models/model.pt exists, else random weights: the cost is the same) runs forward on standardized
random inputs of the contract's shape. Every path is first checked against eager PyTorch
(largest absolute difference of the raw outputs), then timed: two warm-up forwards, then repeated
forwards for at least --min-seconds and at least 3 times; the median forward time is reported as
per-image latency (median / batch) and images per second (batch / median). Paths take turns per
batch size, so load from other users of the machine spreads over all of them.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from node.inference import bundle as bundles
from node.inference import runtime
from node.inference.contract import read_contract

REPO = Path(__file__).resolve().parents[1]
Forward = Callable[[np.ndarray], tuple[np.ndarray, ...]]


def _torch_path(module: Callable[..., object], device: torch.device, names: tuple[str, ...]) -> Forward:
    def forward(batch: np.ndarray) -> tuple[np.ndarray, ...]:
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(device)
            outputs = runtime.as_tuple(module(x), names)
            return tuple(t.float().cpu().numpy() for t in outputs)

    return forward


def build_paths(
    network: torch.nn.Module,
    names: tuple[str, ...],
    example: torch.Tensor,
    wanted: list[str],
    threads: int,
) -> dict[str, Forward]:
    cpu = torch.device("cpu")
    paths: dict[str, Forward] = {}
    for name in wanted:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shapes fixed at export
            if name == "eager":
                paths[name] = runtime.EagerRunner(network, cpu, names)
            elif name == "eager-channels-last":
                last = copy.deepcopy(network).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
                paths[name] = _channels_last(_torch_path(last, cpu, names))
            elif name == "jit-trace":
                with torch.no_grad():
                    traced = torch.jit.trace(network, example)
                paths[name] = _torch_path(traced, cpu, names)
            elif name == "jit-freeze":
                with torch.no_grad():
                    frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(network, example)))
                paths[name] = _torch_path(frozen, cpu, names)
            elif name == "torch-export":
                # Dynamic batch so one program serves every batch size, as in the engine.
                batch = torch.export.Dim("batch", min=1, max=256)
                # An example of batch 1 would specialize the batch axis to 1.
                pair = example.expand(2, *example.shape[1:]).contiguous()
                program = torch.export.export(network, (pair,), dynamic_shapes=({0: batch},))
                paths[name] = _torch_path(program.module(), cpu, names)
            elif name in ("onnxruntime", "onnxruntime-spinning"):
                graph = runtime.export_onnx(network, example, names)
                paths[name] = runtime.OnnxRunner(graph, threads, spin=name.endswith("spinning"))
            elif name in ("cuda-fp32", "cuda-fp16"):
                if not torch.cuda.is_available():
                    print(f"skipping {name}: no CUDA device", file=sys.stderr)
                    continue
                paths[name] = _cuda_path(network, names, half=name == "cuda-fp16")
            else:
                raise SystemExit(f"unknown path {name!r}")
    return paths


def _channels_last(forward: Forward) -> Forward:
    def call(batch: np.ndarray) -> tuple[np.ndarray, ...]:
        # NCHW → channels-last strides, same values; the conversion is part of the measured cost.
        return forward(np.ascontiguousarray(batch.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2))

    return call


def _cuda_path(network: torch.nn.Module, names: tuple[str, ...], half: bool) -> Forward:
    device = torch.device("cuda")
    module = copy.deepcopy(network).to(device).eval()
    module = module.half() if half else module

    def forward(batch: np.ndarray) -> tuple[np.ndarray, ...]:
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(device, torch.float16 if half else torch.float32)
            outputs = tuple(t.float().cpu().numpy() for t in runtime.as_tuple(module(x), names))
        torch.cuda.synchronize()
        return outputs

    return forward


def time_forward(forward: Forward, batch: np.ndarray, min_seconds: float) -> float:
    """Median seconds per forward of `batch`."""
    forward(batch)
    forward(batch)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        forward(batch)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "models" / "radiograph_fracture")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--paths",
        nargs="+",
        default=[
            "eager",
            "eager-channels-last",
            "jit-trace",
            "torch-export",
            "onnxruntime",
            "onnxruntime-spinning",
            "cuda-fp32",
            "cuda-fp16",
        ],
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--min-seconds", type=float, default=3.0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    bundle = bundles.read(args.bundle)
    contract = read_contract(bundle)
    names = contract.output_names
    torch.manual_seed(0)
    network = bundles.build_network(bundle).eval()
    weights = "random weights (models/model.pt not present)"
    if bundle.weights_path.is_file():
        bundles.load_weights(bundle, network, verify=False)
        weights = f"trained weights, sha256 {bundles.sha256(bundle.weights_path)[:12]}…"
    example = torch.randn(1, *contract.input_shape)
    paths = build_paths(network, names, example, args.paths, args.threads)

    print(f"# {bundle.name} {bundle.version}: input {contract.input_shape}, outputs {', '.join(names)}")
    print(f"# {weights}")
    print(
        f"# {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}"
        + (f", onnxruntime {_version('onnxruntime')}" if "onnxruntime" in paths else "")
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
    )
    rng = np.random.default_rng(0)
    check = rng.standard_normal((2, *contract.input_shape)).astype(np.float32)
    reference = paths["eager"](check) if "eager" in paths else None
    difference = {}
    for name, forward in paths.items():
        if reference is not None:
            difference[name] = max(float(np.abs(a - b).max()) for a, b in zip(forward(check), reference, strict=True))

    rows = []
    for size in args.batch:
        batch = rng.standard_normal((size, *contract.input_shape)).astype(np.float32)
        for name, forward in paths.items():
            seconds = time_forward(forward, batch, args.min_seconds)
            rows.append((name, size, seconds))
            print(
                f"  measured {name:20} batch {size:3}: {seconds * 1000:9.1f} ms",
                file=sys.stderr,
                flush=True,
            )

    eager_at = {size: seconds for name, size, seconds in rows if name == "eager"}
    print()
    print("| path | batch | ms / forward | ms / image | images/s | vs eager | max abs diff vs eager |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, size, seconds in rows:
        speedup = f"{eager_at[size] / seconds:.2f}×" if size in eager_at else "–"
        diff = f"{difference[name]:.1e}" if name in difference else "–"
        print(
            f"| {name} | {size} | {seconds * 1000:.1f} | {seconds * 1000 / size:.1f} | {size / seconds:.1f}"
            f" | {speedup} | {diff} |"
        )
    return 0


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    raise SystemExit(main())

"""How a batch goes through a network: PyTorch eager, or ONNX Runtime on the CPU.

Measured on FracAtlasNet, 2 CPU cores, batch 1/8/32 (bench/radiograph_model.py): ONNX Runtime
12–13.5 / 10.8 / 10.5 ms per image against eager PyTorch 20–21 / 17–18 / 22–25; `torch.jit.trace`
and `torch.export` run at eager speed, a frozen TorchScript graph comes second (14.6 / 11 / 13.7).
So `runtime="auto"` picks ONNX Runtime on the CPU when onnxruntime is installed. The ONNX graph is
exported in memory at load time from the verified weights (no cache file to go stale or be
swapped), checked against eager on a probe batch, and any failure falls back to eager with a log
line. On CUDA the engine runs eager PyTorch in half precision.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import numpy as np
import torch

from node.logs import event

log = logging.getLogger(__name__)

RuntimeName = Literal["auto", "eager", "onnxruntime"]


class Runner(Protocol):
    name: str

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]: ...


ATOL, RTOL = 1e-4, 1e-4  # an exported graph must match eager this closely


def as_tuple(outputs: Any, names: Sequence[str]) -> tuple[torch.Tensor, ...]:
    """A network's return value (tensor, tuple/list, or dict by output name) as a tuple in order."""
    if isinstance(outputs, torch.Tensor):
        return (outputs,)
    if isinstance(outputs, dict):
        return tuple(outputs[name] for name in names)
    return tuple(outputs)


class EagerRunner:
    """The network as built, in eval mode and `torch.inference_mode()`; fp16 on CUDA."""

    name = "eager"

    def __init__(self, network: torch.nn.Module, device: torch.device, names: Sequence[str]) -> None:
        self.half = device.type == "cuda"
        self.network = network.to(device).eval()
        if self.half:
            self.network = self.network.half()
        self.device, self.names = device, tuple(names)

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device, torch.float16 if self.half else torch.float32)
            return tuple(t.float().cpu().numpy() for t in as_tuple(self.network(x), self.names))


class _Ordered(torch.nn.Module):
    """Wraps a network so its outputs are a flat tuple in contract order (what ONNX can express)."""

    def __init__(self, network: torch.nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.network, self.names = network, tuple(names)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return as_tuple(self.network(x), self.names)


def export_onnx(network: torch.nn.Module, example: torch.Tensor, names: Sequence[str]) -> bytes:
    """The network as an ONNX graph with a dynamic batch axis, exported in memory."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated in favour of the dynamo one (needs onnxscript);
        # its tracer warnings about shapes fixed at export are what we want: the contract fixes them.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Ordered(network, names).eval(),
            (example,),
            buffer,  # type: ignore[arg-type]  # file-like objects work; the stub says paths
            dynamo=False,
            input_names=["input"],
            output_names=list(names),
            dynamic_axes={"input": {0: "batch"}, **{name: {0: "batch"} for name in names}},
            opset_version=17,
        )
    return buffer.getvalue()


class OnnxRunner:
    name = "onnxruntime"

    def __init__(self, model: bytes, threads: int, spin: bool = False) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle ORT threads spin between batches by default, taking CPU from pixel decoding.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self.session.run(None, {"input": batch}))


def select(
    network: torch.nn.Module,
    device: torch.device,
    names: Sequence[str],
    input_shape: tuple[int, ...],
    runtime: RuntimeName = "auto",
    threads: int | None = None,
) -> Runner:
    """The runner for `runtime`; "auto" = ONNX Runtime on the CPU when it exports and matches eager."""
    eager = EagerRunner(network, device, names)
    if runtime == "eager" or (runtime == "auto" and device.type != "cpu"):
        return eager
    if device.type != "cpu":
        raise ValueError(f"runtime 'onnxruntime' runs on the CPU only, not on device {device.type!r}")
    try:
        probe = np.random.default_rng(0).standard_normal((2, *input_shape)).astype(np.float32)
        graph = export_onnx(network, torch.from_numpy(probe[:1]), names)
        onnx = OnnxRunner(graph, threads or torch.get_num_threads())
        for name, expected, actual in zip(names, eager(probe), onnx(probe), strict=True):
            if expected.shape != actual.shape:
                raise ValueError(f"output {name!r} has shape {actual.shape}, eager gives {expected.shape}")
            if not np.allclose(actual, expected, atol=ATOL, rtol=RTOL):
                raise ValueError(f"output {name!r} differs from eager by {np.abs(actual - expected).max():.3g}")
    except Exception as exc:  # onnxruntime missing, an op ONNX cannot express, a mismatch
        if runtime == "onnxruntime":
            raise
        event(log, logging.WARNING, "ONNX Runtime unusable, running eager PyTorch", reason=str(exc))
        return eager
    return onnx

"""The model runtime: one warm network per bundle, shared by the worker threads, batched across studies.

Worker threads call `Engine.infer(arrays)`; a single batcher thread gathers the images of all
concurrent callers until `max_batch` images or `max_wait_ms` have passed, runs one forward, and
hands each caller back its own rows. Shapes, output names and activations come from the bundle's
contract (`node.inference.contract`), so nothing here knows about a particular model.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self, TypedDict, Unpack

import numpy as np
import torch

from node.inference import bundle as bundles
from node.inference import runtime as runtimes
from node.inference.contract import Contract, read_contract
from node.logs import event
from node.records import Algorithm

if TYPE_CHECKING:
    from node.config import Config

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
Outputs = dict[str, np.ndarray]  # one image's outputs: output name -> array of the contract's shape


class InferenceError(RuntimeError):
    """A forward pass failed; every caller whose images were in that batch gets this."""


class Engine:
    """A bundle's network, built, verified (sha256) and warmed once, run by a batcher thread."""

    def __init__(
        self,
        bundle_path: Path | str,
        *,
        device: Device = "auto",
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        runtime: runtimes.RuntimeName = "auto",
        weights_sha256: str = "",
        threads: int | None = None,
        warmup: bool = True,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, got {max_wait_ms}")
        self.bundle = bundles.read(bundle_path)
        self.contract: Contract = read_contract(self.bundle)
        self.device = _device(device)
        network = bundles.build_network(self.bundle)
        bundles.load_weights(self.bundle, network, expected_sha256=weights_sha256)
        # Verified by load_weights: the hash that identifies this model in results (SR algorithm id).
        self.weights_sha256 = (weights_sha256 or self.bundle.weights_sha256).lower()
        network.eval()
        names = self.contract.output_names
        self.runner = runtimes.select(
            network, self.device, names, self.contract.input_shape, runtime, threads
        )
        if warmup:
            self._forward(np.zeros((1, *self.contract.input_shape), dtype=np.float32))
        self.max_batch, self.max_wait_s = max_batch, max_wait_ms / 1000.0
        self.batch_sizes: Counter[int] = Counter()  # how many forwards ran with how many images
        # called after each forward with (bundle name, images, seconds); the node's metrics set it
        self.on_forward: Callable[[str, int, float], None] | None = None
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._closed = False
        self._closing = threading.Lock()  # no image is queued behind the stop sentinel
        self._thread = threading.Thread(
            target=self._serve, name=f"engine-{self.bundle.root.name}", daemon=True
        )
        self._thread.start()
        event(
            log,
            logging.INFO,
            "model loaded",
            bundle=self.bundle.root.name,
            version=self.bundle.version,
            device=str(self.device),
            runtime=self.runner.name,
            max_batch=max_batch,
        )

    # -- inference ------------------------------------------------------------------------------

    def infer(self, arrays: Sequence[np.ndarray]) -> list[Outputs]:
        """Run preprocessed images (each the contract's input shape): one `Outputs` per image, in order."""
        images = [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]
        for i, image in enumerate(images):
            if image.shape != self.contract.input_shape:
                raise ValueError(
                    f"arrays[{i}] has shape {image.shape}; the model takes {self.contract.input_shape}"
                )
        if not images:
            return []
        pending = _Pending(len(images))
        with self._closing:
            if self._closed:
                raise RuntimeError(f"engine for {self.bundle.root.name} is closed")
            for index, image in enumerate(images):
                self._queue.put(_Item(pending, index, image))
        pending.done.wait()
        if pending.error is not None:
            raise InferenceError(
                f"{self.bundle.root.name}: forward failed: {pending.error}"
            ) from pending.error
        return pending.rows

    def close(self) -> None:
        """Finish what is queued, then stop the batcher thread."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the batcher thread ---------------------------------------------------------------------

    def _forward(self, batch: np.ndarray) -> Outputs:
        raw = self.runner(batch)
        if len(raw) != len(self.contract.outputs):
            raise bundles.BundleError(
                f"{self.bundle.root}: the network returns {len(raw)} outputs;"
                f" the contract names {len(self.contract.outputs)} ({', '.join(self.contract.output_names)})"
            )
        outputs = {}
        for spec, values in zip(self.contract.outputs, raw, strict=True):
            if values.size != len(batch) * int(np.prod(spec.shape)):
                raise bundles.BundleError(
                    f"{self.bundle.root}: output {spec.name!r} has shape {values.shape[1:]} per image;"
                    f" metadata.json says {spec.shape}"
                )
            values = values.reshape(len(batch), *spec.shape).astype(np.float32, copy=False)
            outputs[spec.name] = _activate(values, spec.activation)
        return outputs

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = [first], False
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._run(batch)
            if stop:
                return

    def _run(self, batch: list[_Item]) -> None:
        self.batch_sizes[len(batch)] += 1
        started = time.monotonic()
        try:
            outputs = self._forward(np.stack([item.image for item in batch]))
        except Exception as exc:  # handed to the callers, whose jobs record and retry it
            log.exception(
                "forward failed",
                extra={"fields": {"bundle": self.bundle.root.name, "images": len(batch)}},
            )
            for item in batch:
                item.pending.fail(exc)
            return
        seconds = time.monotonic() - started
        for row, item in enumerate(batch):
            # Copies, so one caller's result does not keep the whole batch alive.
            item.pending.deliver(
                item.index, {name: values[row].copy() for name, values in outputs.items()}
            )
        if self.on_forward is not None:
            try:
                self.on_forward(self.bundle.root.name, len(batch), seconds)
            except Exception:  # a metrics hook must never stop the batcher thread
                log.exception("on_forward hook failed")


class EngineOptions(TypedDict, total=False):
    """How to run a bundle's network (`Engine`'s keyword arguments)."""

    device: Device
    runtime: runtimes.RuntimeName
    weights_sha256: str
    threads: int | None
    max_batch: int
    max_wait_ms: float
    warmup: bool


class BundleModel:
    """A model that one bundle's `Engine` serves: the one place a model builds its engine.

    A model class sets its own batching (`max_batch`, `max_wait_ms`; a caller's options override
    them) and reads what else it needs from `self.bundle` (its metadata's `fracnode` section) and
    `self.contract`. `algorithm` identifies the verified weights in results.
    """

    max_batch = 8
    max_wait_ms = 5.0

    def __init__(self, bundle_path: Path | str, **options: Unpack[EngineOptions]) -> None:
        settings: EngineOptions = {"max_batch": self.max_batch, "max_wait_ms": self.max_wait_ms}
        settings.update(options)
        self.engine = Engine(bundle_path, **settings)
        self.bundle, self.contract = self.engine.bundle, self.engine.contract

    @property
    def weights_sha256(self) -> str:
        return self.engine.weights_sha256

    @property
    def on_forward(self) -> Callable[[str, int, float], None] | None:
        """The engine's hook after each forward (node.metrics.Metrics.watch_engines sets it)."""
        return self.engine.on_forward

    @on_forward.setter
    def on_forward(self, hook: Callable[[str, int, float], None] | None) -> None:
        self.engine.on_forward = hook

    @property
    def algorithm(self) -> Algorithm:
        return Algorithm(name=self.bundle.name, version=self.bundle.version, weights_sha256=self.weights_sha256)

    def infer(self, arrays: Sequence[np.ndarray]) -> list[Outputs]:
        return self.engine.infer(arrays)

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def configured_bundle(config: Config, name: str) -> tuple[Path, EngineOptions]:
    """Where bundle `name` is (under `inference.models_dir`) and how the configuration runs it: on
    `inference.device`, and with the sha256 `inference.weights_sha256` gives for it (needed for a
    bundle that records none, a Model Zoo download) checked too. Every pipeline builds its models
    from these: `SomeModel(path, **options)`."""
    settings = config.inference
    options: EngineOptions = {"device": settings.device}
    if name in settings.weights_sha256:
        options["weights_sha256"] = settings.weights_sha256[name]
    return settings.bundle(name), options


@dataclass(eq=False)
class _Pending:
    """One `infer` call's images: filled in by the batcher thread, possibly over several batches."""

    count: int
    rows: list[Outputs] = field(init=False)
    remaining: int = field(init=False)
    error: Exception | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.rows = [{} for _ in range(self.count)]
        self.remaining = self.count

    # Only the batcher thread calls these; the caller reads after `done` is set.
    def deliver(self, index: int, row: Outputs) -> None:
        self.rows[index] = row
        self._one_done()

    def fail(self, exc: Exception) -> None:
        self.error = self.error or exc
        self._one_done()

    def _one_done(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set()


@dataclass(frozen=True, eq=False)
class _Item:
    pending: _Pending
    index: int
    image: np.ndarray


def _device(requested: Device) -> torch.device:
    cuda = torch.cuda.is_available()
    if requested == "cuda" and not cuda:
        raise ValueError("device 'cuda' was requested but no CUDA device is available")
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device {requested!r}: expected auto, cpu or cuda")
    return torch.device("cuda" if requested == "cuda" or (requested == "auto" and cuda) else "cpu")


def _activate(values: np.ndarray, activation: str) -> np.ndarray:
    if activation == "none":
        return values
    tensor = torch.from_numpy(values)
    if activation == "sigmoid":
        return torch.sigmoid(tensor).numpy()
    return torch.softmax(tensor, dim=1).numpy()  # channel axis (classification outputs: axis 1 too)

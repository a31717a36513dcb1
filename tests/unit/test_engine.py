"""The model engine: bundle checks, the contract's shapes, batching across threads, execution paths."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from node.inference import bundle as bundles
from node.inference import runtime
from node.inference.engine import Engine, InferenceError

REPO = Path(__file__).resolve().parents[2]
RADIOGRAPH_BUNDLE = REPO / "models" / "radiograph_fracture"
MODEL_ZOO_BUNDLE = REPO.parent / "shared" / "reference" / "model-zoo" / "wholeBody_ct_segmentation"

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def with_random_weights(source: Path, target: Path, record_hash: bool = True, seed: int = 0) -> str:
    """Copy a bundle and save a randomly initialised state dict of its network as its weights."""
    shutil.copytree(source, target)
    bundle = bundles.read(target)
    torch.manual_seed(seed)
    network = bundles.build_network(bundle)
    for module in network.modules():  # non-trivial BatchNorm statistics, as a trained model has
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    bundle.weights_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), bundle.weights_path)
    digest = bundles.sha256(bundle.weights_path)
    if "fracnode" in bundle.metadata:  # a Model Zoo bundle has no fracnode section
        metadata_path = target / "configs" / "metadata.json"
        metadata = json.loads(metadata_path.read_text())
        metadata["fracnode"]["weights_sha256"] = digest if record_hash else ""
        metadata_path.write_text(json.dumps(metadata, indent=4))
    return digest


SIZE = json.loads((RADIOGRAPH_BUNDLE / "configs" / "inference.json").read_text())["spatial_size"]


@pytest.fixture(scope="module")
def radiograph_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("bundles") / "radiograph_fracture"
    with_random_weights(RADIOGRAPH_BUNDLE, target)
    return target


@pytest.fixture(scope="module")
def engine(radiograph_bundle: Path) -> Iterator[Engine]:
    with Engine(radiograph_bundle, device="cpu", max_batch=8, max_wait_ms=50) as built:
        yield built


@pytest.fixture(scope="module")
def eager(radiograph_bundle: Path) -> Iterator[Engine]:
    with Engine(radiograph_bundle, device="cpu", runtime="eager", max_batch=8, max_wait_ms=0) as built:
        yield built


def images(count: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, SIZE, SIZE)).astype(np.float32) for _ in range(count)]


# -- loading and the sha256 check ---------------------------------------------------------------


def test_outputs_have_the_contracts_shapes_and_are_probabilities(engine: Engine) -> None:
    outputs = engine.infer(images(3))
    assert len(outputs) == 3
    for image in outputs:
        assert list(image) == ["fracture", "regions", "body_region", "atypicality"]
        assert image["fracture"].shape == (1,)
        assert image["regions"].shape == (1, SIZE, SIZE)
        assert image["body_region"].shape == (4,)
        assert image["atypicality"].shape == (1,) and float(image["atypicality"][0]) >= 0.0  # a distance, no sigmoid
        for name in ("fracture", "regions", "body_region"):
            values = image[name]
            assert values.dtype == np.float32 and 0.0 <= values.min() <= values.max() <= 1.0
    # Random weights can saturate the pooled heads (lite0's ReLU6), so the per-pixel map shows that
    # each image got its own output.
    assert not np.array_equal(outputs[0]["regions"], outputs[1]["regions"])
    assert engine.contract.output("body_region").channels == ("hand", "leg", "hip", "shoulder")
    metadata = json.loads((engine.bundle.root / "configs" / "metadata.json").read_text())
    assert engine.weights_sha256 == metadata["fracnode"]["weights_sha256"]


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    with_random_weights(RADIOGRAPH_BUNDLE, tmp_path / "b")
    weights = tmp_path / "b" / "models" / "model.pt"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(bundles.BundleError, match=r"model\.pt: sha256 \w+ does not match \w+ recorded in metadata"):
        Engine(tmp_path / "b", device="cpu", runtime="eager")


def test_bundle_with_empty_sha256_is_refused(tmp_path: Path) -> None:
    with_random_weights(RADIOGRAPH_BUNDLE, tmp_path / "b", record_hash=False)
    with pytest.raises(bundles.BundleError, match="weights_sha256 is empty"):
        Engine(tmp_path / "b", device="cpu", runtime="eager")


def test_given_sha256_must_match_as_well(radiograph_bundle: Path) -> None:
    with pytest.raises(bundles.BundleError, match=f"does not match {'0' * 64} given"):
        Engine(radiograph_bundle, device="cpu", runtime="eager", weights_sha256="0" * 64)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_a_gpu_is_refused(radiograph_bundle: Path) -> None:
    with pytest.raises(ValueError, match="device 'cuda' was requested but no CUDA device"):
        Engine(radiograph_bundle, device="cuda")


def test_input_of_the_wrong_shape_is_refused(engine: Engine) -> None:
    with pytest.raises(
        ValueError, match=rf"arrays\[1\] has shape \(1, 256, 256\); the model takes \(1, {SIZE}, {SIZE}\)"
    ):
        engine.infer([images(1)[0], np.zeros((1, 256, 256), np.float32)])


# -- batching ----------------------------------------------------------------------------------


def test_four_concurrent_callers_are_batched_and_get_their_own_results(engine: Engine, eager: Engine) -> None:
    requests = [images(2, seed=10 + i) for i in range(4)]
    one_by_one = [[eager.infer([image]) for image in request] for request in requests]
    results: dict[int, list[dict[str, np.ndarray]]] = {}
    start = threading.Barrier(4)
    engine.batch_sizes.clear()

    def call(i: int) -> None:
        start.wait()
        results[i] = engine.infer(requests[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert max(engine.batch_sizes) > 2  # images of several callers shared a forward
    assert sum(size * n for size, n in engine.batch_sizes.items()) == 8
    for i, request in enumerate(requests):
        for j in range(len(request)):
            for name, values in results[i][j].items():
                np.testing.assert_allclose(values, one_by_one[i][j][0][name], atol=1e-4)


def test_request_larger_than_max_batch_is_split_and_reassembled(radiograph_bundle: Path, eager: Engine) -> None:
    batch = images(5, seed=3)
    with Engine(radiograph_bundle, device="cpu", runtime="eager", max_batch=2, max_wait_ms=0) as small:
        outputs = small.infer(batch)
        assert max(small.batch_sizes) == 2 and sum(s * n for s, n in small.batch_sizes.items()) == 5
    expected = eager.infer(batch)
    assert len(outputs) == len(expected) == 5
    for image, reference in zip(outputs, expected, strict=True):
        for name in reference:
            np.testing.assert_allclose(image[name], reference[name], atol=1e-5)


def test_failed_forward_reaches_the_caller_and_the_engine_keeps_serving(engine: Engine) -> None:
    runner = engine.runner

    def broken(batch: np.ndarray) -> tuple[np.ndarray, ...]:
        raise RuntimeError("out of memory")

    engine.runner = broken  # type: ignore[assignment]
    try:
        with pytest.raises(InferenceError, match="forward failed: out of memory"):
            engine.infer(images(1))
    finally:
        engine.runner = runner
    assert engine.infer(images(1))[0]["fracture"].shape == (1,)


def test_closed_engine_refuses_work(radiograph_bundle: Path) -> None:
    built = Engine(radiograph_bundle, device="cpu", runtime="eager", warmup=False)
    built.close()
    with pytest.raises(RuntimeError, match="closed"):
        built.infer(images(1))


# -- execution paths -------------------------------------------------------------------------


def test_cpu_auto_picks_onnx_runtime_and_it_equals_eager(engine: Engine, eager: Engine) -> None:
    pytest.importorskip("onnxruntime")
    assert engine.runner.name == "onnxruntime" and eager.runner.name == "eager"
    batch = images(8, seed=5)
    raw_fast, raw_eager = engine.runner(np.stack(batch)), eager.runner(np.stack(batch))
    for fast, reference in zip(raw_fast, raw_eager, strict=True):
        np.testing.assert_allclose(fast, reference, atol=1e-4)  # logits, before the sigmoid
    single_fast, single_eager = (
        engine.runner(np.stack(batch[:1])),
        eager.runner(np.stack(batch[:1])),
    )
    for fast, reference in zip(single_fast, single_eager, strict=True):
        np.testing.assert_allclose(fast, reference, atol=1e-4)


def test_failed_export_falls_back_to_eager_with_a_log_line(
    radiograph_bundle: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unexportable(*args: object) -> bytes:
        raise RuntimeError("op not supported")

    monkeypatch.setattr(runtime, "export_onnx", unexportable)
    with (
        caplog.at_level(logging.WARNING, logger="node.inference.runtime"),
        Engine(radiograph_bundle, device="cpu", warmup=False) as built,
    ):
        assert built.runner.name == "eager"
    assert any(
        r.message == "ONNX Runtime unusable, running eager PyTorch" and r.fields["reason"] == "op not supported"
        for r in caplog.records
    )


@gpu
@pytest.mark.gpu
def test_gpu_half_precision_matches_cpu(radiograph_bundle: Path, eager: Engine) -> None:
    with Engine(radiograph_bundle, device="cuda") as cuda:
        assert cuda.runner.name == "eager" and cuda.device.type == "cuda"
        batch = images(4, seed=7)
        on_gpu, on_cpu = cuda.infer(batch), eager.infer(batch)
    for gpu_image, cpu_image in zip(on_gpu, on_cpu, strict=True):
        for name in cpu_image:
            np.testing.assert_allclose(gpu_image[name], cpu_image[name], atol=2e-2)


# -- a MONAI Model Zoo bundle, unchanged ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not MODEL_ZOO_BUNDLE.is_dir(), reason=f"{MODEL_ZOO_BUNDLE} not present")
def test_model_zoo_bundle_loads_unchanged(tmp_path: Path) -> None:
    digest = with_random_weights(MODEL_ZOO_BUNDLE, tmp_path / "wholeBody_ct_segmentation", record_hash=False)
    root = tmp_path / "wholeBody_ct_segmentation"
    with pytest.raises(bundles.BundleError, match="weights_sha256 is empty"):
        Engine(root, device="cpu", runtime="eager", warmup=False)  # a Zoo bundle records no sha256
    with Engine(root, device="cpu", runtime="eager", weights_sha256=digest, warmup=False) as zoo:
        assert zoo.contract.input_shape == (1, 96, 96, 96)
        assert zoo.contract.output("pred").channels[:2] == ("background", "spleen")
        volume = np.random.default_rng(0).standard_normal((1, 96, 96, 96)).astype(np.float32)
        (outputs,) = zoo.infer([volume])
    assert list(outputs) == ["pred"] and outputs["pred"].shape == (105, 96, 96, 96)
    assert np.isfinite(outputs["pred"]).all()

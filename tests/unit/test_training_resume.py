"""Resumable training (training.common.checkpoints): an interrupted run resumed ends with the weights an
uninterrupted one has, for the cervical spine loops (the radiograph run is tested end to end in
tests/integration/test_training_radiograph.py); other settings or a bare checkpoint are refused."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from training.common import checkpoints
from training.common.epochs import fit_epochs
from training.cspine.data import CROP_MARGIN, CropSet, SegmentationCase
from training.cspine.loops import train_fracture, train_vertebrae


def _interrupt_at(prefix: str) -> Callable[[str], None]:
    def log(line: str) -> None:
        if line.startswith(prefix):
            raise KeyboardInterrupt

    return log


def _without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in entry.items() if k != "seconds"} for entry in history]


def _fracture_data() -> tuple[CropSet, CropSet]:
    rng = np.random.default_rng(2)
    shape = [s + m for s, m in zip((8, 16, 16), CROP_MARGIN, strict=True)]

    def crops(n: int) -> CropSet:
        flags = rng.random(n) < 0.25
        images = rng.integers(0, 60, (n, 2, *shape)).astype(np.uint8)
        images[flags, 0] += 150
        return CropSet("x", images, np.ones(n, np.int64), flags, "reference")

    return crops(64), crops(32)


def _fracture_network() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3), torch.nn.Dropout(0.3), torch.nn.AdaptiveAvgPool3d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 1))


def test_the_fracture_loop_resumed_after_an_interruption_ends_as_an_uninterrupted_run(tmp_path: Path) -> None:
    train, val = _fracture_data()
    kwargs = {"epochs": 3, "seed": 0, "batch_size": 8, "learning_rate": 1e-2}
    straight = train_fracture(_fracture_network(), [train], [val], log=lambda _: None, **kwargs)
    path = tmp_path / "fracture_last.pt"
    with pytest.raises(KeyboardInterrupt):
        train_fracture(_fracture_network(), [train], [val], log=_interrupt_at("fracture epoch 2:"),
                       checkpoint=path, **kwargs)
    lines: list[str] = []
    resumed = train_fracture(_fracture_network(), [train], [val], log=lines.append, checkpoint=path, resume=True,
                             **kwargs)
    assert lines[0].startswith(f"resuming after epoch 2 of 3 from {path}")
    assert [line.split(":")[0] for line in lines[1:]] == ["fracture epoch 3"]
    torch.testing.assert_close(resumed[0], straight[0])
    assert _without_timings(resumed[1]) == _without_timings(straight[1]) and resumed[2] == straight[2]


def test_the_vertebra_loop_resumed_after_an_interruption_ends_as_an_uninterrupted_run(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)

    def case(uid: str) -> SegmentationCase:
        labels = np.zeros((24, 24, 32), np.uint8)
        for k in range(1, 8):
            labels[8:16, 8:16, 4 * k - 4 : 4 * k - 1] = k
        image = (labels > 0) * 0.5 + rng.normal(0, 0.05, labels.shape)
        return SegmentationCase(uid, image.astype(np.float16), labels)

    cases, val = [case(f"s{k}") for k in range(3)], [case("v")]

    def network() -> torch.nn.Module:
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Dropout3d(0.2),
                                   torch.nn.Conv3d(8, 8, 1))

    kwargs = {"roi": (16, 16, 16), "epochs": 3, "seed": 4, "batch_size": 2, "learning_rate": 1e-2}
    straight = train_vertebrae(network(), cases, val, log=lambda _: None, **kwargs)
    path = tmp_path / "vertebrae_last.pt"
    with pytest.raises(KeyboardInterrupt):
        train_vertebrae(network(), cases, val, log=_interrupt_at("vertebrae epoch 2:"), checkpoint=path, **kwargs)
    lines: list[str] = []
    resumed = train_vertebrae(network(), cases, val, log=lines.append, checkpoint=path, resume=True, **kwargs)
    assert lines[0].startswith("resuming after epoch 2 of 3")  # saved before the line that was cut off
    assert [line.split(":")[0] for line in lines[1:]] == ["vertebrae epoch 3"]
    torch.testing.assert_close(resumed[0], straight[0])
    assert _without_timings(resumed[1]) == _without_timings(straight[1])


def test_a_resume_under_other_settings_names_them_and_a_missing_checkpoint_starts_afresh(tmp_path: Path) -> None:
    train, val = _fracture_data()
    path = tmp_path / "fracture_last.pt"
    train_fracture(_fracture_network(), [train], [val], epochs=1, seed=0, log=lambda _: None, checkpoint=path)
    with pytest.raises(checkpoints.ResumeError, match=r"other settings \(epochs 1 there, 2 now, batch_size 16 there, 8"):
        train_fracture(_fracture_network(), [train], [val], epochs=2, seed=0, batch_size=8, log=lambda _: None,
                       checkpoint=path, resume=True)
    with pytest.raises(checkpoints.ResumeError, match="train_crops"):  # other training data
        train_fracture(_fracture_network(), [_fracture_data()[1]], [val], epochs=1, seed=0, log=lambda _: None,
                       checkpoint=path, resume=True)
    lines: list[str] = []
    train_fracture(_fracture_network(), [train], [val], epochs=1, seed=0, log=lines.append,
                   checkpoint=tmp_path / "none.pt", resume=True)
    assert lines[0] == f"--resume: no checkpoint {tmp_path / 'none.pt'} yet, starting at epoch 1"
    assert lines[1].startswith("fracture epoch 1:")


def test_checkpoints_are_written_whole_and_numpy_numbers_become_plain() -> None:
    assert checkpoints._plain({"a": [np.float64(0.5), (np.int64(2),)]}) == {"a": [0.5, (2,)]}
    assert type(checkpoints._plain(np.float32(1.5))) is float
    assert checkpoints.fingerprint(["a", "b"]) != checkpoints.fingerprint(["ab"])
    assert checkpoints.fingerprint([np.arange(3)]) == checkpoints.fingerprint([torch.arange(3).numpy()])


def test_a_checkpoint_that_cannot_be_written_leaves_the_previous_one_and_no_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    checkpoints.save(path, {"epoch": 1})

    class Unpicklable:
        def __reduce__(self) -> tuple:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        checkpoints.save(path, {"epoch": 2, "x": Unpicklable()})
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.parametrize(
    ("elapsed", "first_epoch", "epoch", "epochs", "expected"),
    [
        (120.0, 1, 1, 80, ", about 2 h 38 min left"),  # 2 min per epoch, 79 to go
        (600.0, 41, 45, 80, ", about 1 h 10 min left"),  # resumed at 41: the pace of this process's 5 epochs
        (100.0, 1, 10, 12, ", under a minute left"),
        (300.0, 1, 3, 6, ", about 5 min left"),
        (300.0, 1, 6, 6, ""),  # nothing after the last epoch
    ],
)
def test_each_epoch_line_says_about_how_long_the_run_has_left(
    elapsed: float, first_epoch: int, epoch: int, epochs: int, expected: str
) -> None:
    assert checkpoints.time_left(1000.0, first_epoch, epoch, epochs, now=1000.0 + elapsed) == expected


def test_the_shared_epoch_loop_checkpoints_each_epoch_before_its_line_and_resumes_after_the_last(
    tmp_path: Path,
) -> None:
    """training.common.epochs.fit_epochs, which the radiograph run and both cervical spine loops use."""

    def setup() -> tuple[checkpoints.Run, dict]:
        network = torch.nn.Linear(2, 1)
        optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, 1)
        run = checkpoints.Run(tmp_path / "last.pt", {"epochs": 3}, network, optimizer, schedule, np.random.default_rng(0))
        return run, {"history": []}

    events: list[str] = []

    def epoch_of(progress: dict) -> Callable[[int], str]:
        def one_epoch(epoch: int) -> str:
            progress["history"].append(epoch)
            return f"epoch {epoch}: done"
        return one_epoch

    def log(line: str) -> None:
        events.append(f"log {line.split(',')[0]}")
        if line.startswith("epoch 2:"):
            raise KeyboardInterrupt

    run, progress = setup()
    with pytest.raises(KeyboardInterrupt):
        fit_epochs(3, epoch_of(progress), progress, log, run=run,
                   on_start=lambda first: events.append(f"start {first}"),
                   on_saved=lambda epoch: events.append(f"saved {epoch}"))
    assert events == ["start 1", "saved 1", "log epoch 1: done", "saved 2", "log epoch 2: done"]
    events.clear()
    run, progress = setup()
    first = fit_epochs(3, epoch_of(progress), progress, lambda line: events.append(line.split(",")[0]), run=run,
                       resume=True, on_resume=lambda epoch: events.append(f"resumed {epoch}"),
                       on_start=lambda first: events.append(f"start {first}"))
    assert first == 3 and progress == {"history": [1, 2, 3]}  # the saved record, then epoch 3
    assert events[1:] == ["resumed 2", "start 3", "epoch 3: done"]  # events[0]: "resuming after epoch 2 ..."

"""Resumable training runs: after every epoch, one file holds everything the next epoch needs.

`fracnode train ... --resume` continues from that file. It restores the weights, optimizer,
learning-rate schedule, moving average and random state, so a run interrupted and resumed ends
with the weights an uninterrupted run would have had; a file written under other settings is
refused with the differences named.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


class ResumeError(ValueError):
    """A checkpoint that this run cannot continue from."""


def save(path: Path, obj: object) -> None:
    """torch.save through a temporary file, so an interruption never leaves half a checkpoint."""
    partial = path.with_suffix(".partial")
    try:
        torch.save(obj, partial)
        os.replace(partial, path)
    except BaseException:  # a full disk or Ctrl-C mid-write: the previous checkpoint stays, no leftover
        partial.unlink(missing_ok=True)
        raise


def fingerprint(parts: Iterable[str | bytes | np.ndarray | torch.Tensor]) -> str:
    """sha256 of what a run trains on or starts from (identifiers, arrays, weights), for its settings."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            part = part.detach().cpu().contiguous().numpy()
        if isinstance(part, np.ndarray):
            part = np.ascontiguousarray(part).tobytes()
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()


def time_left(clock: float, first_epoch: int, epoch: int, epochs: int, now: float | None = None) -> str:
    """ ", about 1 h 05 min left" after `epoch` of `epochs`, at the pace since `first_epoch` began at
    `clock` (time.monotonic); "" after the last epoch. Appended to each epoch's log line."""
    if epoch >= epochs:
        return ""
    pace = ((time.monotonic() if now is None else now) - clock) / (epoch - first_epoch + 1)
    minutes = round(pace * (epochs - epoch) / 60)
    if minutes < 1:
        return ", under a minute left"
    return f", about {minutes // 60} h {minutes % 60:02d} min left" if minutes >= 60 else f", about {minutes} min left"


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers (a checkpoint is loaded with weights_only=True)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass
class Run:
    """One network's training run: what an epoch changes, and the settings it was started with."""

    path: Path  # the checkpoint file, rewritten after every epoch
    settings: dict[str, Any]  # what a checkpoint must have been written under to be continued
    network: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    rng: np.random.Generator
    ema: torch.optim.swa_utils.AveragedModel | None = None

    def save(self, epoch: int, progress: dict[str, Any]) -> None:
        """After `epoch`: `progress` is the caller's own record (history, best epoch and state...)."""
        save(
            self.path,
            {
                "settings": _plain(self.settings),
                "epoch": epoch,
                "progress": _plain(progress),
                "model": self.network.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": self.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        )

    def resume(self, log: Callable[[str], None]) -> tuple[int, dict[str, Any]] | None:
        """Restore the state after the last finished epoch: (that epoch, its progress); None when
        there is no checkpoint yet (the run starts at epoch 1)."""
        if not self.path.is_file():
            log(f"--resume: no checkpoint {self.path} yet, starting at epoch 1")
            return None
        saved = torch.load(self.path, map_location="cpu", weights_only=True)
        settings = _plain(self.settings)
        if saved.get("settings") != settings:
            if "settings" in saved:
                differences = ", ".join(
                    f"{key} {saved['settings'].get(key)!r} there, {value!r} now"
                    for key, value in settings.items()
                    if saved["settings"].get(key) != value
                )
                cause = f"was written by a run with other settings ({differences}); rerun with that run's options, or"
            else:
                cause = "has no record of the settings it was trained with, so it cannot be resumed; run"
            raise ResumeError(f"{self.path} {cause} without --resume (or with another --cache) to start over")
        self.network.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])
        self.rng.bit_generator.state = saved["rng"]
        torch.set_rng_state(saved["torch_rng"])
        if saved["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        log(f"resuming after epoch {saved['epoch']} of {settings.get('epochs', '?')} from {self.path}")
        return saved["epoch"], saved["progress"]

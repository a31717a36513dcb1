"""The epoch loop every training run shares: resume, train epoch after epoch, checkpoint each one.

A run gives `fit_epochs` one epoch's work (`one_epoch(epoch)`: train, validate, update the run's
own `progress` record, return the epoch's log line) and the `checkpoints.Run` that holds the
network, optimizer, schedule, moving average and random state. The loop continues from the
checkpoint when resuming, writes it after every epoch (progress included), and logs each epoch's
line with its seconds and the time left. So an interrupted run resumed ends with the weights an
uninterrupted one has, whichever network it trains.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from training.common.checkpoints import Run, time_left

Log = Callable[[str], None]


def fit_epochs(
    epochs: int,
    one_epoch: Callable[[int], str],
    progress: dict[str, Any],
    log: Log,
    *,
    run: Run | None = None,
    resume: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_resume: Callable[[int], None] | None = None,
    on_saved: Callable[[int], None] | None = None,
) -> int:
    """Epochs 1..`epochs` (from the one after the checkpoint's when `resume` finds one); returns the
    first epoch this call trained.

    `progress` is the run's record (history, best epoch and state...), updated by `one_epoch` and
    saved with every checkpoint; a resume replaces its contents with the saved record. Hooks:
    `on_resume(epoch)` after a checkpoint of `epoch` is restored, `on_start(first_epoch)` before
    the first epoch trained, `on_saved(epoch)` after an epoch's checkpoint is written (before its
    log line: an interruption after the line finds the epoch saved).
    """
    first_epoch = 1
    if run is not None and resume and (resumed := run.resume(log)):
        finished, saved = resumed
        progress.clear()
        progress.update(saved)
        first_epoch = finished + 1
        if on_resume is not None:
            on_resume(finished)
    if on_start is not None and first_epoch <= epochs:
        on_start(first_epoch)
    clock = time.monotonic()
    for epoch in range(first_epoch, epochs + 1):
        started = time.monotonic()
        line = one_epoch(epoch)
        if run is not None:
            run.save(epoch, progress)
        if on_saved is not None:
            on_saved(epoch)
        log(f"{line}, {time.monotonic() - started:.0f} s{time_left(clock, first_epoch, epoch, epochs)}")
    return first_epoch

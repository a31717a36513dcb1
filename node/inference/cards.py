"""What a bundle says about itself, for people: name, version and measured accuracy.

Read from each MONAI bundle's `configs/metadata.json` (`version`, `eval_metrics`,
`intended_use`) without loading the network, so the start-up banner, the dashboard and the API
show the numbers of the weights actually installed: a retrained bundle brings its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# eval_metrics keys shown as headline accuracy, in this order, when the bundle has them
HEADLINES = (
    ("roc_auc", "ROC AUC"),
    ("patient_roc_auc", "patient ROC AUC"),
    ("vertebra_roc_auc", "per-vertebra ROC AUC"),
    ("dice_mean", "mean Dice"),
)


@dataclass(frozen=True)
class ModelCard:
    bundle: str  # the bundle's folder name
    name: str
    version: str
    metrics: tuple[tuple[str, str], ...]  # (what, value as text), e.g. ("ROC AUC", "0.830 (95% CI ...)")
    measured_on: str
    intended_use: str
    problem: str = ""  # why the metadata could not be read; "" when it could

    @property
    def headline(self) -> str:
        """One line: "radiograph_fracture 0.3.0, ROC AUC 0.830 (95% CI 0.784-0.871)"."""
        if self.problem:
            return f"{self.bundle}: {self.problem}"
        measured = "; ".join(f"{what} {value}" for what, value in self.metrics) or "no measured metrics"
        return f"{self.bundle} {self.version}, {measured}"


def _value(metrics: dict[str, Any], key: str) -> str:
    text = f"{float(metrics[key]):.3f}"
    interval = metrics.get(f"{key}_95ci")
    if isinstance(interval, list | tuple) and len(interval) == 2:
        text += f" (95% CI {float(interval[0]):.3f}-{float(interval[1]):.3f})"
    return text


def read_card(root: Path) -> ModelCard:
    try:
        metadata = json.loads((root / "configs" / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return ModelCard(root.name, root.name, "", (), "", "", f"metadata.json unreadable: {exc}")
    metrics = metadata.get("eval_metrics") or {}
    shown = tuple(
        (label, _value(metrics, key)) for key, label in HEADLINES if isinstance(metrics.get(key), int | float)
    )
    return ModelCard(
        bundle=root.name,
        name=str(metadata.get("name", root.name)),
        version=str(metadata.get("version", "")),
        metrics=shown,
        measured_on=str(metrics.get("measured_on", "")),
        intended_use=str(metadata.get("intended_use", "")),
    )

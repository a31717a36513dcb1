"""Model cards (`docs/README.md`) of the two cervical-spine bundles, written from their metadata.

The numbers come from metadata.json (`eval_metrics`, `fracnode.training`), which
`fracnode train cspine` / `fracnode evaluate cspine --write` fill, so card and metadata agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from node.inference.bundle import read

SYNTHETIC_WARNING = [
    "> **The shipped weights are trained on synthetic phantoms** (`fracnode phantom cspine`), not on",
    "> patient CT. They exist to test an installation end to end (DICOM in, SEG and SR out). They are",
    "> not for clinical use, are not a medical device, and say nothing about real fractures.",
]

PHANTOM_NUMBERS = (
    "These are phantom numbers, measured on synthetic studies the model never saw in training:"
    " they show the installation works and mean nothing clinically."
)

REAL_WEIGHTS = [
    "## Training real weights, or plugging in other ones",
    "",
    "- **Train on the RSNA 2022 data** (Kaggle: RSNA 2022 Cervical Spine Fracture Detection; Lin H.M.",
    "  et al., Radiology: AI 2023, https://doi.org/10.1148/ryai.230034), after accepting its licence:",
    "  `fracnode train cspine --data DIR --out my-models` with DIR holding `train.csv`,",
    "  `train_images/<StudyInstanceUID>/*.dcm` and `segmentations/*.nii`. It trains both bundles in",
    "  `my-models/` (copies of these configs), evaluates them on a held-out test split and writes",
    "  weights, sha256, metrics and these cards. Point `inference.models_dir` at `my-models`.",
    "  `fracnode evaluate cspine --data DIR --out my-models --write` re-measures.",
    "- **Use the MONAI Model Zoo's `wholeBody_ct_segmentation`** (TotalSegmentator classes) as the",
    "  vertebra model: download the bundle and its `models/model.pt` yourself (fracnode never",
    "  downloads), make it the `cspine_vertebrae` folder of a models folder (beside a",
    "  `cspine_fracture` bundle), and give its weights' sha256 in the configuration, since a Zoo",
    "  bundle records none:",
    "",
    "  ```yaml",
    "  inference:",
    "    models_dir: /opt/fracnode-models        # cspine_vertebrae/ = wholeBody_ct_segmentation",
    "    weights_sha256:",
    "      cspine_vertebrae: <sha256sum of cspine_vertebrae/models/model.pt>",
    "  ```",
    "",
    "  Its configs load unchanged: fracnode runs the bundle's own preprocessing chain (without its",
    "  file loader) and sliding-window settings, and maps its channels named `vertebrae_C1` …",
    "  `vertebrae_C7` (41 … 35 of 105) to C1 … C7. It is large (SegResNet, 1.5 mm): plan for a GPU,",
    "  or minutes per CT on a CPU.",
    "- Any other bundle works the same way if its output channels are named `vertebrae_C1` …",
    "  `vertebrae_C7` and its `preprocessing` is a MONAI dictionary-transform chain.",
]


def _ci(values: Any) -> str:
    return f" (95% CI {values[0]:.3f}–{values[1]:.3f}, bootstrap)" if values else ""


def _number(value: Any) -> str:
    return "not measurable on this split" if value is None else f"{value:.3f}"


def _describe(t: dict[str, Any]) -> str:
    """One training run in a sentence, from its `fracnode.training` record."""
    split, negatives = t.get("split", {}), t.get("negatives") or {}
    return (
        f"`fracnode train cspine`, split seed {t.get('seed')}, studies train/val/test"
        f" {split.get('train')}/{split.get('val')}/{split.get('test')}"
        + (
            f" (and series without a cervical spine {negatives.get('train')}/{negatives.get('val')}/"
            f"{negatives.get('test')})"
            if any(negatives.values())
            else ""
        )
        + f", {t.get('epochs')} epochs"
        + (f" at learning rate {t['learning_rate']}" if "learning_rate" in t else "")
        + f" (best: {t.get('best_epoch')}), {t.get('training_seconds')} s of training on"
        f" {t.get('hardware', 'this machine')}."
        + (
            f" {t['sampling'].capitalize()}, {t.get('loss', 'binary cross-entropy')}; output recalibrated for"
            f" the 2 : 1 weighted loss (prior logit {t.get('prior_logit')}, then Platt a, b ="
            f" {t.get('validation_platt')} fitted on the validation split, both in the last layer's weights)."
            if t.get("sampling")
            else ""
        )
    )


def _training(extras: dict[str, Any]) -> list[str]:
    t = extras.get("training") or {}
    if not t:
        return ["Not trained by `fracnode train cspine` yet.", ""]
    chain = [t]  # a fine-tuning run keeps how the weights it started from were trained, stage by stage
    while chain[-1].get("fine_tune_of"):
        chain.append(chain[-1]["fine_tune_of"])
    if len(chain) > 1:
        first, *later = reversed(chain)
        lines = [
            f"1. {_describe(first)}",
            *(f"{n}. Fine-tuned from those weights: {_describe(s)}" for n, s in enumerate(later, 2)),
            "",
        ]
    else:
        lines = [_describe(t), ""]
    recipe = extras.get("recipe") or []
    if recipe:
        lines += [
            "How these weights were made (reproducible: the phantoms are seeded):",
            "",
            "```sh",
            *recipe,
            "```",
            "",
        ]
    return lines


def render_vertebrae(root: Path) -> str:
    bundle = read(root)
    meta, extras, m = bundle.metadata, bundle.extras, bundle.metadata.get("eval_metrics") or {}
    lines = [
        f"# {meta['name']} — model card",
        "",
        *SYNTHETIC_WARNING,
        "",
        (
            f"Version {meta['version']}. Weights `{extras.get('weights', 'models/model.pt')}`, sha256"
            f" `{extras.get('weights_sha256') or 'not recorded'}`."
        ),
        "",
        "## Intended use",
        "",
        meta["intended_use"],
        "",
        "## Model",
        "",
        meta["description"],
        "",
        "Output channels: " + ", ".join(f"{i} `{n}`" for i, n in enumerate(bundle.channels("pred"))) + ".",
        (
            "fracnode keeps each vertebra's largest connected component, drops those under"
            f" {extras.get('min_vertebra_volume_mm3', 500)} mm³"
            + (
                f" (chosen on the {extras['min_vertebra_volume_choice']})"
                if extras.get("min_vertebra_volume_choice")
                else ""
            )
            + ", and maps the labels back onto the CT grid by nearest neighbour; boxes and centres of the"
            " vertebrae come from those masks. No vertebra left: the study is not a cervical-spine CT."
        ),
        "",
        "## Training",
        "",
        *_training(extras),
        "## Measured performance",
        "",
    ]
    if m.get("dice"):
        lines += [
            (
                f"Measured on: {m['measured_on']}. Dice on the CT grid, {m['dice_studies']} studies with"
                " a reference segmentation."
            ),
            "",
            "| vertebra | Dice |",
            "|---|---|",
            *(f"| {name} | {value:.3f} |" for name, value in m["dice"].items()),
            f"| mean | {m['dice_mean']:.3f} |",
            "",
        ]
        found = m.get("vertebrae_identified")
        if found:
            lines += [
                (
                    f"Vertebrae identified (Dice ≥ 0.5 with the reference of the same level): {found['found']} of"
                    f" {found['reference']} ({100 * found['rate']:.1f}%)."
                ),
                "",
            ]
        negatives = m.get("no_cervical_spine")
        if negatives:
            lines += [
                (
                    f"Series without a cervical spine (abdomen phantoms): {negatives['with_vertebrae_found']} of"
                    f" {negatives['series']} had a vertebra found ({negatives['vertebrae_found']} vertebrae in all);"
                    " a study where none is found is reported as not applicable."
                ),
                "",
            ]
        lines += [
            f"Run time per study (both models, this machine's CPU): {m.get('seconds_per_study', '?')} s.",
            "",
            PHANTOM_NUMBERS,
            "",
        ]
    else:
        lines += ["Not measured yet: run `fracnode evaluate cspine --data DIR --write`.", ""]
    return "\n".join([*lines, *REAL_WEIGHTS, ""])


def render_fracture(root: Path) -> str:
    bundle = read(root)
    meta, extras, m = bundle.metadata, bundle.extras, bundle.metadata.get("eval_metrics") or {}
    crop = extras.get("crop", {})
    aggregation = extras.get("patient_aggregation", "noisy_or")
    formula = "1 − Π(1 − pᵢ) over the vertebrae found (noisy-or)" if aggregation == "noisy_or" else "the largest pᵢ"
    lines = [
        f"# {meta['name']} — model card",
        "",
        *SYNTHETIC_WARNING,
        "",
        (
            f"Version {meta['version']}. Weights `{extras.get('weights', 'models/model.pt')}`, sha256"
            f" `{extras.get('weights_sha256') or 'not recorded'}`."
        ),
        "",
        "## Intended use",
        "",
        meta["intended_use"],
        "",
        "## Model",
        "",
        meta["description"],
        "",
        (
            f"Input per vertebra: {'×'.join(str(n) for n in bundle.inputs['image']['spatial_shape'])} voxels of"
            f" {crop.get('spacing_mm')} mm, axes {', '.join(crop.get('axes', []))}, centred on the vertebra's"
            f" centroid; channel 0 CT with HU clipped to {crop.get('hu_window')} and scaled to [0, 1], channel 1"
            " the vertebra's mask. Output: fracture probability pᵢ (sigmoid)."
        ),
        (
            f"Patient-level probability: {formula}, chosen on the validation split. A vertebra the vertebra"
            f" model did not find counts as {extras.get('absent_vertebra_probability')} in the evaluation."
        ),
        f"Operating points (patient level, validation split): {extras.get('operating_points')}.",
        "",
        "## Training",
        "",
        *_training(extras),
        "## Measured performance",
        "",
    ]
    if "weighted_log_loss" in m:
        lines += [
            (
                f"Measured on: {m['measured_on']}. {m['studies']} studies, {m['fractured_studies']} with a"
                f" fracture, {m['fractured_vertebrae']} fractured vertebrae."
            ),
            "",
            "| metric | value |",
            "|---|---|",
            f"| RSNA 2022 weighted log loss (lower is better; 0.693 = always 0.5) | {m['weighted_log_loss']:.4f} |",
            "| per-vertebra ROC AUC (C1–C7 pooled)"
            f" | {_number(m['vertebra_roc_auc'])}{_ci(m['vertebra_roc_auc_95ci'])} |",
            f"| patient-level ROC AUC | {_number(m['patient_roc_auc'])}{_ci(m['patient_roc_auc_95ci'])} |",
        ]
        for name in ("suspicious", "fracture"):
            if name in m:
                p = m[name]
                lines.append(
                    f'| "{name}" (threshold {p["threshold"]:.3f}) | sensitivity'
                    f" {100 * p['sensitivity']:.1f}%, specificity {100 * p['specificity']:.1f}% |"
                )
        ci = m.get("vertebra_roc_auc_95ci")
        if ci and ci[0] <= 0.5:
            lines += [
                "",
                (
                    "**The per-vertebra AUC's 95% CI includes 0.5: on these phantoms the classifier is not"
                    " distinguishable from chance.** Its probabilities exercise the pipeline (SR, categories,"
                    " operating points) but detect nothing; train longer (e.g. on a GPU) for a useful demo."
                ),
            ]
        lines += ["", PHANTOM_NUMBERS, ""]
    else:
        lines += ["Not measured yet: run `fracnode evaluate cspine --data DIR --write`.", ""]
    lines += [
        "## Limits",
        "",
        "- Trained on synthetic phantoms: real anatomy, degenerative change, implants, motion and real",
        "  fracture patterns were never seen. Expect it to fail on patient CT.",
        "- A vertebra assigned the wrong level by the vertebra model gets the right crop under the wrong name.",
        "- Probabilities are not calibrated to any clinical prevalence.",
        "",
        *REAL_WEIGHTS,
        "",
    ]
    return "\n".join(lines)


def write_model_cards(vertebra_root: Path, fracture_root: Path) -> tuple[Path, Path]:
    paths = []
    for root, render in ((Path(vertebra_root), render_vertebrae), (Path(fracture_root), render_fracture)):
        path = root / "docs" / "README.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(root))
        paths.append(path)
    return paths[0], paths[1]

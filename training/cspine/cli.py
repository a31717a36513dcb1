"""Command-line glue of `fracnode train cspine` and `fracnode evaluate cspine` (see training.cspine.run).

Imports nothing heavy at module level: the CLI builds its parsers from here on every start.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

DEFAULT_EPOCHS, DEFAULT_SEG_EPOCHS = 12, 6


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    group = parser.add_argument_group("cspine")
    group.add_argument("--out", help="folder of the cspine_vertebrae/ and cspine_fracture/ bundles (default: the"
                       " shipped models/ folder; a folder without them gets copies of the shipped configs)")
    group.add_argument("--negatives", help="folder of CT series without a cervical spine (one sub-folder each, e.g."
                       " from `fracnode phantom cspine --no-neck`): background for the vertebra model, and"
                       " checked to yield no vertebra")
    if command == "evaluate":
        group.add_argument("--all-studies", action="store_true",
                           help="evaluate every study of --data (a dataset never used in training), not its test split")
    if command == "train":
        group.add_argument("--seg-epochs", type=int, default=DEFAULT_SEG_EPOCHS,
                           help=f"vertebra model epochs (default {DEFAULT_SEG_EPOCHS})")
        group.add_argument("--models", choices=["both", "vertebrae", "fracture"], default="both",
                           help="which model to train (the other bundle is left as it is; default both)")
        group.add_argument("--init-vertebrae", help="start the vertebra model from these weights (fine-tuning)")
        group.add_argument("--seg-learning-rate", type=float, default=3e-3,
                           help="vertebra model: peak of the one-cycle schedule (default 3e-3)")
        group.add_argument("--seg-patches", type=int, default=2,
                           help="vertebra model: random patches per segmented training study and epoch (default 2)")


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def bundle_roots(out: str | None) -> tuple[Path, Path]:
    from node.config import InferenceSettings
    from node.pipelines.cspine.models import FRACTURE_BUNDLE, VERTEBRA_BUNDLE

    shipped = InferenceSettings.model_validate({})
    if not out:
        return shipped.bundle(VERTEBRA_BUNDLE), shipped.bundle(FRACTURE_BUNDLE)
    roots = []
    for name in (VERTEBRA_BUNDLE, FRACTURE_BUNDLE):
        target = Path(out) / name
        if not (target / "configs" / "metadata.json").is_file():
            shutil.copytree(shipped.bundle(name), target, ignore=shutil.ignore_patterns("model.pt", "__pycache__"),
                            dirs_exist_ok=True)
        roots.append(target)
    return roots[0], roots[1]


def settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from training.cspine.run import CSpineSettings

    vertebrae, fracture = bundle_roots(args.out)
    return CSpineSettings(
        data=Path(args.data), vertebra_bundle=vertebrae, fracture_bundle=fracture, cache=Path(args.cache),
        epochs=args.epochs if getattr(args, "epochs", None) is not None else DEFAULT_EPOCHS,
        seg_epochs=getattr(args, "seg_epochs", DEFAULT_SEG_EPOCHS),
        patches_per_case=getattr(args, "seg_patches", 2),
        models=("vertebrae", "fracture") if getattr(args, "models", "both") == "both" else (args.models,),
        init_vertebrae=Path(args.init_vertebrae) if getattr(args, "init_vertebrae", None) else None,
        seg_learning_rate=getattr(args, "seg_learning_rate", 3e-3),
        seed=args.seed, threads=args.threads, batch_size=args.batch_size,
        negatives=Path(args.negatives) if args.negatives else None,
        all_studies=bool(getattr(args, "all_studies", False)),
        resume=bool(getattr(args, "resume", False)),
    )


def cmd_train(args: argparse.Namespace) -> int:
    from node.inference.bundle import BundleError
    from training.cspine import run as cspine
    from training.cspine.model_card import write_model_cards
    from training.cspine.rsna import DataError

    config = settings(args)
    try:
        training = cspine.train(config, log=_log)
        result = cspine.evaluate(config, log=_log)
    except (DataError, BundleError) as exc:
        print(f"fracnode train: {exc}", file=sys.stderr)
        return 2
    cspine.record(config, result, training)
    write_model_cards(config.vertebra_bundle, config.fracture_bundle)
    print(f"weights, metrics and model cards written to {config.vertebra_bundle} and {config.fracture_bundle}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from node.inference.bundle import BundleError
    from training.cspine import run as cspine
    from training.cspine.model_card import write_model_cards
    from training.cspine.rsna import DataError

    config = settings(args)
    try:
        result = cspine.evaluate(config, log=_log)
    except (DataError, BundleError) as exc:
        print(f"fracnode evaluate: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    if args.write:
        cspine.record(config, result)
        write_model_cards(config.vertebra_bundle, config.fracture_bundle)
        _log(f"metrics written to {config.vertebra_bundle} and {config.fracture_bundle}")
    return 0

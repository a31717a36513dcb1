"""`fracnode train radiograph|cspine`, `fracnode evaluate radiograph|cspine`, `fracnode phantom cspine`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_BUNDLE = "radiograph_fracture"
DEFAULT_CACHE = Path("fracnode-data") / "training-cache"


def _settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from node.config import InferenceSettings
    from training.radiograph.run import TrainSettings

    bundle = Path(args.bundle) if args.bundle else InferenceSettings().bundle(DEFAULT_BUNDLE)
    return TrainSettings(
        data=Path(args.data),
        bundle=bundle,
        cache=Path(args.cache),
        epochs=getattr(args, "epochs", None) or 24,
        learning_rate=getattr(args, "learning_rate", 2e-3),
        init=Path(args.init) if getattr(args, "init", None) else None,
        ema_decay=getattr(args, "ema", 0.0) or 0.0,
        resume=getattr(args, "resume", False),
        batch_size=args.batch_size,
        seed=args.seed,
        train_seed=getattr(args, "train_seed", None),
        threads=args.threads,
        pretrained=bool(getattr(args, "encoder", None)) and not getattr(args, "init", None),
        freeze_stages=getattr(args, "freeze_stages", 0) or 0,
        warmup_epochs=getattr(args, "warmup_epochs", 0) or 0,
        encoder_lr_scale=getattr(args, "encoder_lr_scale", 1.0) or 1.0,
        fold=getattr(args, "fold", None),
    )


def _fold(text: str) -> tuple[int, int]:
    """`--fold K/N`: fold K (1 to N) of a grouped N-fold cross-validation."""
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit()) or int(n) < 2 or not 1 <= int(k) <= int(n):
        raise argparse.ArgumentTypeError(f"expected K/N with 1 <= K <= N and N >= 2, e.g. 1/5; got {text!r}")
    return int(k), int(n)


def cmd_train(args: argparse.Namespace) -> int:
    from training.common.checkpoints import ResumeError

    try:
        if args.model == "cspine":
            from training.cspine.cli import cmd_train as train_cspine

            return train_cspine(args)
        return _train_radiograph(args)
    except ResumeError as exc:
        print(f"fracnode train: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\nfracnode train: interrupted; the last finished epoch is checkpointed under {args.cache}."
            " Run the same command with --resume to go on from there.",
            file=sys.stderr,
        )
        return 130


def _train_radiograph(args: argparse.Namespace) -> int:
    from node.inference.bundle import BundleError
    from training.radiograph import bundle_edits
    from training.radiograph import run as radiograph
    from training.radiograph.fracatlas import DataError
    from training.radiograph.model_card import write_model_card
    from training.radiograph.pretrained import PretrainedError

    settings = _settings(args)
    if settings.fold and not args.bundle:
        print(
            "fracnode train: --fold trains weights for choosing between candidates, not for shipping;"
            " give a copy of the bundle with --bundle so the shipped one stays as it is",
            file=sys.stderr,
        )
        return 2
    try:
        if args.encoder:
            bundle_edits.set_encoder(settings.bundle, args.encoder)
            print(
                f"network of {settings.bundle}: FracAtlasLiteNet with an EfficientNet-{args.encoder} encoder"
                + (" from ImageNet weights" if settings.pretrained else ""),
                file=sys.stderr,
            )
        if args.input_size:
            bundle_edits.set_input_size(settings.bundle, args.input_size, args.input_scale)
            print(
                f"input size of {settings.bundle} set to {args.input_size}"
                + (f", input scale {args.input_scale}" if args.input_scale else ""),
                file=sys.stderr,
            )
        elif args.input_scale:
            raise BundleError("--input-scale goes with --input-size (the input size must fit the scale)")
        if args.combine:
            training = bundle_edits.combine(settings.bundle, [Path(member) for member in args.combine])
            print(f"{settings.bundle}: an ensemble of {len(args.combine)} networks", file=sys.stderr)
        else:
            training = radiograph.train(settings, log=lambda line: print(line, file=sys.stderr, flush=True))
        report = radiograph.evaluate(settings, log=lambda line: print(line, file=sys.stderr, flush=True))
    except (DataError, BundleError, PretrainedError) as exc:
        print(f"fracnode train: {exc}", file=sys.stderr)
        return 2
    bundle_edits.record(settings.bundle, report, training)
    write_model_card(settings.bundle)
    print(f"weights, metrics and model card written to {settings.bundle}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.model == "cspine":
        from training.cspine.cli import cmd_evaluate as evaluate_cspine

        return evaluate_cspine(args)
    from node.inference.bundle import BundleError
    from training.radiograph import bundle_edits
    from training.radiograph import run as radiograph
    from training.radiograph.fracatlas import DataError
    from training.radiograph.model_card import write_model_card

    settings = _settings(args)
    try:
        report = radiograph.evaluate(settings, log=lambda line: print(line, file=sys.stderr, flush=True))
    except (DataError, BundleError) as exc:
        print(f"fracnode evaluate: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    if args.write:
        bundle_edits.record(settings.bundle, report)
        write_model_card(settings.bundle)
        print(f"metrics written to {settings.bundle}", file=sys.stderr)
    return 0


def cmd_phantom(args: argparse.Namespace) -> int:
    from training.phantom.generate import PhantomSpec, generate_layout

    try:
        spec = PhantomSpec(
            size=args.size,
            slices=args.slices,
            fracture_rate=args.fracture_rate,
            region="abdomen" if args.no_neck else "neck",
        )
    except ValueError as exc:
        print(f"fracnode phantom: {exc}", file=sys.stderr)
        return 2
    path = generate_layout(
        Path(args.out),
        args.studies,
        seed=args.seed,
        spec=spec,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(f"{args.studies} studies written; labels in {path}")
    return 0


def add_phantom_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("phantom", help="write synthetic CT studies (RSNA 2022 C-spine layout)")
    parser.add_argument("kind", choices=["cspine"], help="which phantom")
    parser.add_argument("--out", required=True, help="folder for train.csv, train_images/, segmentations/")
    parser.add_argument("--studies", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slices", type=int, help="slices per series (default: what covers the neck)")
    parser.add_argument("--size", type=int, default=512, help="rows and columns (default 512)")
    parser.add_argument(
        "--fracture-rate",
        type=float,
        default=0.5,
        help="share of patients with at least one fractured vertebra (default 0.5)",
    )
    parser.add_argument(
        "--no-neck",
        action="store_true",
        help="abdomen-like CT without cervical vertebrae (images only, no train.csv rows)",
    )
    parser.set_defaults(func=cmd_phantom)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    add_phantom_parser(sub)
    for name, func, help_text in (
        ("train", cmd_train, "train a shipped model from its dataset, then evaluate it on the test split"),
        ("evaluate", cmd_evaluate, "measure a model on the held-out test split of its dataset"),
    ):
        parser = sub.add_parser(name, help=help_text)
        parser.add_argument("model", choices=["radiograph", "cspine"], help="which model")
        parser.add_argument(
            "--data",
            required=True,
            help="radiograph: the FracAtlas folder (manifest.csv); cspine: the RSNA 2022 layout (train.csv)",
        )
        parser.add_argument("--bundle", help="bundle folder (default: the shipped models/radiograph_fracture)")
        parser.add_argument(
            "--cache",
            default=str(DEFAULT_CACHE),
            help=f"preprocessed images and checkpoints (default: {DEFAULT_CACHE})",
        )
        parser.add_argument("--batch-size", type=int, default=16)
        parser.add_argument("--seed", type=int, default=7, help="split and training seed")
        parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
        if name == "train":
            parser.add_argument("--epochs", type=int, help="radiograph: 24 by default; cspine: fracture model, 12")
            parser.add_argument("--learning-rate", type=float, default=2e-3, help="peak of the one-cycle schedule")
            parser.add_argument("--init", help="start from these weights (a state dict), e.g. to fine-tune")
            parser.add_argument(
                "--ema",
                type=float,
                default=0.0,
                metavar="DECAY",
                help="radiograph: validate and keep a moving average of the weights (e.g. 0.998)",
            )
            parser.add_argument(
                "--resume",
                action="store_true",
                help="go on from the last finished epoch of an interrupted run with the same options and --cache",
            )
            parser.add_argument(
                "--train-seed",
                type=int,
                metavar="SEED",
                help="radiograph: seed of the initial weights, batch order and augmentation"
                " (default: --seed); the split stays that of --seed",
            )
            parser.add_argument(
                "--combine",
                nargs="+",
                metavar="BUNDLE",
                help="radiograph: instead of training, make --bundle an ensemble of these trained"
                " bundles (same architecture and input size; outputs averaged), then evaluate it",
            )
            parser.add_argument(
                "--input-size",
                type=int,
                metavar="PIXELS",
                help="radiograph: set the bundle's input size (a multiple of 32) before training",
            )
            parser.add_argument(
                "--encoder",
                choices=["lite0", "lite1", "lite2"],
                help="radiograph: make the bundle's network an EfficientNet-Lite encoder with the"
                " three heads, started from ImageNet weights (the [train] extra) unless --init",
            )
            parser.add_argument(
                "--freeze-stages",
                type=int,
                default=0,
                metavar="N",
                help="radiograph, EfficientNet-Lite: keep the stem and the first N of the encoder's"
                " 7 stages at their initial weights",
            )
            parser.add_argument(
                "--warmup-epochs",
                type=int,
                default=0,
                metavar="N",
                help="radiograph, EfficientNet-Lite: train only the decoder and heads for N epochs",
            )
            parser.add_argument(
                "--encoder-lr-scale",
                type=float,
                default=1.0,
                metavar="X",
                help="radiograph, EfficientNet-Lite: the encoder's learning rate relative to the heads' (default 1)",
            )
            parser.add_argument(
                "--input-scale",
                type=int,
                choices=[1, 2],
                metavar="N",
                help="radiograph, with --input-size: 2 reads twice the pixels through a finer stem"
                " (a multiple of 64), so weights trained at scale 1 and half the size fine-tune"
                " with --init",
            )
            parser.add_argument(
                "--fold",
                type=_fold,
                metavar="K/N",
                help="radiograph: validate on fold K of a grouped N-fold cross-validation over the"
                " train and validation images (the test split stays as it is), to compare candidates"
                " on more than one validation split; needs --bundle (a copy)",
            )
        else:
            parser.add_argument(
                "--write", action="store_true", help="write the numbers into the bundle's metadata and model card"
            )
        from training.cspine.cli import add_arguments as cspine_arguments

        cspine_arguments(parser, name)
        parser.set_defaults(func=func)

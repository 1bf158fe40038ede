"""``niwt predict IMAGE...``: rank every class (seen and injected unseen) of new images, and explain.

Not a pipeline stage (no params, no DVC, no MLflow run): it loads an injected checkpoint (or, with
``--arch``, a plain state_dict such as the exported ``models/injected/<method>.pth``) and prints the
top-k classes; ``--explain OUTDIR`` also writes each image's Grad-CAM overlay and
textual explanation (:mod:`niwt.explain.predict`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_MODEL = Path("models/injected/niwt.pt")
DEFAULT_DATA = Path("data/prepared")
DEFAULT_INVERSE = Path("models/inverse_map.pt")


def add_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    sp.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="injected checkpoint (default: %(default)s)")
    sp.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help="prepared data, for attribute names (default: %(default)s)")
    sp.add_argument("--top-k", type=int, default=5, help="classes to list per image (default: %(default)s)")
    sp.add_argument("--explain", type=Path, metavar="OUTDIR",
                    help="write the Grad-CAM overlay and textual explanation of each image here")
    sp.add_argument("--target", metavar="CLASS", help="explain this class instead of the top-1")
    sp.add_argument("--inverse-map", type=Path, default=DEFAULT_INVERSE,
                    help="inverse map written by fit_mapping (default: %(default)s)")
    sp.add_argument("--device", default="cpu", help="cpu | cuda | auto (default: %(default)s)")
    g = sp.add_argument_group("a plain state_dict as --model (the exported <method>.pth, or your own)")
    g.add_argument("--arch", help="its architecture (smallcnn or a torchvision model name)")
    g.add_argument("--classes", type=Path, help="its class list, one per output row (default: <model>.classes.txt)")
    g.add_argument("--image-size", type=int, default=224, help="input side in pixels (default: %(default)s)")


def _plain(args: argparse.Namespace, classes):
    """A plain state_dict (``--arch``, ``--classes``, ``--image-size``) as a model and its metadata."""
    from niwt.models.checkpoint import load_state_dict_file, read_class_names
    from niwt.models.networks import build_model

    names_path = args.classes or args.model.with_name(args.model.name.split(".")[0] + ".classes.txt")
    names = read_class_names(names_path)
    n_seen = classes.n_seen if classes is not None else len(names)
    model = build_model(args.arch, len(names), state_dict=load_state_dict_file(args.model), source=str(args.model),
                        image_size=args.image_size)
    from niwt.models.checkpoint import CheckpointMeta

    return model, CheckpointMeta(args.arch, tuple(names), n_seen, args.image_size)


def command(args: argparse.Namespace) -> int:
    """``niwt predict``; returns the exit status."""
    from niwt.config.bounds import check_image_size
    from niwt.data.images import UnreadableImage
    from niwt.data.raw import DatasetError
    from niwt.data.tables import read_classes
    from niwt.errors import InputError
    from niwt.explain.predict import format_prediction, predict_images
    from niwt.mapping.store import load_map
    from niwt.models.checkpoint import check_classes, load_checkpoint
    from niwt.models.networks import ModelError, takes_features
    from niwt.models.training import resolve_device

    try:
        if args.arch is not None:
            check_image_size(args.image_size)
        if args.explain is not None and args.explain.exists() and not args.explain.is_dir():
            raise ModelError(f"--explain {args.explain}: exists and is not a directory")
        classes = read_classes(args.data / "classes.parquet") if (args.data / "classes.parquet").is_file() else None
        if args.arch is None:
            model, meta = load_checkpoint(args.model, resolve_device(args.device))
        else:
            if args.explain is not None:
                raise ModelError("--explain needs a niwt checkpoint (it names the importance layer), not --arch")
            model, meta = _plain(args, classes)
            model = model.to(resolve_device(args.device)).eval()
        if classes is not None:
            check_classes(meta, classes.names, args.model)
        if takes_features(model):
            raise ModelError(f"{args.model}: this network reads precomputed feature vectors ({meta.arch}, "
                             f"{model.in_features}-d, data.name: xlsa17), not images; predict classifies image files")
        inverse = None
        if args.explain is not None:
            inverse = load_map(args.inverse_map, "inverse map", heldout=False) if args.inverse_map.is_file() else None
            if inverse is None:
                print(f"niwt predict: note: {args.inverse_map} not found, no textual explanation "
                      "(run `dvc repro fit_mapping`)", file=sys.stderr)
            elif classes is not None and (list(inverse.attribute_names) != list(classes.attribute_names)
                                          or inverse.provenance.layer != meta.layer):
                print(f"niwt predict: note: {args.inverse_map} was fit on other attributes or another layer, "
                      "no textual explanation (rerun `dvc repro fit_mapping`)", file=sys.stderr)
                inverse = None
            try:
                args.explain.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ModelError(f"--explain {args.explain}: cannot create it ({err.strerror or err})") from None
        if args.top_k < 1:
            raise InputError(f"--top-k must be at least 1, got {args.top_k}")
        n_classes = model.classifier.out_features
        if args.top_k > n_classes:
            print(f"niwt predict: note: --top-k {args.top_k}: the classifier has {n_classes} classes; listing "
                  f"all {n_classes}", file=sys.stderr)
        preds = predict_images(model, meta, args.images, top_k=min(args.top_k, n_classes), explain_dir=args.explain,
                               classes=classes, inverse=inverse, target=args.target)
    except UnreadableImage as err:  # the user's own file: prepare never saw it
        print(f"niwt predict: error: {err.path}: cannot read image ({err.reason})", file=sys.stderr)
        return 2
    except (ModelError, DatasetError, FileNotFoundError, ValueError, InputError) as err:
        print(f"niwt predict: error: {err}", file=sys.stderr)
        return 2
    for pred in preds:
        print(format_prediction(pred), flush=True)
    return 0

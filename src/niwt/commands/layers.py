"""``niwt layers --arch NAME [--image-size N]``: the layers a network can take importances at.

Not a pipeline stage. Builds the architecture with random weights (or loads ``--model``, a niwt
checkpoint), runs one forward pass and prints, for each candidate layer, its output shape and the
first nonlinearity between it and the classifier. A layer with none (global pooling + linear
layers only) is marked ``degenerate``: every image's importance would be its class's weight row
and NIWT would degenerate into weight regression; ``extract`` refuses it unless
``extract.allow_degenerate: true``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--arch", default="smallcnn",
                    help="smallcnn or a torchvision classification model, e.g. resnet18 (default: %(default)s)")
    sp.add_argument("--image-size", type=int, default=None,
                    help="input side in pixels (default: 64 for smallcnn, else 224)")
    sp.add_argument("--features", type=int, default=2048,
                    help="mlp: the width of the feature vectors it reads (default: %(default)s, xlsa17's ResNet-101)")
    sp.add_argument("--model", type=Path, help="a niwt checkpoint (models/finetuned.pt) instead of --arch")
    sp.add_argument("--depth", type=int, default=2, help="module depth listed for torchvision models (default: 2)")
    sp.add_argument("--all", action="store_true", help="also list modules that cannot be importance layers")


def layer_table(model, image_size: int, depth: int = 2, show_all: bool = False, arch: str | None = None) -> list[dict]:
    """One row per candidate layer: name, output shape, first nonlinearity above it, verdict; with
    ``arch``, the layer ``extract.layer: auto`` picks is marked ``(default)``."""
    import torch

    from niwt.importance.degenerate import NEAR_DEGENERATE, by_value
    from niwt.models.graph import nonlinearity_after
    from niwt.models.layout import layer_layout
    from niwt.models.networks import ModelError, default_layer, example_input, importance_layers, split_at

    try:
        default = default_layer(model, arch) if arch else None
    except ModelError:
        default = None

    model.eval()
    names = importance_layers(model, max_depth=depth)
    modules = dict(model.named_modules())
    shapes: dict[str, list[tuple[int, ...]]] = {n: [] for n in names}
    handles = [modules[n].register_forward_hook(
        lambda m, i, o, n=n: shapes[n].append(tuple(o.shape[1:]) if isinstance(o, torch.Tensor) else ()))
        for n in names]
    try:
        with torch.no_grad():
            model(example_input(model, 1, image_size))
    finally:
        for h in handles:
            h.remove()
    rows = []
    for name in names:
        row = {"layer": name, "shape": shapes[name][-1] if shapes[name] else (), "nonlinearity": None, "status": "",
               "cosine": None}
        if len(shapes[name]) != 1:
            row["status"] = "not usable: runs more than once" if shapes[name] else "not usable: never runs"
        elif len(row["shape"]) != (1 if getattr(model, "in_features", None) else 3) and \
                layer_layout(model, name).kind != "tokens":
            row["status"] = "not usable: no spatial map"
        else:
            try:
                _, head = split_at(model, name)
            except ModelError as err:
                row["status"] = f"not usable: {str(err).split(': ', 1)[-1][:80]}"
            else:
                row["nonlinearity"] = nonlinearity_after(head)
                row["status"] = "degenerate (linear path to the logits)" if row["nonlinearity"] is None else "ok"
                if row["nonlinearity"] is not None:  # by value: importances all but equal to the weight rows?
                    measured = by_value(model, name, image_size)
                    row["cosine"] = measured.cosine
                    if measured.vanishes:
                        row["status"] = "degenerate (no gradient reaches it)"
                    elif row["cosine"] is not None and row["cosine"] >= NEAR_DEGENERATE:
                        row["status"] = f"degenerate (importance ~ weight row, cos {row['cosine']:.4f})"
        if name == default:
            row["status"] += " (default)"
        if show_all or not row["status"].startswith("not usable"):
            rows.append(row)
    return rows


def command(args: argparse.Namespace) -> int:
    """``niwt layers``; returns the exit status."""
    from niwt.config.bounds import check_image_size
    from niwt.errors import InputError
    from niwt.importance.degenerate import NEAR_DEGENERATE
    from niwt.models.checkpoint import load_checkpoint

    try:
        if args.image_size is not None:
            check_image_size(args.image_size)
        if args.model is not None:
            model, meta = load_checkpoint(args.model)
            arch, size = meta.arch, args.image_size or meta.image_size
            if size != meta.image_size and hasattr(model.body, "image_size"):  # a ViT's position embedding
                raise InputError(f"--image-size {size}: {args.model} is a {arch} built for {meta.image_size}x"
                                 f"{meta.image_size} images (one position per patch); leave --image-size out")
        else:
            from niwt.models.networks import build_model

            arch = args.arch
            size = args.image_size or (64 if arch == "smallcnn" else 224)
            if not 1 <= args.features <= 65536:
                raise InputError(f"--features must be between 1 and 65536 (a feature width), got {args.features}")
            model = build_model(arch, 10, image_size=size, in_features=args.features if arch == "mlp" else None)
        rows = layer_table(model, size, args.depth, args.all, arch)
    except (InputError, FileNotFoundError) as err:
        print(f"niwt layers: error: {err}", file=sys.stderr)
        return 2
    width = max([len(r["layer"]) for r in rows] + [5])
    shown = f"{model.in_features}-d features" if getattr(model, "in_features", None) else f"{size}x{size}"
    print(f"{arch} at {shown}: candidate importance layers (extract.layer), output shape per input (a "
          "transformer's: tokens x channels or height x width x channels), mean cosine of importances to the "
          "weight row, and the first nonlinearity between the layer and the classifier")
    for r in rows:
        shape = "x".join(map(str, r["shape"])) or "-"
        above = r["nonlinearity"] or "-"
        cos = "-" if r["cosine"] is None else f"{r['cosine']:.3f}"
        print(f"{r['layer']:<{width}}  {shape:<14}  {cos:>6}  {r['status']:<48}  {above}")
    print("degenerate: only pooling and linear layers above it, no gradient reaching it, or (by value) "
          f"importances with a mean cosine >= {NEAR_DEGENERATE} to their class's weight row: every image's "
          "importance would be its class's weight row and NIWT reduce to weight regression; extract refuses it "
          "unless extract.allow_degenerate: true. (default): the layer extract.layer: auto takes")
    return 0

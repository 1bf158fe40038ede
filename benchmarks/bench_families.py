"""One row per architecture family: the layer ``extract.layer: auto`` takes, its shape, how far its
importances are from the class's weight row, the injection solver ``inject.solver: auto`` picks, and
the time per injection iteration -- the README's "Architecture families" table. Two cosines: to the
class's weight row (where the layer is as wide as the classifier's input; >= 0.99 is refused), and
between the importances of one class on different random inputs (any width; 1 means the image does
not matter).

Every network is torchvision's, randomly initialised (a zero classifier, as torchvision gives a ViT,
is redrawn; batch-norm statistics measured on 64 random images), at ``--size`` pixels. Random weights
are not trained ones: a ConvNeXt starts its layer scales at 1e-6, so its blocks are near identities and
its importances nearly image-independent until trained (``niwt layers --model`` measures a checkpoint).
The pool is ``--pool`` random images, ``--unseen`` classes with random predicted importances,
``--iters`` iterations of ``niwt.injection.niwt.inject``. The cosines are
:func:`niwt.importance.degenerate.by_value`'s (4 random inputs); the headline is the largest cosine to
the weight row over the defaults, which must stay below the near-degenerate threshold.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, base_parser, setup  # noqa: E402

from niwt.importance.degenerate import NEAR_DEGENERATE, by_value, inspect_layer  # noqa: E402
from niwt.injection.niwt import inject, resolve_solver  # noqa: E402
from niwt.models.networks import build_model, default_layer, split_at  # noqa: E402
from niwt.params import InjectParams  # noqa: E402

FAMILIES = {"ResNet": "resnet50", "VGG": "vgg16", "MobileNetV3": "mobilenet_v3_large",
            "EfficientNet": "efficientnet_b0", "ConvNeXt": "convnext_tiny", "ViT": "vit_b_16", "Swin": "swin_t"}


def family_row(arch: str, size: int, pool: int, unseen: int, iters: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = build_model(arch, 10, image_size=size).to(device)
    with torch.no_grad():
        if not model.classifier.weight.any():
            model.classifier.weight.normal_(0, 0.05)
        for m in model.modules():  # batch-norm statistics of the random network itself, not the init's (0, 1)
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # a plain average over the calibration batches
        model.train()
        for _ in range(4):
            model(torch.randn(16, 3, size, size, generator=torch.Generator().manual_seed(_)).to(device))
    model.eval()
    layer = default_layer(model, arch)
    verdict = inspect_layer(model, layer, size)
    same = by_value(model, layer, size).same_class_cosine
    trunk, head = split_at(model, layer)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        acts = trunk(torch.randn(pool, 3, size, size, generator=gen).to(device)).float()
    start = time.perf_counter()
    solver, jac = resolve_solver(head, acts, "sum", "auto")
    precompute = time.perf_counter() - start
    alpha_hat = torch.randn(unseen, acts.shape[1], generator=gen).to(device)
    cfg = InjectParams(max_iters=iters, patience=10**9)
    start = time.perf_counter()
    result = inject(head, acts, alpha_hat, model.classifier.weight.detach(), cfg, solver, jac, pooling="sum",
                    seed=0, lr=1e-3, lambda_=1e-3)
    per_iter = (time.perf_counter() - start) / result.iterations
    return {"arch": arch, "layer": layer, "shape": "x".join(map(str, verdict.shape)), "layout": verdict.layout.kind,
            "cosine": verdict.weight_row_cosine, "same_class_cosine": same, "degenerate": verdict.degenerate,
            "solver": result.solver,
            "precompute_s": precompute, "s_per_iter": per_iter,
            "jacobian_mib": (jac.nbytes / 2**20) if jac is not None else 0.0}


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default: %(default)s)")
    parser.add_argument("--pool", type=int, default=16, help="pool images (default: %(default)s)")
    parser.add_argument("--unseen", type=int, default=10)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    args = parser.parse_args()
    if args.quick:
        args.size, args.pool, args.iters = 32, 2, 2
    device = setup(args)
    report = Report(f"Architecture families at {args.size} px, pool {args.pool}, {args.unseen} unseen classes")
    rows = []
    for family in args.families:
        row = family_row(FAMILIES[family], args.size, args.pool, args.unseen, args.iters, device)
        rows.append({"family": family, **row})
        cos = "-" if row["cosine"] is None else f"{row['cosine']:.3f}"
        report.info(f"{family} ({row['arch']}) {row['layer']}",
                    f"{row['shape']} ({row['layout']}), cos {cos}, same-class cos {row['same_class_cosine']:.3f}, "
                    f"{row['solver']}, precompute {row['precompute_s']:.2f} s ({row['jacobian_mib']:.1f} MiB), "
                    f"{row['s_per_iter'] * 1e3:.2f} ms/iter")
    cosines = [r["cosine"] for r in rows if r["cosine"] is not None]
    report.ratio("max_weight_row_cosine_of_defaults", max(cosines) if cosines else 0.0, "<=", NEAR_DEGENERATE,
                 fmt="{:.3f}")
    report.ratio("degenerate_defaults", float(sum(r["degenerate"] for r in rows)), "<=", 0, fmt="{:.0f}")
    print("\n| family | torchvision model | default layer | shape | cos to weight row | same-class cos | solver | "
          "precompute | per iteration |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cos = "-" if r["cosine"] is None else f"{r['cosine']:.3f}"
        print(f"| {r['family']} | {r['arch']} | `{r['layer']}` | {r['shape']} | {cos} | "
              f"{r['same_class_cosine']:.3f} | {r['solver']} | "
              f"{r['precompute_s']:.2f} s | {r['s_per_iter'] * 1e3:.2f} ms |")
    report.finish(args.json, {"rows": rows})


if __name__ == "__main__":
    main()

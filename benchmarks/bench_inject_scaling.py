"""NIWT injection cost against the number of unseen classes and the pool size, and a low-precision
dense Jacobian against float32.

Each configuration runs in a fresh process (its own peak RSS): the default network (the finetuned
checkpoint when present, else a random-init ``small_cnn``), random images for the pool and random
predicted importances; ``--iters`` iterations of ``niwt.injection.niwt.inject`` with the default
solver (the gated Jacobian). Prints seconds per iteration, the Jacobian precompute, and peak RSS
for U = 10 ... 10,000 classes at P = 1,024 pool images, and for P = 256 ... 8,192 at U = 100; the
cost should grow linearly (per iteration: only the regulariser and Adam touch all U rows; memory:
the shuffled pair order, U x P integers, and the W_u rows). Then a head with a convolution above the
layer (``body.block3``: the dense Jacobian) in float32 and in bfloat16: speed, memory and the
difference of the learned rows.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, base_parser, load_model, setup  # noqa: E402

from niwt.injection.jacobian import DenseJacobian, channel_jacobian  # noqa: E402
from niwt.injection.niwt import inject, resolve_solver  # noqa: E402
from niwt.models.networks import split_at  # noqa: E402
from niwt.params import InjectParams  # noqa: E402


def pool_activations(trunk: torch.nn.Module, n: int, size: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        return torch.cat([trunk(torch.randn(min(256, n - i), 3, size, size, generator=gen)).float()
                          for i in range(0, n, 256)])


def one(n_unseen: int, n_pool: int, iters: int, seed: int) -> dict[str, float]:
    """One configuration, in this process: seconds per iteration, precompute, peak RSS."""
    model, layer, size, _ = load_model(torch.device("cpu"))
    trunk, head = split_at(model, layer)
    acts = pool_activations(trunk, n_pool, size, seed)
    cfg = InjectParams(max_iters=iters, patience=10**9)
    start = time.perf_counter()
    solver, jac = resolve_solver(head.eval(), acts, "sum", cfg.solver)
    precompute = time.perf_counter() - start
    alpha_hat = torch.randn(n_unseen, acts.shape[1], generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    result = inject(head, acts, alpha_hat, model.classifier.weight.detach(), cfg, solver, jac, pooling="sum",
                    seed=seed, lr=1e-3, lambda_=1e-3)
    seconds = time.perf_counter() - start
    return {"s_per_iter": seconds / result.iterations, "precompute_s": precompute,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "solver": result.solver}


def run_one(n_unseen: int, n_pool: int, iters: int, seed: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--one", str(n_unseen), str(n_pool), str(iters), str(seed)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def low_precision(n_pool: int, iters: int, seed: int) -> dict[str, float]:
    """A convolutional head (dense Jacobian), float32 vs bfloat16 storage: speed, size, difference."""
    model, _, size, _ = load_model(torch.device("cpu"))
    trunk, head = split_at(model, "body.block3")
    acts = pool_activations(trunk, n_pool, size, seed)
    head = head.eval()
    dense = channel_jacobian(head, acts, "sum")
    alpha_hat = torch.randn(10, acts.shape[1], generator=torch.Generator().manual_seed(seed))
    cfg = InjectParams(max_iters=iters, patience=10**9)
    out = {}
    for name, jac in (("float32", DenseJacobian(dense)), ("bfloat16", DenseJacobian(dense.to(torch.bfloat16)))):
        start = time.perf_counter()
        res = inject(head, acts, alpha_hat, model.classifier.weight.detach(), cfg, "jacobian", jac, pooling="sum",
                     seed=seed, lr=1e-3, lambda_=1e-3)
        out[name] = (res, (time.perf_counter() - start) / res.iterations, jac.nbytes)
    (r32, t32, b32), (r16, t16, b16) = out["float32"], out["bfloat16"]
    return {"speedup": t32 / t16, "bytes_ratio": b16 / b32, "loss_f32": r32.final_loss, "loss_bf16": r16.final_loss,
            "max_abs_dw": float((r32.weight - r16.weight).abs().max()),
            "rel_dw": float((r32.weight - r16.weight).norm() / r32.weight.norm())}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        print(json.dumps(one(*map(int, sys.argv[2:6]))))
        return
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=0, help="iterations per configuration (default 100; quick 5)")
    args = parser.parse_args()
    setup(args)
    iters = args.iters or (5 if args.quick else 100)
    classes = [10, 100] if args.quick else [10, 100, 1000, 10000]
    pools = [64, 128] if args.quick else [256, 1024, 4096, 8192]
    base_pool, base_classes = (128, 10) if args.quick else (1024, 100)
    report = Report(f"bench_inject_scaling ({'quick' if args.quick else 'full'}, {iters} iterations, cpu)")
    rows = []
    for u in classes:
        rows.append(("U", u, base_pool, run_one(u, base_pool, iters, args.seed)))
    for p in pools:
        rows.append(("P", base_classes, p, run_one(base_classes, p, iters, args.seed)))
    print("\n| sweep | unseen classes U | pool P | ms / iteration | precompute s | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for sweep, u, p, r in rows:
        print(f"| {sweep} | {u} | {p} | {1000 * r['s_per_iter']:.2f} | {r['precompute_s']:.2f} | "
              f"{r['peak_rss_mib']:.0f} |")
    u_rows = [r for s, *_, r in rows if s == "U"]
    p_rows = [r for s, *_, r in rows if s == "P"]
    scale_u = classes[-1] / classes[0]
    report.ratio("time_per_iter_largest_vs_smallest_U", u_rows[-1]["s_per_iter"] / u_rows[0]["s_per_iter"], "<=",
                 scale_u, note=f"U {classes[-1]} vs {classes[0]}: linear in U at most")
    report.ratio("time_per_iter_largest_vs_smallest_P", p_rows[-1]["s_per_iter"] / p_rows[0]["s_per_iter"], "<=",
                 pools[-1] / pools[0], note=f"P {pools[-1]} vs {pools[0]}")
    report.ratio("peak_rss_largest_vs_smallest_U", u_rows[-1]["peak_rss_mib"] / u_rows[0]["peak_rss_mib"])
    lp = low_precision(64 if args.quick else 512, iters, args.seed)
    report.ratio("dense_bf16_speedup", lp["speedup"], note="bfloat16 vs float32 dense Jacobian, per iteration")
    report.ratio("dense_bf16_bytes_ratio", lp["bytes_ratio"], "<=", 0.5)
    report.ratio("dense_bf16_relative_dW", lp["rel_dw"], note="|W_bf16 - W_f32| / |W_f32| after the run")
    report.info("dense float32 final loss", lp["loss_f32"], "{:.6f}")
    report.info("dense bfloat16 final loss", lp["loss_bf16"], "{:.6f}")
    report.finish(args.json, {"rows": [{"sweep": s, "U": u, "P": p, **r} for s, u, p, r in rows], **lp})


if __name__ == "__main__":
    main()

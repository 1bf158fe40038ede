"""NIWT (Selvaraju et al., ECCV'18): unseen rows whose neuron importances match the ones the forward
map predicts from each unseen class's domain vector (:func:`niwt.injection.niwt.inject`).

Reads the image pool (``inject.pool``) once, and computes the head's Jacobian once, for both
partitions and every setting. Hyperparameters: Adam's ``lr`` and the regulariser ``lambda``
(``inject.lr`` x ``inject.lambda``), and the forward map's learning rate, weight decay and epochs
(``mapping.lr`` x ``mapping.weight_decay`` x ``mapping.candidate_epochs``).
"""

from __future__ import annotations

import torch

from niwt.injection.context import Context, Partition, Rows, pool_activations
from niwt.injection.niwt import inject, resolve_solver
from niwt.injection.registry import Method
from niwt.mapping.linear import predict_importance
from niwt.models.networks import split_at
from niwt.params import InjectParams


def settings(cfg: InjectParams) -> list[dict[str, float]]:
    """Adam's learning rate x lambda, lambda innermost."""
    return [{"lr": lr, "lambda": lam} for lr in cfg.lr for lam in cfg.lambda_]


def build(ctx: Context, part: Partition) -> Rows:
    """NIWT rows for ``part.unseen`` from the importances the mapping predicts for them."""
    layer, pooling = ctx.mapping.provenance.layer, ctx.mapping.provenance.pooling

    def pool() -> tuple[torch.Tensor, torch.nn.Module, tuple]:
        trunk, head = split_at(ctx.model, layer)
        acts = pool_activations(trunk.to(ctx.device), ctx.cfg, ctx.seed, ctx.splits, ctx.image_size, ctx.device,
                                ctx.images, ctx.batch_size, in_features=getattr(ctx.model, "in_features", None))
        head = head.cpu().eval()
        return acts, head, resolve_solver(head, acts, pooling, ctx.cfg.solver)  # one Jacobian for both runs

    acts, head, (solver, jac) = ctx.cached("niwt_pool", pool)
    m = ctx.mapping
    weight, bias = (m.heldout_weight, m.heldout_bias) if part.heldout else (m.weight, m.bias)
    alpha_hat = predict_importance(weight, bias, ctx.classes.domain[part.unseen])
    result = inject(head, acts, alpha_hat, ctx.seen_rows(part.seen)[0], ctx.cfg, solver, jac,
                    pooling=pooling, seed=ctx.seed, lr=ctx.setting("lr"), lambda_=ctx.setting("lambda"))
    stats = {"iterations": result.iterations, "final_loss": result.final_loss, "pool_size": int(acts.shape[0]),
             "solver": result.solver}
    return Rows(result.weight, torch.zeros(len(part.unseen)), None, stats)


METHOD = Method("niwt", "NIWT", build, settings, needs_images=True, needs_pool=True, needs_mapping=True,
                reading="as_shipped")

"""SJE (Akata et al., CVPR'15) as benchmarked by Xian et al. (GBU, TPAMI'18), on the finetuned
network's penultimate features of the seen training images: a bilinear compatibility
``F(x, c) = x^T V s_c`` trained by minibatch SGD (as DEVISE, :mod:`niwt.injection.methods.devise`) on
the structured SVM hinge of the most violating class

    L(x_n, y_n; V) = [max_{j in Y_tr} (Delta(y_n, j) + x_n^T V s_j) - x_n^T V s_{y_n}]_+ ,
    Delta(y, j) = [j != y]                                              (:mod:`niwt.peers.sje`).

Rows ``V s_c``, bias 0, for the unseen AND (replacing them) the seen classes, used with calibrated
stacking. Hyperparameters: ``lr`` in ``inject.sje_lr`` x ``epochs`` in ``inject.bilinear_epochs``."""

from __future__ import annotations

from niwt.injection.context import Context, Partition, Rows
from niwt.injection.methods.devise import sgd_rows, sgd_settings
from niwt.injection.registry import Method
from niwt.params import InjectParams
from niwt.peers.sje import fit_sje


def settings(cfg: InjectParams) -> list[dict[str, float]]:
    """``inject.sje_lr`` x ``inject.bilinear_epochs``."""
    return sgd_settings(cfg.sje_lr, cfg)


def build(ctx: Context, part: Partition) -> Rows:
    """SJE rows for every class of ``part``."""
    return sgd_rows(ctx, part, fit_sje)


METHOD = Method("sje", "SJE", build, settings, needs_images=True, replaces_seen=True, reading="calibrated")

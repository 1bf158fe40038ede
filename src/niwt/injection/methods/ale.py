"""ALE (Akata et al., CVPR'13 / TPAMI'16) as benchmarked by Xian et al. (GBU, TPAMI'18), on the
finetuned network's penultimate features of the seen training images: a bilinear compatibility
``F(x, c) = x^T V s_c`` trained by minibatch SGD (as DEVISE, :mod:`niwt.injection.methods.devise`) on
DEVISE's hinges weighted by the image's rank (WSABIE's weighted approximate ranking)

    L(x_n, y_n; V) = (l_r / r) * sum_{j in Y_tr} [Delta(y_n, j) + x_n^T V s_j - x_n^T V s_{y_n}]_+ ,
    r = #{j : Delta(y_n, j) + x_n^T V s_j - x_n^T V s_{y_n} > 0},   l_r = sum_{i=1}^{r} 1/i
                                                                        (:mod:`niwt.peers.ale`).

Rows ``V s_c``, bias 0, for the unseen AND (replacing them) the seen classes, used with calibrated
stacking. Hyperparameters: ``lr`` in ``inject.ale_lr`` x ``epochs`` in ``inject.bilinear_epochs``."""

from __future__ import annotations

from niwt.injection.context import Context, Partition, Rows
from niwt.injection.methods.devise import sgd_rows, sgd_settings
from niwt.injection.registry import Method
from niwt.params import InjectParams
from niwt.peers.ale import fit_ale


def settings(cfg: InjectParams) -> list[dict[str, float]]:
    """``inject.ale_lr`` x ``inject.bilinear_epochs``."""
    return sgd_settings(cfg.ale_lr, cfg)


def build(ctx: Context, part: Partition) -> Rows:
    """ALE rows for every class of ``part``."""
    return sgd_rows(ctx, part, fit_ale)


METHOD = Method("ale", "ALE", build, settings, needs_images=True, replaces_seen=True, reading="calibrated")

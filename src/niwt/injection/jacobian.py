"""Precomputed pooled head Jacobians: each NIWT iteration becomes a few matrix products.

The observed importance of a new row ``w`` on image ``x`` is ``alpha_obs(x) = M(x) w`` with
``M(x)[k, d] = pool_ij d f_d / d A_kij`` (f: the head, layer -> penultimate features). Two ways
to hold ``M`` for an image pool:

* :class:`GatedJacobian`, exact and tiny, for the heads NIWT is used with in practice: spatial
  pooling (max / average), ``Flatten``, then an MLP of ``Linear``, ``ReLU``, ``Dropout``,
  ``BatchNorm1d`` (eval). Such a head is linear once its ReLU on/off pattern is fixed, so
  ``M(x) = W1_bar^T G1(x) W2^T G2(x) ... WL^T GL(x)`` where ``G`` are the per-image 0/1 ReLU
  gates and ``W1_bar`` is the first linear layer summed over the pooled positions. The sum
  over spatial positions of a pooling's derivative equals the pooling applied to a map of ones
  (exact for every linear pooling; for max pooling whenever its input's ones-response is
  constant), so ``W1_bar`` needs no per-image work. Storage: one bit per hidden unit and image.
  This covers ``smallcnn`` at ``body.block4`` and VGG16 at ``body.relu5_3`` (pool5, fc6, fc7), and
  any traced torchvision head of that shape (a chain of modules: VGG-11/13/19, AlexNet).
* :class:`DenseJacobian` for any other head (convolutions above the layer, e.g. ResNet):
  ``(P, C, D)`` floats from forward-mode AD along each channel direction, ``C`` JVPs per image.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn

from niwt.errors import InputError
from niwt.importance.capture import Pooling

_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_MAX_POOLS = (nn.MaxPool2d, nn.AdaptiveMaxPool2d)
_IDENTITIES = (nn.Dropout, nn.Identity)
_STOCHASTIC = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)  # differ in train mode
DENSE_LIMIT_BYTES: int | None = None  # None: half the free memory of the device (free_memory_bytes)


class JacobianError(InputError):
    """A pooled head Jacobian that cannot be built as asked (too large, training-mode head)."""


class JacobianTooLarge(JacobianError):
    """The head has no gated form and its dense Jacobian exceeds the memory limit."""


def channel_jacobian(head: nn.Module, acts: torch.Tensor, pooling: Pooling, batch: int = 64,
                     max_elements: int = 1 << 24) -> torch.Tensor:
    """``M[b, k, :] = pool_ij d head(acts)[b] / d acts[b, k, i, j]`` by forward-mode AD.

    One jvp per channel, with the tangent equal to 1 over that channel's whole spatial map
    (divided by H*W for mean pooling), gives column k of the pooled Jacobian for every sample;
    ``vmap`` runs as many channels at once as fit in ``max_elements`` tangent entries.
    Memory: the result holds P*C*D floats.

    Args:
        acts: (P, C, H, W), or (P, C) for a vector layer

    Returns:
        (P, C, D)
    """
    c = acts.shape[1]
    scale = 1.0 if pooling == "sum" else 1.0 / acts[0, 0].numel()
    out = []
    with plain_attention():
        _jvp_columns(head, acts, c, scale, batch, max_elements, out)
    return torch.cat(out).contiguous()


@contextmanager
def plain_attention() -> Iterator[None]:
    """Attention without fused kernels, which have neither forward-mode AD nor double backward (a
    transformer's head): no nn.MultiheadAttention inference fast path, scaled_dot_product_attention's
    math backend (plain matmul and softmax, differentiable any number of times)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


def _jvp_columns(head: nn.Module, acts: torch.Tensor, c: int, scale: float, batch: int, max_elements: int,
                 out: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for part in acts.split(batch):
            # (C, B, C, H, W) one-hot channel tangents as an expanded view: no copy until used
            eye = torch.eye(c, dtype=part.dtype, device=part.device) * scale
            tangents = eye.view(c, 1, c, *[1] * (part.ndim - 2)).expand(c, *part.shape)
            chunk = max(1, min(c, max_elements // part.numel()))
            cols = torch.func.vmap(lambda t, p=part: torch.func.jvp(head, (p,), (t,))[1],
                                   chunk_size=chunk)(tangents)  # (C, B, D)
            out.append(cols.permute(1, 0, 2))


@dataclass(frozen=True)
class DenseJacobian:
    """``M`` stored in full: (P, C, D)."""

    m: torch.Tensor

    kind = "dense"

    def apply(self, img: torch.Tensor, w_rows: torch.Tensor) -> torch.Tensor:
        """(B, C) observed importances of rows ``w_rows`` (B, D) on pool images ``img`` (B,).

        A lower-precision ``m`` (bfloat16: half the memory) is multiplied in its precision and the
        result returned in ``w_rows``'s (benchmarks/bench_inject_scaling.py measures the difference)."""
        out = torch.bmm(self.m[img], w_rows.to(self.m.dtype).unsqueeze(2)).squeeze(2)
        return out.to(w_rows.dtype)

    @property
    def nbytes(self) -> int:
        return self.m.numel() * self.m.element_size()


@dataclass(frozen=True)
class GatedJacobian:
    """``M(x) = W1_bar^T G1(x) W2^T ... WL^T GL(x)``, applied right to left.

    ``ops`` lists the MLP's backward steps from the features down to the first linear layer's
    output: ``("gate", i)`` multiplies by the i-th stored gate, ``("scale", s)`` by a per-unit
    factor (eval BatchNorm1d), ``("linear", W)`` maps a gradient through ``x -> x W^T + b``.
    """

    first: torch.Tensor  # W1_bar: (D1, C), pooling and the mean's 1/HW folded in
    ops: tuple[tuple[str, object], ...]
    gates: tuple[torch.Tensor, ...]  # each (P, D_l) bool

    kind = "gated"

    def apply(self, img: torch.Tensor, w_rows: torch.Tensor) -> torch.Tensor:
        """(B, C) observed importances of rows ``w_rows`` (B, D) on pool images ``img`` (B,)."""
        v = w_rows
        for op, arg in self.ops:
            if op == "gate":
                v = v * self.gates[arg][img]
            elif op == "scale":
                v = v * arg
            else:
                v = v @ arg
        return v @ self.first

    @property
    def nbytes(self) -> int:
        return (sum(g.numel() for g in self.gates) + self.first.numel() * self.first.element_size()
                + sum(a.numel() * a.element_size() for op, a in self.ops if op != "gate"))


PooledJacobian = DenseJacobian | GatedJacobian


def _fx_chain(gm: torch.fx.GraphModule) -> list[nn.Module] | None:
    """The modules of a traced head (``niwt.models.graph.fx_split``) that is a plain chain: each op
    reads only the previous one's output (no branches), ``torch.flatten(x, 1)`` read as ``nn.Flatten``,
    the input's ``clone`` skipped. None for anything else."""
    modules = dict(gm.named_modules())
    chain: list[nn.Module] = []
    prev = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if prev is not None:
                return None
            prev = node
            continue
        if node.op == "output":
            return chain if node.args[0] is prev else None
        if node.all_input_nodes != [prev] or len(prev.users) != 1:
            return None
        if node.op == "call_module":
            chain.append(modules[node.target])
        elif node.op == "call_function" and node.target is torch.flatten and tuple(node.args[1:]) == (1,) \
                and not node.kwargs:
            chain.append(nn.Flatten())
        elif not (node.op == "call_method" and node.target == "clone" and not node.kwargs):
            return None
        prev = node
    return None


def _leaves(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in _leaves(child)]
    if isinstance(module, torch.fx.GraphModule):
        chain = _fx_chain(module)
        if chain is not None:
            return [leaf for child in chain for leaf in _leaves(child)]
    return [module]


def _ones_response(pools: list[nn.Module], spatial: torch.Size) -> torch.Tensor | None:
    """``r[s] = sum_ij d P_s / d A_ij`` of the pooling chain, or None where it is not constant per
    image (a max pooling after a pooling whose ones-response varies, e.g. a padded average)."""
    r = torch.ones(1, 1, *spatial, dtype=torch.float64)
    for p in pools:
        if isinstance(p, _MAX_POOLS) and not bool((r == r.flatten()[0]).all()):
            return None
        r = p(r)
    return r.flatten()


def _gated_plan(head: nn.Module, acts_shape: torch.Size) -> tuple[list[nn.Module], list[nn.Module]] | None:
    """Split ``head`` into (poolings, MLP after Flatten) when it has the gated structure; a vector
    layer (P, C) (a network over features) has no pooling: the head is the MLP itself."""
    leaves = _leaves(head)
    if len(acts_shape) == 2:
        pools, mlp = [], [m for i, m in enumerate(leaves)
                          if not (isinstance(m, _IDENTITIES) and all(isinstance(x, _IDENTITIES) for x in leaves[:i]))]
    else:
        flat = next((i for i, m in enumerate(leaves) if isinstance(m, nn.Flatten)), None)
        if flat is None or len(acts_shape) != 4 or (leaves[flat].start_dim, leaves[flat].end_dim) != (1, -1):
            return None
        pools, mlp = leaves[:flat], leaves[flat + 1:]
    if not all(isinstance(m, _POOLS) for m in pools):
        return None
    allowed = (nn.Linear, nn.ReLU, nn.BatchNorm1d, *_IDENTITIES)
    if not mlp or not all(isinstance(m, allowed) for m in mlp) or not isinstance(mlp[0], nn.Linear):
        return None
    if any(isinstance(m, nn.BatchNorm1d) and not m.track_running_stats for m in mlp):
        return None
    return pools, mlp


def gated_jacobian(head: nn.Module, acts: torch.Tensor, pooling: Pooling, batch: int = 256) -> GatedJacobian | None:
    """The :class:`GatedJacobian` of ``head`` on ``acts`` (P, C, H, W), or None when the head is
    not pooling -> Flatten -> MLP (then use :func:`channel_jacobian`); on ``acts`` (P, C), an MLP."""
    plan = _gated_plan(head, acts.shape)
    if plan is None:
        return None
    pools, mlp = plan
    r = _ones_response(pools, acts.shape[2:])
    if r is None:
        return None
    c = acts.shape[1]
    first = mlp[0].weight.detach()
    if first.shape[1] != c * r.numel():
        return None
    scale = 1.0 if pooling == "sum" else 1.0 / acts[0, 0].numel()
    w1_bar = (first.double().view(first.shape[0], c, r.numel()) * r.to(first.device)).sum(2) * scale  # (D1, C)
    gates: list[list[torch.Tensor]] = [[] for m in mlp if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        for part in acts.split(batch):
            h = part
            for p in pools:
                h = p(h)
            h = h.flatten(1)
            relu = 0
            for m in mlp:
                h = m(h.clone() if isinstance(m, nn.ReLU) and m.inplace else h)
                if isinstance(m, nn.ReLU):
                    gates[relu].append(h > 0)  # autograd's ReLU backward passes where output > 0
                    relu += 1
    ops: list[tuple[str, object]] = []
    relu = len(gates)
    for m in reversed(mlp[1:]):
        if isinstance(m, nn.ReLU):
            relu -= 1
            ops.append(("gate", relu))
        elif isinstance(m, nn.Linear):
            ops.append(("linear", m.weight.detach()))
        elif isinstance(m, nn.BatchNorm1d):
            s = torch.rsqrt(m.running_var + m.eps)
            ops.append(("scale", (s * m.weight if m.affine else s).detach()))
    return GatedJacobian(w1_bar.to(first.dtype), tuple(ops), tuple(torch.cat(g) for g in gates))


def free_memory_bytes(device: torch.device) -> int:
    """Memory free on ``device`` now: CUDA's ``mem_get_info``, else the host's ``MemAvailable``."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in open("/proc/meminfo", encoding="ascii"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30  # not Linux: a conservative guess


def dense_limit(device: torch.device) -> int:
    """Largest dense Jacobian ``auto`` accepts: ``DENSE_LIMIT_BYTES`` when set, else half the free memory."""
    return DENSE_LIMIT_BYTES if DENSE_LIMIT_BYTES is not None else free_memory_bytes(device) // 2


def head_jacobian(head: nn.Module, acts: torch.Tensor, pooling: Pooling,
                  dense_limit_bytes: int | None = None) -> PooledJacobian:
    """The cheapest exact pooled Jacobian of ``head`` (in eval mode) over the pool ``acts``.

    Raises:
        JacobianError: the head is in training mode (dropout / batch statistics would make
            ``M`` random).
        JacobianTooLarge: it needs the dense form and that would exceed ``dense_limit_bytes``.
    """
    if any(m.training for m in head.modules() if isinstance(m, _STOCHASTIC)):
        raise JacobianError("the head must be in eval mode (dropout and batch norm make M random otherwise)")
    gated = gated_jacobian(head, acts, pooling)
    if gated is not None:
        return gated
    with torch.no_grad():
        d = head(acts[:1]).shape[1]
    need = acts.shape[0] * acts.shape[1] * d * acts.element_size()
    limit = dense_limit(acts.device) if dense_limit_bytes is None else dense_limit_bytes
    if need > limit:
        raise JacobianTooLarge(
            f"this head ({type(_leaves(head)[0]).__name__} above the layer) has no gated form, and its dense "
            f"pooled Jacobian would take {need / 2**30:.1f} GiB, more than the {limit / 2**30:.1f} GiB allowed "
            f"(half the free memory) ({acts.shape[0]} pool images x "
            f"{acts.shape[1]} channels x {d} features); set inject.solver: double_backprop or reduce "
            "inject.pool_size (inject.solver: auto falls back to double_backprop by itself)")
    return DenseJacobian(channel_jacobian(head, acts, pooling))

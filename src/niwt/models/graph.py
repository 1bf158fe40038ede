"""Generic trunk/head split of any traceable network at a named module, and the linearity of a head.

The built-in backbones (``smallcnn``, ``vgg16``, ``resnet101``) are chains of named ``nn.Sequential``
modules and split by slicing (:func:`niwt.models.networks.split_at`). Any other torchvision
classifier is split here with ``torch.fx`` through torchvision's own feature-extraction tracer
(``create_feature_extractor``, whose node names are the module names): the trunk is the traced
graph up to the layer's output, the head the same graph from that output on, with the layer's
output as its input. Both are ``GraphModule`` s sharing the network's modules (nothing copied).

:func:`nonlinearity_after` answers the question NIWT depends on: does anything nonlinear stand
between the layer and the logits? If not (global pooling + one linear layer, e.g. ResNet's last
stage), the layer's importance for class c is the same vector for every image (c's weight row,
pooled), and NIWT degenerates into regressing weight rows.
"""

from __future__ import annotations

import operator

import torch
from torch import fx, nn

from niwt.errors import InputError
from niwt.models.layout import MAP, Layout, pack_hwc, pack_tokens, unpack_hwc, unpack_tokens


class SplitError(InputError):
    """A network that cannot be cut at the requested module."""


def _strip(layer: str, prefix: str) -> str:
    return layer[len(prefix) + 1:] if prefix and layer.startswith(prefix + ".") else layer


def _trace(body: nn.Module, key: str) -> tuple[fx.GraphModule, fx.Node, fx.Node, fx.Node]:
    """Trace ``body`` (eval graph) returning the layer's node and the final output node.

    Returns:
        (graph module, input placeholder, the layer's output node, the body's output node).
    """
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    was_training = body.training
    body.eval()
    try:
        try:
            _, names = get_graph_node_names(body, suppress_diff_warning=True)
        except Exception as err:  # fx cannot trace data-dependent control flow
            raise SplitError(f"this network cannot be traced by torch.fx ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}); choose another architecture") from err
        modules = dict(body.named_modules())
        if key not in modules or key == "":
            raise SplitError(f"unknown layer {key!r}")
        if any(n == f"{key}_1" or n.startswith(f"{key}_1.") for n in names):
            raise SplitError(f"module {key!r} runs more than once in a forward pass (a shared module, e.g. "
                             "ResNet's per-block ReLU): its output is not one activation. Choose its block instead")
        if not any(n == key or n.startswith(f"{key}.") for n in names):
            raise SplitError(f"module {key!r} is not on the network's path (it never runs, or only as an identity "
                             "the tracer drops); choose a block that computes something")
        gm = create_feature_extractor(body, return_nodes={key: "layer", names[-1]: "out"},
                                      suppress_diff_warning=True)
    finally:
        body.train(was_training)
    gm.eval()
    graph = gm.graph
    output = next(n for n in graph.nodes if n.op == "output")
    outs = output.args[0]
    placeholder = next(n for n in graph.nodes if n.op == "placeholder")
    # the layer may be the body's last node itself (a ViT's ``heads``): then it is also the output
    return gm, placeholder, outs["layer"], outs.get("out", outs["layer"])


def fx_split(body: nn.Module, layer: str, prefix: str = "body",
             layout: Layout = MAP) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Cut ``body`` after module ``layer``: ``head(trunk(x)) == body(x)``.

    Args:
        layer: dotted module name, optionally starting with ``prefix`` (``body.layer4.0``).
        layout: the layer's layout: the trunk returns its output packed channels first
            (:func:`niwt.models.layout.pack`), the head unpacks it.

    Raises:
        SplitError: unknown or shared module, untraceable network, or a skip connection around the
            cut (something after the layer reads an activation from before it).
    """
    key = _strip(layer, prefix)
    gm, _, node, _ = _trace(body, key)
    graph = gm.graph
    output = next(n for n in graph.nodes if n.op == "output")
    if layout.kind != "map":
        with graph.inserting_before(output):
            node = graph.call_function(pack_hwc if layout.kind == "hwc" else pack_tokens, (node,))
    output.args = (node,)
    graph.eliminate_dead_code()
    trunk = fx.GraphModule(gm, graph, class_name="Trunk")

    gm, placeholder, node, final = _trace(body, key)
    graph = gm.graph
    with graph.inserting_after(placeholder):
        activation = graph.placeholder("activation")
    with graph.inserting_after(activation):
        # in-place ops right after the layer (ReLU(inplace=True)) must not touch the caller's tensor
        fresh = graph.call_method("clone", (activation,))
    if layout.kind != "map":
        with graph.inserting_after(fresh):
            fresh = (graph.call_function(unpack_hwc, (fresh,)) if layout.kind == "hwc"
                     else graph.call_function(unpack_tokens, (fresh, layout.prefix)))
    node.replace_all_uses_with(fresh)
    output = next(n for n in graph.nodes if n.op == "output")
    output.args = (fresh if final is node else final,)
    for check in [n for n in graph.nodes if n.op == "call_function" and n.target is torch._assert]:
        graph.erase_node(check)  # the input checks of the trunk (ViT's image size): kept only by their side effect
    graph.eliminate_dead_code()
    if placeholder.users:
        raise SplitError(f"layer {layer!r} is not a cut point: the network reads earlier activations after it "
                         "(a skip connection around it); choose a whole block, e.g. the residual unit")
    graph.erase_node(placeholder)
    head = fx.GraphModule(gm, graph, class_name="Head")
    return trunk, head


_AFFINE_MODULES = (nn.Linear, nn.Identity, nn.Flatten, nn.Unflatten, nn.modules.conv._ConvNd,
                   nn.modules.batchnorm._BatchNorm, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                   nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.modules.dropout._DropoutNd,
                   nn.ZeroPad2d, nn.ConstantPad2d)
_AFFINE_FUNCTIONS = {torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.cat, torch.mean, torch.sum,
                     torch.squeeze, torch.unsqueeze, torch.nn.functional.adaptive_avg_pool2d,
                     torch.nn.functional.avg_pool2d, torch.nn.functional.dropout, torch.nn.functional.linear,
                     torch.nn.functional.conv2d, torch.nn.functional.pad, operator.add, operator.iadd, operator.sub,
                     operator.isub, operator.neg, operator.getitem, torch.add, torch.sub, getattr,
                     pack_hwc, unpack_hwc, pack_tokens, unpack_tokens}
_AFFINE_METHODS = {"clone", "view", "reshape", "flatten", "permute", "transpose", "contiguous", "mean", "sum",
                   "size", "dim", "squeeze", "unsqueeze", "expand", "repeat", "add", "add_", "sub", "neg", "float",
                   "to", "type_as"}
_SCALINGS = {operator.mul, operator.imul, operator.truediv, operator.itruediv, torch.mul, "mul", "mul_", "div"}


def _affine_module(mod: nn.Module) -> bool:
    if isinstance(mod, _AFFINE_MODULES) or type(mod).__name__ == "Permute":  # torchvision.ops.misc.Permute
        return True
    if isinstance(mod, nn.Sequential):  # a leaf block of torchvision's tracer (Conv2dNormActivation)
        return all(_affine_module(m) for m in mod)
    return False


def _depends_on_input(arg: object) -> bool:
    return isinstance(arg, fx.Node) and arg.op not in ("get_attr",)


def nonlinearity_after(head: nn.Module) -> str | None:
    """The first nonlinear operation of ``head`` (layer activations -> penultimate features), or
    None when the head is affine (only pooling by averaging, flattening, linear/conv layers,
    eval-mode batch norm, dropout, sums): then the importance does not depend on the image.

    ``head`` is an fx ``GraphModule`` (from :func:`fx_split`) or any module ``torch.fx`` traces
    (the built-in backbones' ``nn.Sequential`` heads). An untraceable head counts as nonlinear.
    """
    if isinstance(head, nn.Sequential) and len(head) == 0:
        return None
    try:
        gm = head if isinstance(head, fx.GraphModule) else fx.symbolic_trace(head)
    except Exception as err:  # not traceable: cannot prove linearity
        return f"untraceable head ({type(err).__name__})"
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        if node.op == "call_module":
            mod = modules[node.target]
            if _affine_module(mod):
                continue
            return f"{node.target} ({type(mod).__name__})"
        target = node.target
        name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
        if target in _SCALINGS:
            if sum(_depends_on_input(a) for a in node.args) <= 1:
                continue
            return f"{node.name} (product of two activations)"
        if node.op == "call_function" and target in _AFFINE_FUNCTIONS:
            continue
        if node.op == "call_method" and target in _AFFINE_METHODS:
            continue
        return f"{node.name} ({name})"
    return None

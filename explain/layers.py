"""Layer discovery: which modules of a model can a map be made from?

A candidate target layer is a module, called exactly once per forward pass, whose output is a
spatial feature map ``[1, C, h, w]`` (or ``[1, h, w, C]`` for Swin), or a token sequence that
folds into a square grid (vision transformers). Discovery runs one forward pass on a blank input
*at load time*, before the model is shared, so temporary hooks there race with nobody.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import nn

Layout = Literal["nchw", "nhwc", "tokens"]

# Modules that may sit between a target layer and the classifier for CAM to be exact: CAM needs the
# logits to be one linear function of the spatial mean of the target activation.
_CAM_PASSTHROUGH = (nn.Flatten, nn.Dropout, nn.Identity)


@dataclass(frozen=True)
class LayerInfo:
    """One candidate target layer."""

    name: str
    shape: tuple[int, int, int]  # (C, h, w) of the spatial grid the map is made on
    layout: Layout
    prefix_tokens: int = 0  # class/distillation tokens dropped before folding tokens into a grid
    cam_linear: str | None = None  # name of the linear layer if CAM is exact at this layer
    cam_reason: str = ""  # why CAM is not exact here, in words
    #: Why maps here say nothing, when they cannot (e.g. only a vision transformer's class token
    #: leaves this layer for the classifier, so every map is zero by construction); "" otherwise.
    note: str = ""


#: The note of a transformer layer whose patch tokens never reach the classifier.
CLASS_TOKEN_ONLY = (
    "only the class token leaves this layer for the classifier (no attention mixes the patch tokens "
    "into it any more), so every map here is zero by construction; choose an earlier layer"
)


@dataclass
class LayerTable:
    """All candidate layers of a model, in forward order, and the recommended default."""

    layers: list[LayerInfo] = field(default_factory=list)
    default: str = ""

    def get(self, name: str) -> LayerInfo | None:
        for info in self.layers:
            if info.name == name:
                return info
        return None


# Modules that hand on their input unchanged in eval mode: a map there is the previous layer's map,
# and a tap on each would only slow every forward pass down (lite0 has ~75 of them).
_PASSTHROUGH_TYPES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_PASSTHROUGH_NAMES = frozenset({"Identity", "DropPath"})


def _is_passthrough(module: nn.Module, inputs: object, out: object) -> bool:
    if not (isinstance(module, _PASSTHROUGH_TYPES) or type(module).__name__ in _PASSTHROUGH_NAMES):
        return False
    return isinstance(inputs, tuple) and len(inputs) == 1 and inputs[0] is out


def _is_pool(module: nn.Module) -> bool:
    return isinstance(module, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))


def _is_global_avg_pool(module: nn.Module) -> bool:
    if isinstance(module, nn.AdaptiveAvgPool2d):
        size = module.output_size
        return size in (1, (1, 1), [1, 1])
    # timm's SelectAdaptivePool2d wraps one; only its "avg" type is an average.
    pool_type = getattr(module, "pool_type", None)
    return type(module).__name__ == "SelectAdaptivePool2d" and pool_type == "avg"


def _token_grid(n_tokens: int) -> tuple[int, int] | None:
    """(prefix tokens, side) if ``n_tokens`` is a square grid plus 0–2 class-like tokens."""
    for prefix in (1, 0, 2):
        side = math.isqrt(n_tokens - prefix) if n_tokens > prefix else 0
        if side >= 2 and side * side == n_tokens - prefix:
            return prefix, side
    return None


def _layout_of(root: nn.Module, name: str, out: torch.Tensor) -> Layout | None:
    """Interpret one module output; ``None`` if it is not a spatial map."""
    if out.dim() == 4:
        if type(root).__name__ == "SwinTransformer" and (name == "norm" or name.startswith("features")):
            # torchvision's Swin keeps stages channels-last; only the patch-embedding conv is NCHW.
            return "nchw" if name == "features.0.0" else "nhwc"
        return "nchw"
    if out.dim() == 3 and _token_grid(out.shape[1]) is not None:
        return "tokens"
    return None


def to_grid(t: torch.Tensor, info: LayerInfo) -> torch.Tensor:
    """Reshape a layer output (or its gradient) of batch B to ``[B, C, h, w]``."""
    if info.layout == "nchw":
        return t
    if info.layout == "nhwc":
        return t.permute(0, 3, 1, 2)
    c, h, w = info.shape
    return t[:, info.prefix_tokens :, :].reshape(t.shape[0], h, w, c).permute(0, 3, 1, 2)


def discover(root: nn.Module, example: torch.Tensor) -> LayerTable:
    """Run one forward pass with temporary hooks and list the candidate layers.

    Must be called on a model that nobody else is using yet (e.g. right after loading).
    """
    names = {m: n for n, m in root.named_modules() if n}
    calls: dict[str, int] = {}
    outputs: dict[str, torch.Tensor] = {}
    completion: list[str] = []
    leaf_calls: list[str] = []
    passthrough: set[str] = set()
    children = {n for n, m in root.named_modules() if n and not list(m.children())}

    def hook(module: nn.Module, inp: object, out: object) -> None:
        name = names[module]
        if _is_passthrough(module, inp, out):
            passthrough.add(name)
        calls[name] = calls.get(name, 0) + 1
        completion.append(name)
        if name in children:
            leaf_calls.append(name)
        if isinstance(out, torch.Tensor):
            outputs[name] = out

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.no_grad():
            root(example)
    finally:
        for h in handles:
            h.remove()

    modules = dict(root.named_modules())
    table = LayerTable()
    seen: set[str] = set()
    for name in completion:
        if name in seen or calls.get(name) != 1 or name not in outputs or name in passthrough:
            continue
        seen.add(name)
        out = outputs[name]
        layout = _layout_of(root, name, out)
        if layout is None:
            continue
        prefix = 0
        if layout == "nchw":
            c, h, w = out.shape[1:]
        elif layout == "nhwc":
            h, w, c = out.shape[1:]
        else:
            prefix, side = _token_grid(out.shape[1])  # type: ignore[misc]
            c, h, w = out.shape[2], side, side
        if h * w < 2:
            continue
        cam_linear, reason = _cam_head(name, leaf_calls, completion, modules, int(c))
        table.layers.append(
            LayerInfo(name, (int(c), int(h), int(w)), layout, prefix, cam_linear, reason)
        )
    tokens = [i.name for i in table.layers if i.layout == "tokens"]
    if tokens:
        dead = _class_token_only(root, example, tokens, {n: m for m, n in names.items()}, table)
        table.layers = [replace(i, note=CLASS_TOKEN_ONLY) if i.name in dead else i for i in table.layers]
    table.default = _default_layer(root, table, outputs, modules)
    return table


def _class_token_only(root: nn.Module, example: torch.Tensor, candidates: list[str],
                      modules: dict[str, nn.Module], table: LayerTable) -> set[str]:
    """Token layers whose patch tokens get no gradient from the features the classifier reads.

    One forward and backward pass at load time (before the model is shared). The gradient is
    taken of the input of the last linear layer, not of the logits: a freshly initialised
    torchvision ViT has an all-zero head, which would make every layer look dead.
    """
    outs: dict[str, torch.Tensor] = {}
    head_in: list[torch.Tensor] = []
    last_linear = [m for m in root.modules() if isinstance(m, nn.Linear)][-1:]

    def keep(name: str):
        def hook(_m: nn.Module, _i: object, out: object) -> None:
            if isinstance(out, torch.Tensor) and name not in outs:
                outs[name] = out
        return hook

    def keep_input(_m: nn.Module, inp: object) -> None:
        if isinstance(inp, tuple) and inp and isinstance(inp[0], torch.Tensor):
            head_in[:] = [inp[0]]

    handles = [modules[n].register_forward_hook(keep(n)) for n in candidates]
    handles += [m.register_forward_pre_hook(keep_input) for m in last_linear]
    try:
        with torch.enable_grad():
            x = example.detach().clone().normal_(generator=torch.Generator(device=example.device).manual_seed(0))
            x.requires_grad_(True)
            logits = root(x)
            target = head_in[0] if head_in else logits
            live = [n for n in candidates if n in outs and outs[n].requires_grad]
            if not live or not target.requires_grad:
                return set()
            weights = torch.randn(target.shape, generator=torch.Generator().manual_seed(0)).to(target)
            grads = torch.autograd.grad((target * weights).sum(), [outs[n] for n in live], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    dead: set[str] = set()
    for name, g in zip(live, grads):
        info = table.get(name)
        patches = None if g is None else g[:, info.prefix_tokens :] if info is not None else g
        if patches is None or not bool((patches != 0).any()):
            dead.add(name)
    return dead


def _cam_head(
    name: str,
    leaf_calls: list[str],
    completion: list[str],
    modules: dict[str, nn.Module],
    channels: int,
) -> tuple[str | None, str]:
    """Is the rest of the network after ``name`` global average pooling + one linear layer?"""
    end = completion.index(name)
    done_before = set(completion[: end + 1])
    after = [n for n in leaf_calls if n not in done_before and not n.startswith(name + ".")]
    saw_pool = False
    for i, leaf in enumerate(after):
        mod = modules[leaf]
        if _is_global_avg_pool(mod) and not saw_pool:
            saw_pool = True
        elif isinstance(mod, _CAM_PASSTHROUGH) or type(mod).__name__ == "Permute":
            continue
        elif isinstance(mod, nn.Linear) and i == len(after) - 1:
            if not saw_pool:
                return None, (
                    "the model pools this layer with code that is not a module (e.g. a functional "
                    "ReLU or pooling), so its head is not plain global average pooling + one linear layer"
                )
            if mod.in_features == channels:
                return leaf, ""
            return None, f"the linear layer '{leaf}' does not read this layer's {channels} channels"
        else:
            what = type(mod).__name__
            return None, (
                f"after this layer the model runs '{leaf}' ({what}), so its scores are not one "
                "linear layer applied to globally averaged features"
            )
    return None, "no global average pooling followed by a single linear layer comes after this layer"


def _default_layer(
    root: nn.Module,
    table: LayerTable,
    outputs: dict[str, torch.Tensor],
    modules: dict[str, nn.Module],
) -> str:
    """The last spatial feature map before global pooling.

    Walk back from the last candidate past pooling layers and containers that merely hand on a
    pooling layer's output (VGG's ``features`` ends in a max-pool), and for transformers pick the
    norm before the last attention block, whose patch tokens still receive gradient.
    """
    if not table.layers:
        return ""
    if table.layers[-1].layout == "tokens":
        norms = [i.name for i in table.layers if i.layout == "tokens" and i.name.endswith("ln_1")]
        if norms:
            return norms[-1]
    pooled = {id(out) for n, out in outputs.items() if _is_pool(modules[n])}
    for info in reversed(table.layers):
        if _is_pool(modules[info.name]) or id(outputs[info.name]) in pooled:
            continue
        return _outermost_alias(info.name, table, outputs)
    return table.layers[-1].name


def _outermost_alias(name: str, table: LayerTable, outputs: dict[str, torch.Tensor]) -> str:
    """Prefer ``layer4`` to ``layer4.1``: a container returning its last child's very tensor."""
    best = name
    for info in table.layers:
        if info.name != name and name.startswith(info.name + ".") and outputs[info.name] is outputs[name]:
            if len(info.name) < len(best):
                best = info.name
    return best

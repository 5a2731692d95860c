"""The part of a network above one layer, as its own module (Ablation-CAM's economy).

``upper(model, layer)`` traces the model once with ``torch.fx`` (the layer kept as one call) and
keeps only the nodes that follow the layer: a module that maps the layer's output to the logits,
so that ablated activations need not run the layers below again. Returns ``None`` (and the caller
falls back to full forward passes) where the model does not trace, or where something above the
layer also reads a value computed below it (a skip connection around the layer).

The returned module shares the model's submodules (read only; nothing is copied or changed).
Tracing patches ``nn.Module.__call__`` process-wide for its duration, so it runs with the
engine's forward gate held exclusively.
"""

from __future__ import annotations

import threading
import weakref
from typing import Callable

import torch
from torch import fx, nn

from .model import FORWARD_GATE, Model

_CACHE: "weakref.WeakKeyDictionary[Model, dict[str, tuple[Callable | None, str]]]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


class _NeedsBelow(Exception):
    """A node above the layer reads the network's input (or a value computed from it)."""


class _KeepLayer(fx.Tracer):
    """Traces only the forward code of the layer's ancestors: every other submodule (the layer
    itself included) stays one call, so code that does not trace (timm's dynamic "same" padding,
    say) is never traced, and the graph is as small as it can be."""

    def __init__(self, layer: str) -> None:
        super().__init__()
        self.layer = layer

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return not self.layer.startswith(qualified_name + ".")


def upper(model: Model, layer: str) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, str]:
    """``(module, "")`` mapping ``layer``'s output to the logits, or ``(None, why)``; cached."""
    with _LOCK:
        per_model = _CACHE.setdefault(model, {})
        if layer not in per_model:
            per_model[layer] = _build(model, layer)
        return per_model[layer]


def _build(model: Model, layer: str) -> tuple[Callable | None, str]:
    try:
        with FORWARD_GATE.exclusive():
            graph = _KeepLayer(layer).trace(model.module)
    except Exception as e:  # any trace failure means "run the full network instead"
        return None, f"{type(model.module).__name__} does not trace with torch.fx ({type(e).__name__})"
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == layer]
    if len(calls) != 1:
        return None, f"layer '{layer}' is called {len(calls)} times in the traced graph"
    new = fx.Graph()
    env: dict[fx.Node, fx.Node] = {calls[0]: new.placeholder("activation")}

    def bring(node: fx.Node) -> fx.Node:
        # Values above the layer that do not depend on the input (parameters, constants) are copied.
        if node in env:
            return env[node]
        if node.op == "placeholder":
            raise _NeedsBelow
        for dep in node.all_input_nodes:
            bring(dep)
        env[node] = new.node_copy(node, lambda n: env[n])
        return env[node]

    nodes = list(graph.nodes)
    output = next(n for n in nodes if n.op == "output")
    try:
        bring(output)
    except _NeedsBelow:
        return None, f"a layer above '{layer}' also reads a value computed below it"
    module = fx.GraphModule(model.module, new, class_name="Upper")
    module.training = False  # its own flag only: .eval() would write to the shared submodules too
    return module, ""

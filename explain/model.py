"""A loaded classifier, shareable between threads, and the one forward pass an explanation needs.

Data flow: image → :class:`~explain.preprocess.Preprocess` → model → *target layer* → activation and
(batched) gradients, kept in a :class:`Capture` → map (``explain.methods``) → normalise / upsample /
colour (``explain.render``).

Sharing rules: ``Model.module`` is used by many sessions at once, so nothing here mutates it after
construction. Every candidate layer's ``forward`` is wrapped once in an inert *tap* when the model
is built, before anybody shares it; a tap does nothing unless the *calling thread* has asked for
that layer through a context variable. So there are no hooks at all, no toggling of anything, no
``requires_grad`` change and no ``.grad`` written while explaining, and concurrent threads never
see each other's requests.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import hashlib
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import torch
from PIL import Image
from torch import nn

from .errors import ExplainError, UnknownClassError, UnknownLayerError
from .layers import LayerInfo, LayerTable, discover, to_grid
from .families import COLOUR_SAMPLE, GREY_SAMPLE
from .preprocess import Fit, Preprocess

#: The one name of "the input pixels" as a capture layer (methods with ``on_input``).
INPUT_LAYER = "input"
#: Std of the normal draw for parameters of modules without ``reset_parameters`` (position
#: embeddings, class tokens, layer-scale vectors) when a copy of the model is randomised: the
#: truncated-normal scale timm and torchvision use for them.
FALLBACK_INIT_STD = 0.02


@dataclass
class _TapRequest:
    module: nn.Module
    leaf: torch.Tensor | None = None
    #: When set, the tap hands on ``replace(output)`` instead of making a leaf (Ablation-CAM's
    #: full-pass fallback: the layer's output with channels zeroed).
    replace: Callable[[torch.Tensor], torch.Tensor] | None = None
    done: bool = False


_ACTIVE_TAP: contextvars.ContextVar[_TapRequest | None] = contextvars.ContextVar(
    "cam_explorer_tap", default=None
)


class _Gate:
    """Readers–writer gate around every forward pass the engine runs.

    ``torch.fx`` tracing (Ablation-CAM's split of a model at its target layer) patches
    ``nn.Module.__call__`` for the whole process while it runs; a forward pass of another thread in
    that moment would be recorded into the trace (or fail). Forwards hold the gate shared (many at
    once); a trace holds it alone, once per (model, layer).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._readers:
                self._cond.wait()
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


#: The one gate of the process (see :class:`_Gate`).
FORWARD_GATE = _Gate()


class _Tap:
    """The inert tap around one candidate layer's ``forward``, installed once when the model is built.

    It acts only for the thread whose context requested its module: the layers below ran under
    ``no_grad``, and the graph starts here, at a fresh leaf, so a backward pass stops at the target
    layer. A wrapped ``forward`` rather than a forward hook: with any hook registered, PyTorch
    takes its slow call path for that module (~5 µs each, ~5% of a lite0 forward over 155
    layers); the wrapper costs about a fifth of that.
    """

    def __init__(self, forward: Callable[..., object]) -> None:
        self.forward = forward  # the module's own bound forward (deep copies rebind it)

    def __call__(self, *args: object, **kwargs: object) -> object:
        output = self.forward(*args, **kwargs)
        request = _ACTIVE_TAP.get()
        if request is None or request.leaf is not None or request.module is not self.forward.__self__:
            return output
        assert isinstance(output, torch.Tensor)
        if request.replace is not None:
            if request.done:
                return output
            request.done = True
            return request.replace(output)
        leaf = output.detach().requires_grad_(True)
        request.leaf = leaf
        torch.set_grad_enabled(True)  # thread-local; restored by Model.capture
        # A clone, so that in-place layers downstream (ReLU(inplace), `out += identity`) neither
        # fail on a leaf nor alter the activation we keep.
        return leaf.clone()


def install_taps(module: nn.Module, names: Iterable[str]) -> None:
    """Wrap the ``forward`` of each named submodule in an inert :class:`_Tap` (before sharing it)."""
    modules = dict(module.named_modules())
    for name in names:
        sub = modules[name]
        if not isinstance(sub.__dict__.get("forward"), _Tap):
            sub.forward = _Tap(sub.forward)


def tapped(module: nn.Module) -> list[str]:
    """Names of the submodules that carry a tap."""
    return [n for n, sub in module.named_modules() if isinstance(sub.__dict__.get("forward"), _Tap)]


def strip_taps(module: nn.Module) -> nn.Module:
    """Remove the taps from ``module`` (meant for a private deep copy); returns it."""
    for sub in module.modules():
        if isinstance(sub.__dict__.get("forward"), _Tap):
            del sub.__dict__["forward"]
    return module


def plain_copy(module: nn.Module) -> nn.Module:
    """A private deep copy of a (shared) module without the engine's taps."""
    return strip_taps(copy.deepcopy(module))


def tensor_bytes(value: object) -> int:
    """Bytes of the tensors in ``value`` (a tensor, or a tuple/list/dict of them); 0 for anything else."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(tensor_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    return 0


class _Extras(dict):
    """A capture's per-method caches (e.g. Score-CAM's channel scores); every tensor put in is
    charged to the capture, so the model's byte budget sees it."""

    def __init__(self, owner: "Capture") -> None:
        super().__init__()
        self._owner = weakref.ref(owner)

    def __setitem__(self, key: str, value: object) -> None:
        owner = self._owner()
        if owner is None:
            super().__setitem__(key, value)
            return
        with owner._lock:
            old = tensor_bytes(self.get(key))
            super().__setitem__(key, value)
            owner._grow(tensor_bytes(value) - old)
            owner._trim()


class Capture:
    """One forward pass of one image, kept: the target activation, logits and the head's graph.

    Gradients of any set of classes come from one batched backward pass through the retained head
    graph, and are cached per class, so a new class, method or colour never repeats the forward.
    What a capture accumulates later (per-class gradients, method extras) is charged to the model's
    capture budget as it grows; its per-class gradients are trimmed, least recently asked first,
    when the capture alone would outgrow the budget (they are recomputable).
    """

    def __init__(
        self,
        layer: LayerInfo | None,
        inputs: torch.Tensor,
        logits: torch.Tensor,
        leaf: torch.Tensor,
    ) -> None:
        self.layer = layer
        self.input = inputs.detach()
        self.logits = logits  # [1, N], carries the graph back to ``leaf``
        self.probs = torch.softmax(logits.detach()[0].float(), dim=0)
        self._leaf = leaf
        grid = to_grid(leaf.detach(), layer) if layer is not None else leaf.detach()
        self.activation = grid[0]  # [C, h, w]
        self._grads: OrderedDict[int, torch.Tensor] = OrderedDict()  # least recently asked first
        self._lock = threading.RLock()
        self.extras: dict[str, object] = _Extras(self)  # per-method caches (e.g. Score-CAM channel scores)
        self.cost = 0  # bytes charged to the model's capture budget (changed under the model's lock)
        self._held = 0  # bytes of the cached gradients and extras
        self._limit: int | None = None  # most bytes this capture may hold in all (the model's budget)
        self._charge: weakref.WeakMethod | None = None  # the model's accounting, while it caches us
        self._key: tuple | None = None  # its key in the model's cache

    @property
    def layer_name(self) -> str:
        return self.layer.name if self.layer is not None else INPUT_LAYER

    @property
    def layer_output(self) -> torch.Tensor:
        """The target layer's output ``[1, ...]`` in its own layout (tokens stay tokens), detached."""
        return self._leaf.detach()

    def gradients(self, classes: Sequence[int]) -> torch.Tensor:
        """d logit[c] / d activation for each class, ``[K, C, h, w]``, one backward for the new ones."""
        with self._lock:
            missing = list(dict.fromkeys(c for c in classes if c not in self._grads))
            if missing:
                n = self.logits.shape[1]
                onehot = torch.zeros(len(missing), 1, n, device=self.logits.device, dtype=self.logits.dtype)
                onehot[torch.arange(len(missing)), 0, torch.tensor(missing)] = 1.0
                grads = self._batched_grad(onehot)
                grid = to_grid(grads.flatten(0, 1), self.layer) if self.layer is not None else grads.flatten(0, 1)
                added = 0
                for i, c in enumerate(missing):
                    # Each class in storage of its own when several came together: dropping one
                    # from the cache then really frees its bytes.
                    g = grid[i].detach() if len(missing) == 1 else grid[i].detach().clone()
                    self._grads[c] = g
                    added += tensor_bytes(g)
                self._grow(added)
            for c in classes:
                self._grads.move_to_end(c)
            out = torch.stack([self._grads[c] for c in classes])
            self._trim()
            return out

    def _grow(self, delta: int) -> None:
        """Record ``delta`` more bytes held (caller holds ``_lock``) and charge them to the model."""
        if delta == 0:
            return
        self._held += delta
        charge = self._charge() if self._charge is not None else None
        if charge is not None:
            charge(self, delta)

    def _trim(self) -> None:
        """Drop least recently asked gradients while this capture alone holds more than the budget."""
        if self._limit is None:
            return
        freed = 0
        base = self.nbytes() + self._graph
        while self._grads and base + self._held - freed > self._limit:
            _c, g = self._grads.popitem(last=False)
            freed += tensor_bytes(g)
        self._grow(-freed)

    def forget_gradients(self) -> None:
        """Drop the cached per-class gradients (the next request runs the backward again)."""
        with self._lock:
            freed = sum(tensor_bytes(g) for g in self._grads.values())
            self._grads.clear()
            self._grow(-freed)

    def held_bytes(self) -> int:
        """Bytes of everything this capture accumulated after its forward pass (gradients, extras)."""
        return self._held

    def row_gradients(self, rows: torch.Tensor) -> torch.Tensor:
        """Gradients of ``rows @ logits`` (``rows`` ``[K, N]``: any mix of classes, e.g. a +1/−1 row
        for "A rather than B" or Finer-CAM's weighted row) as ``[K, C, h, w]``; one batched backward,
        not cached."""
        with self._lock:
            grads = self._batched_grad(rows.to(self.logits.device, self.logits.dtype)[:, None, :])
        return to_grid(grads.flatten(0, 1), self.layer) if self.layer is not None else grads.flatten(0, 1)

    def _batched_grad(self, onehot: torch.Tensor) -> torch.Tensor:
        try:
            (g,) = torch.autograd.grad(
                self.logits, self._leaf, grad_outputs=onehot, retain_graph=True, is_grads_batched=True
            )
            return g
        except RuntimeError:
            # Some heads have ops without a batching rule; one backward per class is still exact.
            parts = [
                torch.autograd.grad(self.logits, self._leaf, grad_outputs=o, retain_graph=True)[0]
                for o in onehot
            ]
            return torch.stack(parts)

    def set_extra(self, key: str, value: object) -> None:
        """Keep a per-method result with this capture (e.g. Score-CAM's masked-pass scores); charged
        to the model's capture budget like the gradients."""
        self.extras[key] = value

    _graph = 0  # estimated bytes of the retained graph above the layer (set by the model)

    def nbytes(self) -> int:
        """Estimated bytes of the forward pass's own tensors (activation, its copies, the input)."""
        return int(self.activation.numel() * self.activation.element_size() * 4 + self.input.numel() * 4)


class BatchCapture:
    """One forward pass of a batch of independent pictures, held only while the batch is worked on.

    ``activation`` is ``[B, C, h, w]``; :meth:`gradients` takes one class per picture and returns
    ``[B, C, h, w]`` from ONE backward pass (in eval mode the pictures do not interact, so the
    gradient of the sum of each picture's own logit is each picture's own gradient).
    :meth:`picture` hands one picture to the methods of :mod:`explain.methods` exactly as
    :meth:`Model.capture` would have, so their maps equal ``explain()``'s.
    """

    def __init__(self, layer: LayerInfo | None, inputs: torch.Tensor, logits: torch.Tensor, leaf: torch.Tensor) -> None:
        self.layer = layer
        self.input = inputs.detach()
        self.logits = logits  # [B, N], carries the graph back to ``leaf``
        self.probs = torch.softmax(logits.detach().float(), dim=1)
        self._leaf = leaf
        self.activation = to_grid(leaf.detach(), layer) if layer is not None else leaf.detach()

    def gradients(self, classes: Sequence[int]) -> torch.Tensor:
        """d logit[b, classes[b]] / d activation[b] for every picture b, ``[B, C, h, w]``."""
        b, n = self.logits.shape
        onehot = torch.zeros(b, n, device=self.logits.device, dtype=self.logits.dtype)
        onehot[torch.arange(b), torch.as_tensor(list(classes), dtype=torch.long)] = 1.0
        (g,) = torch.autograd.grad(self.logits, self._leaf, grad_outputs=onehot)
        return to_grid(g, self.layer) if self.layer is not None else g

    def picture(self, index: int, cls: int, grads: torch.Tensor | None) -> Capture:
        """Picture ``index`` as a :class:`Capture` whose gradients for ``cls`` are ``grads[index]``."""
        cap = Capture.__new__(Capture)
        cap.layer = self.layer
        cap.input = self.input[index : index + 1]
        cap.logits = self.logits.detach()[index : index + 1]
        cap.probs = self.probs[index]
        cap._leaf = None
        cap.activation = self.activation[index]
        cap._grads = OrderedDict() if grads is None else OrderedDict({int(cls): grads[index].detach()})
        cap.extras = {}  # not cached by the model: nothing to charge
        cap._lock = threading.RLock()
        cap.cost = cap._held = 0
        cap._limit = cap._charge = cap._key = None
        return cap


@dataclass
class ModelStats:
    """Counters a test or a benchmark can read (never reset by the engine)."""

    forward_passes: int = 0
    captures: int = 0
    capture_hits: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)


class Model:
    """A classifier ready to explain: module (eval mode, shared), categories, preprocessing, layers."""

    def __init__(
        self,
        name: str,
        module: nn.Module,
        categories: Sequence[str],
        preprocess: Preprocess,
        *,
        device: str | torch.device | None = None,
        source: str = "",
        freeze: bool = True,
        capture_cache: int = 8,
        capture_budget_mb: float = 256.0,
        default_sample: str | None = None,
        default_layer: str | None = None,
    ) -> None:
        self.name = name
        self.source = source
        self.device = torch.device(device) if device is not None else _default_device()
        module = module.to(self.device).eval()
        if freeze:
            # Done once, before the model is shared: gradients are only ever taken with respect to
            # activations and inputs.
            for p in module.parameters():
                p.requires_grad_(False)
        self.module = module
        self.categories = list(categories)
        self.preprocess = preprocess
        example = torch.zeros(1, preprocess.in_channels, preprocess.input_size, preprocess.input_size, device=self.device)
        with FORWARD_GATE.shared():
            self._table: LayerTable = discover(module, example)
        if default_layer is not None and self._table.get(default_layer) is None:
            raise ExplainError(f"Model '{name}' declares default layer '{default_layer}', which is no candidate layer.")
        self._default_layer = default_layer
        #: The sample photo the dashboard starts with for this model (a digit for greyscale input).
        self.default_sample = default_sample or (GREY_SAMPLE if preprocess.in_channels == 1 else COLOUR_SAMPLE)
        with torch.no_grad(), FORWARD_GATE.shared():
            out = module(example)
        if out.ndim != 2 or out.shape[1] != len(self.categories):
            raise ExplainError(
                f"Model '{name}' outputs {tuple(out.shape)} scores but has {len(self.categories)} category "
                "names; give one name per output class."
            )
        self._modules = dict(module.named_modules())  # looked up on every capture
        install_taps(module, [i.name for i in self._table.layers])
        self.stats = ModelStats()
        self._captures: OrderedDict[tuple, Capture] = OrderedDict()
        self._capture_limit = capture_cache
        # Memory a kept capture holds: its activation plus the graph retained above it (estimated
        # from the layer outputs that follow it; all of them for an input-gradient capture).
        self._capture_budget = int(capture_budget_mb * 2**20)
        sizes = [4 * i.shape[0] * i.shape[1] * i.shape[2] for i in self._table.layers]
        self._graph_bytes = {i.name: sum(sizes[k:]) for k, i in enumerate(self._table.layers)}
        self._graph_bytes[INPUT_LAYER] = sum(sizes)
        self._cached_bytes = 0
        self._cache_lock = threading.Lock()
        self._key_locks: dict[tuple, threading.Lock] = {}
        self._input_keys: dict[int, tuple[str, int]] = {}  # id(tensor) -> (view key, tensor version)

    # ---- description -------------------------------------------------------------------------
    def submodule(self, name: str) -> nn.Module:
        """The submodule called ``name`` (read-only use: the module is shared)."""
        return self._modules[name]

    def layers(self) -> list[tuple[str, tuple[int, ...]]]:
        """Candidate target layers in forward order, each with its ``(C, h, w)`` map grid shape."""
        return [(i.name, i.shape) for i in self._table.layers]

    @property
    def default_layer(self) -> str:
        """Recommended target layer: the model's declared one, else the last spatial feature map
        before global pooling."""
        return self._default_layer or self._table.default

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def layer_info(self, layer: str | None) -> LayerInfo:
        """Details of a candidate layer; ``None`` means the default. Unknown names are an error."""
        name = layer or self.default_layer
        info = self._table.get(name)
        if info is None:
            names = [i.name for i in self._table.layers]
            few = ", ".join(names[-5:])
            raise UnknownLayerError(
                f"Model '{self.name}' has no candidate layer '{name}'. Valid layers include: {few} "
                f"({len(names)} in all; default '{self.default_layer}')."
            )
        return info

    def class_index(self, target: int | str) -> int:
        """Validate a class given as index or (case-insensitive) category name."""
        if isinstance(target, str):
            key = target.strip().lower()
            if key.isdigit():
                return self.class_index(int(key))
            for i, c in enumerate(self.categories):
                if c.lower() == key:
                    return i
            raise UnknownClassError(f"Model '{self.name}' has no class named {target!r}.")
        try:
            index = int(target)  # numpy and torch integers too
        except (TypeError, ValueError):
            raise UnknownClassError(f"A class must be an index or a name, not {target!r}.") from None
        if not 0 <= index < self.num_classes:
            raise UnknownClassError(
                f"Class index {index} is out of range: model '{self.name}' has classes 0–{self.num_classes - 1}."
            )
        return index

    # ---- computation -------------------------------------------------------------------------
    def view_and_tensor(self, image: Image.Image, fit: Fit = "squash", polarity: str = "auto") -> tuple[Image.Image, torch.Tensor]:
        """The model's view of ``image`` (PIL) and its normalised input tensor on the model's device.

        ``polarity`` (greyscale models): how the picture is drawn, ``"auto"`` to read it from the
        picture (see :meth:`Preprocess.read`).
        """
        view = self.preprocess.view(image, fit)
        reading = self.preprocess.read(view, polarity)
        x = self.preprocess.to_tensor(view, reading).to(self.device)
        # The tensor is a pure function of the 8-bit view (the preprocessing is fixed per model), so
        # the view's bytes (4× fewer than the float tensor's) key the capture cache. Remembered by
        # the tensor's identity and version: an in-place change falls back to hashing the tensor.
        key = "v" + hashlib.sha256(view.tobytes()).hexdigest()[:32] + f"{view.mode}{view.size}{tuple(x.shape)}"
        if self.preprocess.flips(reading):
            key += "~flipped"  # the same view read the other way round is another input
        self._input_keys[id(x)] = (key, x._version)
        weakref.finalize(x, self._input_keys.pop, id(x), None)
        return view, x

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[B, N]`` of a normalised batch; a plain no-grad forward."""
        with torch.no_grad(), FORWARD_GATE.shared():
            logits = self.module(batch.to(self.device))
        self.stats.add(forward_passes=1)
        return torch.softmax(logits.float(), dim=1)

    def logits_with_grad(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, N]`` of ``batch`` with autograd on, for gradients with respect to the input
        (the parameters are frozen, so nothing is written to the shared model)."""
        with torch.enable_grad(), FORWARD_GATE.shared():
            logits = self.module(batch)
        self.stats.add(forward_passes=1)
        return logits

    def capture(self, inputs: torch.Tensor, layer: str | None) -> Capture:
        """The (cached) capture of one input tensor at one layer; ``INPUT_LAYER`` for input gradients."""
        layer_name = INPUT_LAYER if layer == INPUT_LAYER else self.layer_info(layer).name
        known = self._input_keys.get(id(inputs))
        digest = known[0] if known is not None and known[1] == inputs._version else _digest(inputs)
        key = (digest, layer_name)
        with self._cache_lock:
            hit = self._captures.get(key)
            if hit is not None:
                self._captures.move_to_end(key)
                self.stats.add(capture_hits=1)
                return hit
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        try:
            with key_lock:  # two sessions asking for the same capture wait for one forward pass
                with self._cache_lock:
                    hit = self._captures.get(key)
                if hit is not None:
                    self.stats.add(capture_hits=1)
                    return hit
                if layer_name == INPUT_LAYER:
                    cap = self._forward_input(inputs)
                else:
                    cap = self._forward_layer(inputs, layer_name)
                cap._graph = self._graph_bytes.get(layer_name, 0)
                cap._limit = self._capture_budget
                with self._cache_lock:
                    cap.cost = cap.nbytes() + cap._graph + cap.held_bytes()
                    cap._key = key
                    cap._charge = weakref.WeakMethod(self._charge_capture)
                    self._captures[key] = cap
                    self._cached_bytes += cap.cost
                    self._evict_locked()
        finally:
            # Also when the forward pass raised: no lock is left behind per failed key.
            with self._cache_lock:
                self._key_locks.pop(key, None)
        return cap

    def _evict_locked(self) -> None:
        """Evict least recently used captures (caller holds ``_cache_lock``); the newest always stays."""
        while len(self._captures) > 1 and (
            len(self._captures) > self._capture_limit or self._cached_bytes > self._capture_budget
        ):
            _k, old = self._captures.popitem(last=False)
            self._cached_bytes -= old.cost

    def _charge_capture(self, cap: Capture, delta: int) -> None:
        """A kept capture grew (or shrank) by ``delta`` bytes: count them, evict on the new total."""
        with self._cache_lock:
            key = cap._key
            if key is None or self._captures.get(key) is not cap:
                return  # already evicted: its bytes are no longer the cache's
            cap.cost += delta
            self._cached_bytes += delta
            if delta > 0:
                self._captures.move_to_end(key)  # it is in use right now
                self._evict_locked()

    def _forward_layer(self, inputs: torch.Tensor, layer_name: str) -> Capture:
        info = self.layer_info(layer_name)
        target = self._modules[layer_name]
        request = _TapRequest(target)
        token = _ACTIVE_TAP.set(request)
        grad_mode = torch.is_grad_enabled()
        try:
            torch.set_grad_enabled(False)
            with FORWARD_GATE.shared():
                logits = self.module(inputs)
        finally:
            torch.set_grad_enabled(grad_mode)
            _ACTIVE_TAP.reset(token)
        self.stats.add(forward_passes=1, captures=1)
        if request.leaf is None:
            raise ExplainError(f"Layer '{layer_name}' did not run in the forward pass of '{self.name}'.")
        return Capture(info, inputs, logits, request.leaf)

    def _forward_input(self, inputs: torch.Tensor) -> Capture:
        x = inputs.detach().clone().requires_grad_(True)
        with torch.enable_grad(), FORWARD_GATE.shared():
            logits = self.module(x)
        self.stats.add(forward_passes=1, captures=1)
        return Capture(None, x, logits, x)

    def capture_batch(self, inputs: torch.Tensor, layer: str | None) -> "BatchCapture":
        """One *uncached* forward pass of a batch ``[B, C, H, W]``, captured at ``layer``.

        For audits of many pictures: nothing is kept by the model (each batch is seen once), the
        same inert tap as :meth:`capture` starts the graph at the target layer, and
        :meth:`BatchCapture.gradients` gives every picture's gradient of its own class from one
        backward pass through the head. ``INPUT_LAYER`` captures input gradients (saliency).
        """
        inputs = inputs.to(self.device)
        if layer == INPUT_LAYER:
            x = inputs.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                logits = self.module(x)
            self.stats.add(forward_passes=1)
            return BatchCapture(None, x, logits, x)
        info = self.layer_info(layer)
        request = _TapRequest(self._modules[info.name])
        token = _ACTIVE_TAP.set(request)
        grad_mode = torch.is_grad_enabled()
        try:
            torch.set_grad_enabled(False)
            logits = self.module(inputs)
        finally:
            torch.set_grad_enabled(grad_mode)
            _ACTIVE_TAP.reset(token)
        self.stats.add(forward_passes=1)
        if request.leaf is None:
            raise ExplainError(f"Layer '{info.name}' did not run in the forward pass of '{self.name}'.")
        return BatchCapture(info, inputs, logits, request.leaf)
    def forward_replacing(
        self, inputs: torch.Tensor, layer: str, replace: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Logits ``[B, N]`` of a no-grad forward in which ``layer``'s output is ``replace(output)``.

        Works through the layer's inert tap, for this thread only: the shared module is not changed.
        """
        target = self._modules[self.layer_info(layer).name]
        request = _TapRequest(target, replace=replace)
        token = _ACTIVE_TAP.set(request)
        try:
            with torch.no_grad(), FORWARD_GATE.shared():
                logits = self.module(inputs.to(self.device))
        finally:
            _ACTIVE_TAP.reset(token)
        self.stats.add(forward_passes=1)
        if not request.done:
            raise ExplainError(f"Layer '{layer}' did not run in the forward pass of '{self.name}'.")
        return logits

    def clear_cache(self) -> None:
        """Drop every kept capture (frees their memory)."""
        with self._cache_lock:
            self._captures.clear()
            self._cached_bytes = 0

    @property
    def cached_captures(self) -> int:
        """How many captures are kept now (bounded by ``capture_cache``)."""
        return len(self._captures)

    @property
    def cached_bytes(self) -> int:
        """Estimated memory held by the kept captures (bounded by ``capture_budget_mb``)."""
        return self._cached_bytes

    def randomised_copy(self, layers: Iterable[str] = (), *, seed: int = 0) -> "Model":
        """A deep copy in which every parameter of the named submodules is freshly drawn.

        Modules with ``reset_parameters`` use their own initialisation; parameters of the others
        (position embeddings, class tokens, layer-scale vectors) are drawn from a normal
        distribution with std :data:`FALLBACK_INIT_STD`, so "randomised" means every weight. The
        shared model is only read (deep-copied), never changed.
        """
        module = plain_copy(self.module)  # the new Model installs its own taps
        names = list(layers)
        mods = dict(module.named_modules())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for name in names:
                for sub in mods[name].modules():
                    if hasattr(sub, "reset_parameters"):
                        sub.reset_parameters()
        gen = torch.Generator(device="cpu").manual_seed(int(seed) + 1)
        with torch.no_grad():
            for name in names:
                for sub in mods[name].modules():
                    if hasattr(sub, "reset_parameters"):
                        continue
                    for p in sub.parameters(recurse=False):
                        p.copy_(torch.randn(p.shape, generator=gen) * FALLBACK_INIT_STD)
        return Model(
            f"{self.name} (randomised)", module, self.categories, self.preprocess,
            device=self.device, source=self.source, capture_cache=2, default_sample=self.default_sample,
            default_layer=self._default_layer,
        )

    def cpu_twin(self) -> "Model":
        """A CPU copy of this (GPU) model, made once and kept, for when the GPU runs out of memory.

        Two sessions running out of memory at once build one twin, not two.
        """
        with _TWIN_LOCK:
            twin = self.__dict__.get("_cpu_twin")
            if twin is None:
                # Pre-seed deepcopy's memo with CPU copies of the tensors, so that no second copy of
                # the model is made on a GPU that has just run out of memory.
                memo: dict[int, object] = {}
                for p in self.module.parameters():
                    memo[id(p)] = torch.nn.Parameter(p.detach().cpu(), requires_grad=p.requires_grad)
                for b in self.module.buffers():
                    memo[id(b)] = b.detach().cpu()
                module = strip_taps(copy.deepcopy(self.module, memo))
                twin = Model(self.name, module, self.categories, self.preprocess, device="cpu", source=self.source,
                             default_sample=self.default_sample, default_layer=self._default_layer)
                self.__dict__["_cpu_twin"] = twin
            return twin

    def __reduce__(self) -> tuple:
        """Pickled as a fresh private copy (module without taps, on the CPU), e.g. for Ray workers;
        the copy is rebuilt (taps installed, layers discovered) where it is unpickled."""
        module = plain_copy(self.module).to("cpu")
        return (_rebuild_model, (self.name, module, list(self.categories), self.preprocess, self.source,
                                 self.default_sample, self._default_layer))

    def __repr__(self) -> str:
        return f"Model({self.name!r}, {self.num_classes} classes, default layer {self.default_layer!r}, {self.device})"


_TWIN_LOCK = threading.Lock()


def _rebuild_model(name: str, module: nn.Module, categories: list[str], preprocess: Preprocess, source: str,
                   default_sample: str | None = None, default_layer: str | None = None) -> Model:
    return Model(name, module, categories, preprocess, source=source, default_sample=default_sample,
                 default_layer=default_layer)


def _digest(t: torch.Tensor) -> str:
    """Content key of an input tensor: SHA-256 (hardware-accelerated, ~2× blake2b here), no copy."""
    arr = t.detach().to("cpu", torch.float32).contiguous().numpy()
    return hashlib.sha256(memoryview(arr).cast("B")).hexdigest()[:32] + str(tuple(t.shape))


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

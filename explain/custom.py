"""Bring your own model: a ``state_dict`` for a torchvision architecture or the built-in LeNet.

Nothing uploaded is ever unpickled as code: ``.pt``/``.pth`` files go through
``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers, and
``.safetensors`` files hold no code at all. The number of classes and input channels are read
from the weights themselves; a file that does not fit is a clear error naming the first
mismatching keys or shapes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import pickle
import re
from collections.abc import Mapping

import torch
from torch import nn
from torchvision.models import get_model, get_model_weights

from . import zoo
from .errors import ExplainError, WeightsMismatchError
from .families import Architecture, declared_architecture, declared_architectures
from .model import Model
from .preprocess import DARK_ON_LIGHT, LIGHT_ON_DARK, Preprocess
from .registry import torchvision_names
from .zoo.checks import check_state_dict
from .zoo.lenet import METADATA_KEY  # the metadata entry the embedded weights carry

LENET = "lenet"  # CAM Explorer's own LeNet (explain/zoo/lenet.py)
MAX_LABELS_BYTES = 1_000_000
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 8, 1024  # pixels, square input
MAX_HEADER_BYTES = 10_000_000  # a .safetensors header bigger than this is not read for hints


def custom_architectures() -> list[str]:
    """Architectures a state dict can be loaded into: the declared ones (LeNet…), then torchvision's."""
    zoo.declare()
    return [a.name for a in declared_architectures()] + torchvision_names()


def architecture(name: str) -> Architecture:
    """The declaration of upload architecture ``name`` (declared ones, then torchvision's)."""
    zoo.declare()
    spec = declared_architecture(name)
    if spec is not None:
        return spec
    if name in torchvision_names():
        return _torchvision_architecture(name)
    raise ExplainError(f"Unknown architecture '{name}': choose one of {', '.join(custom_architectures()[:4])}, … "
                       "(explain.custom_architectures() lists them).")


def _torchvision_architecture(arch: str) -> Architecture:
    """A torchvision classifier as an upload target: classes and input channels from the weights."""

    def build(state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
        probe = get_model(arch, weights=None)
        head = _final_linear(probe)
        key = f"{head}.weight"
        if key not in state:
            raise WeightsMismatchError(
                f"{source} does not fit {arch}: it has no '{key}' (the classifier). First keys in the file: "
                f"{', '.join(list(state)[:5])}."
            )
        if state[key].ndim != 2:
            raise WeightsMismatchError(f"{source} does not fit {arch}: '{key}' is {tuple(state[key].shape)}, not 2-D.")
        n = int(state[key].shape[0])
        module = get_model(arch, weights=None, num_classes=n) if n != 1000 else probe
        conv_name = _first_conv(module)
        conv_w = state.get(f"{conv_name}.weight", torch.empty(0, 3, 1, 1))
        if conv_w.ndim != 4:
            raise WeightsMismatchError(
                f"{source} does not fit {arch}: '{conv_name}.weight' is {tuple(conv_w.shape)}, not 4-D."
            )
        in_ch = int(conv_w.shape[1])
        if in_ch != 3:
            old = module.get_submodule(conv_name)
            assert isinstance(old, nn.Conv2d)
            _replace(module, conv_name, nn.Conv2d(
                in_ch, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
                old.groups, old.bias is not None, old.padding_mode,
            ))
        return module

    def preprocess(in_ch: int, input_size: int | None) -> Preprocess:
        base = Preprocess.from_torchvision(get_model_weights(arch).DEFAULT.transforms())
        size = input_size or base.input_size
        if in_ch == 3:
            return Preprocess(size, int(round(size * base.resize_size / base.input_size)), base.mean, base.std,
                              base.interpolation)
        return Preprocess(size, size, (0.5,) * in_ch, (0.5,) * in_ch, base.interpolation, in_channels=in_ch)

    return Architecture(name=arch, description=f"torchvision {arch}", build=build, preprocess=preprocess)


def read_state_dict(data: bytes, filename: str) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pt``/``.pth`` file, never executing code from it."""
    name = filename.lower()
    if not data:
        raise WeightsMismatchError(f"'{filename}' is empty (0 bytes).")
    if name.endswith(".safetensors"):
        from safetensors.torch import load as load_safetensors

        try:
            state = load_safetensors(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure means a corrupt file
            raise WeightsMismatchError(f"'{filename}' is not a valid .safetensors file ({exc}).") from None
    elif name.endswith((".pt", ".pth", ".bin", ".ckpt")):
        try:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            # torch names the offending object for some pickles only (not for protocol 4+ framing,
            # which its safe unpickler refuses before reaching any object): read the opcodes then.
            foreign = [found.group(1)] if found is not None else _foreign_globals(data)
            if not foreign:
                raise WeightsMismatchError(
                    f"'{filename}' could not be read as PyTorch weights (not a saved state_dict); is it complete? "
                    "Save it with `torch.save(model.state_dict(), path)`."
                ) from None
            what = f" ({', '.join(foreign[:3])})"
            raise WeightsMismatchError(
                f"'{filename}' was refused: it contains Python objects other than tensors{what}, "
                "e.g. code or a whole pickled model, which are never loaded here. Save "
                "`model.state_dict()` instead."
            ) from None
        except Exception as exc:  # noqa: BLE001 - truncated zip, garbage bytes, …
            raise WeightsMismatchError(
                f"'{filename}' could not be read as PyTorch weights ({type(exc).__name__}); is it complete?"
            ) from None
        state = _unwrap(obj, filename)
    else:
        raise WeightsMismatchError(
            f"'{filename}': use a .pt, .pth, .ckpt (PyTorch Lightning) or .safetensors file holding a state_dict."
        )
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsMismatchError(f"'{filename}': entries {', '.join(map(str, bad[:5]))} are not tensors.")
    return state


def _foreign_globals(data: bytes, limit: int = 3) -> list[str]:
    """Python objects other than torch's and plain containers that a pickle would import.

    Read from the opcodes with :mod:`pickletools` (which never imports or runs anything); empty
    when there are none or the bytes are not a pickle at all.
    """
    import pickletools

    found: list[str] = []
    strings: list[str] = []  # recent string pushes: STACK_GLOBAL takes module and name from them
    memo: dict[int, str] = {}  # memoised strings by memo index
    memo_count = 0
    last_was_string = False
    try:
        for op, arg, _pos in pickletools.genops(io.BytesIO(data)):
            names: list[str] = []
            pushed_string = False
            if op.name in ("GLOBAL", "INST"):
                names = [str(arg).replace(" ", ".")]
            elif op.name == "STACK_GLOBAL":
                names = [".".join(strings[-2:])] if len(strings) >= 2 else ["an unnamed object"]
            elif "UNICODE" in op.name or op.name in ("STRING", "BINSTRING", "SHORT_BINSTRING"):
                strings.append(str(arg))
                pushed_string = True
            elif op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                index = memo_count if op.name == "MEMOIZE" else int(arg)
                memo_count = max(memo_count, index + 1)
                if last_was_string:
                    memo[index] = strings[-1]
                pushed_string = last_was_string  # memoising leaves the string on the stack
            elif op.name in ("GET", "BINGET", "LONG_BINGET") and int(arg) in memo:
                strings.append(memo[int(arg)])
                pushed_string = True
            last_was_string = pushed_string
            for full in names:
                if not full.startswith(("torch.", "collections.OrderedDict")) and full not in found:
                    found.append(full)
            if len(found) >= limit:
                break
    except Exception:  # noqa: BLE001 - not a (complete) pickle: nothing more to learn from it
        return found
    return found


def _unwrap(obj: object, filename: str) -> dict[str, torch.Tensor]:
    """Accept a bare state dict, a training checkpoint around one, and DataParallel prefixes."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
        state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if not state:
            raise WeightsMismatchError(f"'{filename}' holds no tensors: save `model.state_dict()`.")
        # DataParallel's "module." and a PyTorch Lightning module's attribute ("model.") wrap the
        # network's own names.
        for prefix in ("module.", "model."):
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
        return state
    raise WeightsMismatchError(f"'{filename}' holds a {type(obj).__name__}, not a state_dict.")


def read_labels(data: bytes, filename: str = "labels") -> list[str]:
    """Class names from a text file (one per line) or a JSON list."""
    if len(data) > MAX_LABELS_BYTES:
        raise ExplainError(f"'{filename}' is too large for a labels file (over 1 MB).")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ExplainError(f"'{filename}' is not UTF-8 text; give one class name per line or a JSON list.") from None
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            labels = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ExplainError(f"'{filename}' looks like JSON but does not parse: {exc.msg} (line {exc.lineno}).") from None
        if not isinstance(labels, list) or not all(isinstance(x, (str, int, float)) for x in labels):
            raise ExplainError(f"'{filename}' must be a JSON list of names.")
        return [str(x) for x in labels]
    return [line.strip() for line in text.splitlines() if line.strip()]


def _final_linear(module: nn.Module) -> str:
    last = ""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            last = name
    if not last:
        raise ExplainError("This architecture has no linear classifier layer.")
    return last


def _first_conv(module: nn.Module) -> str:
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Conv2d):
            return name
    raise ExplainError("This architecture has no convolution to take the image.")


def _replace(module: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, child, new)


def build_custom(
    arch: str,
    state: dict[str, torch.Tensor],
    *,
    source: str = "weights",
    labels: list[str] | None = None,
    input_size: int | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    invert: bool = False,
    name: str | None = None,
    device: str | None = None,
    polarity: str | None = None,
) -> Model:
    """A :class:`Model` of ``arch`` holding ``state``; classes and channels are read from the weights.

    ``polarity`` (greyscale models only): how the training pictures were drawn, ``"dark_on_light"``
    or ``"light_on_dark"`` (MNIST); ``None`` or ``"auto"``: the architecture's own
    (``Architecture.polarity``), else dark on light. Pictures drawn the other way round are flipped
    (the polarity of each picture is read from it). ``invert=True`` is the older way of saying
    ``polarity="light_on_dark"``. ``name`` overrides the model's name (by default
    ``custom:<arch>:<source>``).
    """
    if input_size is not None and not MIN_INPUT_SIZE <= int(input_size) <= MAX_INPUT_SIZE:
        raise ExplainError(f"The input size must be between {MIN_INPUT_SIZE} and {MAX_INPUT_SIZE} pixels, not {input_size}.")
    for what, values in (("mean", mean), ("std", std)):
        if values is not None and not all(math.isfinite(float(v)) for v in values):
            raise ExplainError(f"The {what} values must be finite numbers.")
    if std is not None and any(float(v) <= 0 for v in std):
        raise ExplainError("The std values must be greater than 0.")
    spec = architecture(arch)
    module = spec.build(state, source)
    in_ch = int(module.get_submodule(_first_conv(module)).in_channels)
    _check_channels(in_ch, mean, std, invert)
    if polarity not in (None, "auto", DARK_ON_LIGHT, LIGHT_ON_DARK):
        raise ExplainError(f"Unknown polarity {polarity!r}: use auto, {DARK_ON_LIGHT} or {LIGHT_ON_DARK}.")
    if polarity in (None, "auto"):
        polarity = LIGHT_ON_DARK if invert else (spec.polarity or DARK_ON_LIGHT)
    pre = spec.preprocess(in_ch, input_size)
    pre = dataclasses.replace(
        pre, mean=tuple(mean) if mean is not None else pre.mean, std=tuple(std) if std is not None else pre.std,
        invert=False, polarity=polarity if in_ch == 1 else None,
    )
    check_state_dict(module, state, source=source)
    module.load_state_dict(state)
    n_classes = int(state[f"{_final_linear(module)}.weight"].shape[0])
    if labels is None:
        labels = [f"class {i}" for i in range(n_classes)]
    if len(labels) != n_classes:
        raise ExplainError(
            f"The labels file has {len(labels)} names but the weights have {n_classes} classes; give one name per class."
        )
    name = name or f"custom:{arch}:{_safe(source)}"
    return Model(name, module, labels, pre, device=device, source="custom", default_layer=spec.default_layer)


def _check_channels(in_ch: int, mean: tuple[float, ...] | None, std: tuple[float, ...] | None, invert: bool) -> None:
    """Mean/std need one value per input channel; inverting only makes sense for greyscale input."""
    for what, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) != in_ch:
            raise ExplainError(
                f"The weights take {in_ch} input channel{'s' if in_ch != 1 else ''} but {len(values)} {what} "
                f"value{'s were' if len(values) != 1 else ' was'} given; give one per channel."
            )
    if invert and in_ch != 1:
        raise ExplainError(f"Inverting the input is only for greyscale models; these weights take {in_ch} channels.")


def read_metadata(data: bytes) -> dict:
    """The preprocessing hints a ``.safetensors`` file may carry (``{}`` when it has none).

    Reads the ``cam_explorer`` entry of the header's ``__metadata__`` (what
    ``scripts/train_digits_lenet.py`` writes): any of ``categories``, ``input_size``, ``mean``,
    ``std``, ``invert``. Only plain JSON is parsed; entries of the wrong type are dropped.
    """
    if len(data) < 8:
        return {}
    size = int.from_bytes(data[:8], "little")
    if size <= 0 or size > min(len(data) - 8, MAX_HEADER_BYTES):
        return {}
    try:
        header = json.loads(data[8 : 8 + size].decode("utf-8"))
        raw = json.loads(header.get("__metadata__", {}).get(METADATA_KEY, "{}"))
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError):
        return {}
    if not isinstance(raw, dict):
        return {}
    hints: dict = {}
    cats = raw.get("categories")
    if isinstance(cats, list) and cats and all(isinstance(c, (str, int)) for c in cats):
        hints["categories"] = [str(c) for c in cats]
    size_hint = raw.get("input_size")
    if isinstance(size_hint, int) and MIN_INPUT_SIZE <= size_hint <= MAX_INPUT_SIZE:
        hints["input_size"] = size_hint
    for key in ("mean", "std"):
        values = raw.get(key)
        if (isinstance(values, list) and values and all(isinstance(v, (int, float)) for v in values)
                and all(math.isfinite(v) for v in values)):
            hints[key] = tuple(float(v) for v in values)
    if isinstance(raw.get("invert"), bool):
        hints["invert"] = raw["invert"]
    return hints


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:60]

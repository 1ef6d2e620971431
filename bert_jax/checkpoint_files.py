"""Reading PyTorch BERT checkpoints: state-dict files (`.safetensors`, torch `.bin`/`.pt`), the
weights of a HuggingFace folder, `config.json`, and a config inferred from tensor shapes.

`.safetensors` files need no torch. Torch files need PyTorch, an optional dependency imported only
when such a file is read (`_import_torch`); they are unpickled with `weights_only=True`, allowing
nothing beyond tensors and minBERT's metadata (`_torch_safe_globals`).
"""
from __future__ import annotations

import argparse
import json
import re
import types
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from bert_jax.config import BertConfig
from bert_jax.errors import ConversionError, MissingDependencyError, MissingFileError
from bert_jax.weight_names import FORMATS, detect_format, source_name

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _import_torch():
    """PyTorch, imported here on purpose: an optional dependency (the `torch` extra), needed
    only for torch-pickled checkpoints and bfloat16 safetensors."""
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(
            "reading .bin/.pt checkpoints needs PyTorch: `pip install torch` (CPU is enough), or "
            "convert from .safetensors") from None
    return torch


def _torch_safe_globals() -> list:
    """What `torch.load(weights_only=True)` may build beyond tensors: minBERT's metadata."""
    _reconstruct = np._core.multiarray._reconstruct
    return [argparse.Namespace, types.SimpleNamespace,
            # np.random.get_state(): ("MT19937", uint32 array, int, int, float)
            _reconstruct, (_reconstruct, "numpy.core.multiarray._reconstruct"),
            np.ndarray, np.dtype, np.dtypes.UInt32DType]


def _to_numpy(tensor) -> np.ndarray:
    if tensor.is_floating_point():
        return tensor.detach().float().cpu().numpy()
    return tensor.detach().cpu().numpy()


def read_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a state dict from `.safetensors` (no torch needed) or a torch `.bin`/`.pt` file.

    Returns (state: key -> numpy array, floats as float32; extras: the other entries of a
    torch checkpoint dict such as minBERT's `model_config` and `args`, else {}).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        return _read_safetensors(path), {}
    torch = _import_torch()
    try:
        with torch.serialization.safe_globals(_torch_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds; all mean "unreadable"
        text = str(err)
        refused = re.search(r"GLOBAL ([\w.]+)|but got <class '([^']+)'>", text)
        reason = (f"it pickles {refused.group(1) or refused.group(2)}, which is not allowed "
                  "(only tensors and minBERT's metadata are unpickled)" if refused else
                  f"truncated or corrupt? {type(err).__name__}: "
                  + (text.strip().splitlines() or [""])[0])
        raise ConversionError(f"{path}: cannot read this PyTorch checkpoint: {reason}") from err
    extras: dict[str, Any] = {}
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    elif isinstance(obj, Mapping) and isinstance(obj.get("model", obj.get("state_dict")), Mapping):
        entry = "model" if isinstance(obj.get("model"), Mapping) else "state_dict"
        state = obj[entry]
        extras = {k: v for k, v in obj.items() if k != entry}
    else:
        raise ConversionError(f"{path}: not a state dict, nor a dict with a 'model' or "
                              f"'state_dict' entry (got {type(obj).__name__})")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ConversionError(f"{path}: state dict entries that are not tensors: "
                              + ", ".join(map(str, not_tensors)))
    return {k: _to_numpy(v) for k, v in state.items()}, extras


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        state = load_file(path)
    except SafetensorError as err:
        raise ConversionError(f"{path}: cannot read this safetensors file (truncated or "
                              f"corrupt?): {err}") from err
    except TypeError as err:  # numpy has no bfloat16: read through torch
        try:
            _import_torch()
        except ImportError:
            raise ConversionError(f"{path}: holds tensors numpy cannot read ({err}); "
                                  "install torch to convert it") from err
        from safetensors.torch import load_file as torch_load_file  # needs torch: see above
        return {k: _to_numpy(v) for k, v in torch_load_file(path).items()}
    return {k: v.astype(np.float32, copy=False) if np.issubdtype(v.dtype, np.floating) else v
            for k, v in state.items()}


def find_weights(folder: Path) -> Path:
    """The weights file of a HuggingFace folder (`WEIGHT_FILES`, first found)."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise MissingFileError(f"{folder}: no {' or '.join(WEIGHT_FILES)} there (sharded "
                           "checkpoints are not supported)")


def read_config(path: str | Path) -> BertConfig:
    """A `BertConfig` from a HuggingFace or bert-jax `config.json`.

    HuggingFace's `dtype`/`torch_dtype` (the storage dtype of its weights) is dropped: converted
    parameters are float32 and the compute dtype is chosen when loading.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such config file")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"{path}: not valid JSON ({err})") from None
    if "param_dtype" not in values:  # HuggingFace's, not ours
        values = {k: v for k, v in values.items() if k not in ("dtype", "torch_dtype")}
    position = values.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise ConversionError(f"{path}: position_embedding_type {position!r} is not supported "
                              "(only 'absolute')")
    try:
        return BertConfig.from_dict(values)
    except (TypeError, ValueError) as err:
        raise ConversionError(f"{path}: not a usable BERT config: {err}") from None


def infer_config(state: Mapping[str, np.ndarray], hints: Any = None) -> BertConfig:
    """A `BertConfig` from tensor shapes (for minBERT checkpoints, which carry no config.json).

    Heads cannot be read from shapes: `hints.num_attention_heads` (e.g. minBERT's
    `model_config`) if present, else hidden_size // 64 (BERT's head size).
    """
    source_format, prefix = detect_format(state.keys())
    layer_pattern = FORMATS[source_format].layer_pattern

    def key(flax_path: tuple[str, ...], layer: str = "") -> str:
        return prefix + layer + source_name(source_format, flax_path) + ".weight"

    needed = [key(("embeddings", "position_embeddings")),
              key(("embeddings", "token_type_embeddings")),
              key(("intermediate", "dense"), layer_pattern.format(i=0))]
    if any(k not in state for k in needed):
        raise ConversionError("cannot infer the config from tensor shapes: missing "
                              + ", ".join(k for k in needed if k not in state))
    vocab_size, hidden = np.shape(state[key(("embeddings", "word_embeddings"))])
    layers = 0
    while any(k.startswith(prefix + layer_pattern.format(i=layers)) for k in state):
        layers += 1
    values = {
        "vocab_size": vocab_size, "hidden_size": hidden, "num_hidden_layers": layers,
        "max_position_embeddings": np.shape(state[needed[0]])[0],
        "type_vocab_size": np.shape(state[needed[1]])[0],
        "intermediate_size": np.shape(state[needed[2]])[0],
        "num_attention_heads": getattr(hints, "num_attention_heads", None) or max(hidden // 64, 1),
    }
    for name in ("layer_norm_eps", "hidden_act"):
        if getattr(hints, name, None) is not None:
            values[name] = getattr(hints, name)
    return BertConfig(**{k: (int(v) if isinstance(v, (int, np.integer)) else v)
                         for k, v in values.items()})

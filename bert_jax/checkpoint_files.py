"""Reading PyTorch BERT checkpoints: state-dict files (`.safetensors`, torch `.bin`/`.pt`), the
weights of a HuggingFace folder, `config.json`, and a config inferred from tensor shapes; and
turning such a state dict into the Flax parameter tree (`convert_state_dict`).

`convert_state_dict` is the source format's rename table (`bert_jax.weight_names`), Linear
weights transposed to Flax kernels, LayerNorm `weight` -> `scale`. Every source key is accounted
for: converted, a known buffer (`position_ids`), or a task-head key outside the encoder
(reported as skipped). Missing, unexpected and mis-shaped keys raise `ConversionError` listing
all of them.

`.safetensors` files need no torch. Torch files need PyTorch, an optional dependency imported only
when such a file is read (`_import_torch`); they are unpickled with `weights_only=True`, allowing
nothing beyond tensors and minBERT's metadata (`_torch_safe_globals`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import types
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from flax import traverse_util
from safetensors import SafetensorError
from safetensors.numpy import load_file

from bert_jax.config import BertConfig
from bert_jax.errors import ConversionError, MissingDependencyError, MissingFileError
from bert_jax.weight_names import (FORMATS, detect_format, expected_shapes, rename_table,
                                   source_name)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
Params = dict[str, Any]


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


def _unpickling_reason(err: Exception) -> str:
    """Why `torch.load(weights_only=True)` refused a file, in this project's words. Torch's own
    message advises loading with weights_only=False, which would run whatever the pickle holds:
    never repeated here."""
    text = str(err)
    refused = re.search(r"GLOBAL ([\w.]+)|but got <class '([^']+)'>", text)
    if refused:
        return (f"it pickles {refused.group(1) or refused.group(2)}, which is not allowed (only "
                "tensors and minBERT's metadata are unpickled); the file is refused")
    if "Weights only load failed" in text or "WeightsUnpickler" in text:
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        detail = f" ({detail.group(1).strip()[:120]})" if detail else ""
        return ("not a plain weights file: its pickle holds more than tensors and minBERT's "
                f"metadata{detail}, so it is refused. Use a .safetensors or a plain state-dict "
                "copy of the weights")
    first = next((line for line in text.strip().splitlines() if line.strip()), "")
    if "weights_only" in first:
        first = "refused by the safe loader"
    return f"truncated or corrupt? {type(err).__name__}: {first[:200]}"


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
        raise ConversionError(f"{path}: cannot read this PyTorch checkpoint: "
                              f"{_unpickling_reason(err)}") from err
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


def read_json_object(path: Path, damaged: Callable[[str], Exception]) -> dict:
    """The JSON object in `path`; `damaged(why)` is raised when the file cannot be read, is not
    JSON, or holds something else than an object."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise damaged(f"not a readable JSON file ({err})") from None
    if not isinstance(values, dict):
        raise damaged(f"a JSON object is expected, not {type(values).__name__}")
    return values


def read_config(path: str | Path) -> BertConfig:
    """A `BertConfig` from a HuggingFace or bert-jax `config.json`.

    Keys that are not shape are ignored (`BertConfig.from_dict`): HuggingFace's
    `dtype`/`torch_dtype` (the storage dtype of its weights: converted parameters are float32)
    and the `dtype`/`param_dtype`/`attention_impl` of folders this project wrote before those
    became run-time choices (the compute dtype and attention kernel are chosen when loading).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such config file")
    values = read_json_object(path, lambda why: ConversionError(
        f"{path}: " + why.replace("a JSON object is", "not a usable BERT config: a JSON object "
                                  "(keys such as hidden_size) is")))
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


# --------------------------------------------------------------------------------------------
# Converting a state dict.

@dataclasses.dataclass
class ConversionReport:
    """What happened to each source key.

    `source_format` is "huggingface" or "minbert"; `prefix` the key prefix of the encoder (e.g.
    "bert." or ""). `converted` are the source keys that became parameters, `ignored` known
    buffers (`position_ids`), `skipped` keys outside the encoder (task heads) with no Flax
    counterpart. `missing_pooler` is true when the pooler was absent and allowed to be.
    """
    source_format: str
    prefix: str
    converted: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    missing_pooler: bool = False
    notes: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.source_format} checkpoint (encoder prefix {self.prefix!r}): "
                 f"converted {len(self.converted)} tensors"]
        if self.ignored:
            lines.append(f"ignored buffers: {', '.join(self.ignored)}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} keys with no counterpart in the Flax "
                         f"encoder (task heads): {', '.join(self.skipped)}")
        if self.missing_pooler:
            lines.append("the checkpoint has no pooler: use BertModel(config, "
                         "add_pooling_layer=False) with these parameters")
        lines.extend(self.notes)
        return "\n".join(lines)


def convert_state_dict(state: Mapping[str, Any], config: BertConfig, *,
                       allow_missing_pooler: bool = False,
                       source: str = "state dict") -> tuple[Params, ConversionReport]:
    """Rename and transpose a PyTorch BERT state dict into the Flax parameter tree.

    `state` maps source keys to arrays (numpy, or anything `np.asarray` takes); `config` gives
    the expected shapes. Returns (`params`, a nested dict of float32 numpy arrays such as
    params["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"] [D, D], and a
    `ConversionReport`). Raises `ConversionError` listing every missing, unexpected and
    mis-shaped key (with expected vs got shape in the source's own orientation).
    """
    source_format, prefix = detect_format(state.keys(), source)
    buffers = {prefix + b for b in FORMATS[source_format].buffers}
    pooler_keys = set(rename_table(source_format, config, prefix)) - set(
        rename_table(source_format, config, prefix, pooler=False))
    missing_pooler = not (pooler_keys & set(state))
    pooler = not (missing_pooler and allow_missing_pooler)
    table = rename_table(source_format, config, prefix, pooler)
    shapes = expected_shapes(config, pooler)

    report = ConversionReport(source_format, prefix, missing_pooler=not pooler)
    problems = []
    missing = [k for k in table if k not in state]
    if missing:
        hint = (" (a checkpoint without a pooler converts with allow_missing_pooler=True / "
                "--allow-missing-pooler)" if missing_pooler else "")
        problems.append(f"{len(missing)} missing keys{hint}: " + ", ".join(missing))
    unexpected = []
    for key in state:
        if key in table:
            continue
        if key in buffers:
            report.ignored.append(key)
        elif not key.startswith(prefix):
            report.skipped.append(key)
        else:
            unexpected.append(key)
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (not part of a BERT encoder with "
                        f"{config.num_hidden_layers} layers): " + ", ".join(unexpected))
    misshaped = []
    for key, (path, transpose) in table.items():
        if key in state:
            want = shapes[path][::-1] if transpose else shapes[path]
            got = tuple(np.shape(state[key]))
            if got != want:
                misshaped.append(f"{key}: expected {want}, got {got}")
    if misshaped:
        problems.append(f"{len(misshaped)} keys with the wrong shape for the config "
                        f"({shape_summary(config)}): " + "; ".join(misshaped))
    # Weights are floating point: an integer or bool dtype (a damaged or edited header whose
    # dtype has the same item size) would convert the bytes into meaningless numbers.
    not_float = [f"{key} ({np.asarray(state[key]).dtype})" for key in table
                 if key in state and not np.issubdtype(np.asarray(state[key]).dtype, np.floating)]
    if not_float:
        problems.append(f"{len(not_float)} weights whose dtype is not floating point (a damaged "
                        "or edited file; re-save the weights): " + ", ".join(not_float))
    if problems:
        raise ConversionError(f"{source}: cannot convert:\n  " + "\n  ".join(problems))

    flat = {}
    for key, (path, transpose) in table.items():
        value = np.asarray(state[key], dtype=np.float32)
        flat[path] = np.ascontiguousarray(value.T) if transpose else value
        report.converted.append(key)
    return traverse_util.unflatten_dict(flat), report


def shape_summary(config: BertConfig) -> str:
    """The shape fields of `config` as "vocab_size=30522, hidden_size=384, ..." (for errors)."""
    return ", ".join(f"{k}={v}" for k, v in config.shape_dict().items())

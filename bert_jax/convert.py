"""PyTorch BERT checkpoints -> Flax parameters, and the converted-folder format.

Sources (see `convert_checkpoint`):

* a HuggingFace BERT folder (`config.json` with `model.safetensors` or `pytorch_model.bin`);
* one `.safetensors` / `.bin` / `.pt` state dict of a HuggingFace `BertModel` (keys with or
  without a `bert.` prefix); config from `config_file` or a `config.json` beside it;
* a checkpoint of the CS224N minBERT PyTorch code: a `torch.save` dict whose `model` entry uses
  minBERT's names (`bert.word_embedding`, `bert.bert_layers.N.self_attention.query`, ...).

The core is `convert_state_dict`: one rename table per source format, Linear weights transposed to
Flax kernels, LayerNorm `weight` -> `scale`. Every source key is accounted for: converted, a known
buffer (`position_ids`), or a task-head key outside the encoder (reported as skipped). Missing,
unexpected and mis-shaped keys raise `ConversionError` listing all of them.

A converted folder holds `params/` (an orbax StandardCheckpointer checkpoint of the float32
parameter tree), `config.json` (`BertConfig.to_json`), `vocab.txt` and `conversion.json`
(provenance, skipped keys and a CRC32 of the parameters, checked on load).

CLI: `python -m bert_jax.convert SRC OUT [--vocab FILE] [--config FILE]`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import sys
import uuid
import warnings
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from bert_jax.config import BertConfig
from bert_jax.errors import BertJaxError

Params = dict[str, Any]

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


class ConversionError(BertJaxError, ValueError):
    """A checkpoint that cannot be converted: unreadable, not BERT, or not matching the config."""


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


# --------------------------------------------------------------------------------------------
# Rename tables: source module name -> (Flax module path, kind). Leaves follow from the kind.

_HF_TOP = {
    "embeddings.word_embeddings": (("embeddings", "word_embeddings"), "embed"),
    "embeddings.position_embeddings": (("embeddings", "position_embeddings"), "embed"),
    "embeddings.token_type_embeddings": (("embeddings", "token_type_embeddings"), "embed"),
    "embeddings.LayerNorm": (("embeddings", "LayerNorm"), "norm"),
}
_HF_LAYER = {
    "attention.self.query": (("attention", "self", "query"), "dense"),
    "attention.self.key": (("attention", "self", "key"), "dense"),
    "attention.self.value": (("attention", "self", "value"), "dense"),
    "attention.output.dense": (("attention", "output", "dense"), "dense"),
    "attention.output.LayerNorm": (("attention", "output", "LayerNorm"), "norm"),
    "intermediate.dense": (("intermediate", "dense"), "dense"),
    "output.dense": (("output", "dense"), "dense"),
    "output.LayerNorm": (("output", "LayerNorm"), "norm"),
}
_MINBERT_TOP = {
    "word_embedding": (("embeddings", "word_embeddings"), "embed"),
    "pos_embedding": (("embeddings", "position_embeddings"), "embed"),
    "tk_type_embedding": (("embeddings", "token_type_embeddings"), "embed"),
    "embed_layer_norm": (("embeddings", "LayerNorm"), "norm"),
}
_MINBERT_LAYER = {
    "self_attention.query": (("attention", "self", "query"), "dense"),
    "self_attention.key": (("attention", "self", "key"), "dense"),
    "self_attention.value": (("attention", "self", "value"), "dense"),
    "attention_dense": (("attention", "output", "dense"), "dense"),
    "attention_layer_norm": (("attention", "output", "LayerNorm"), "norm"),
    "interm_dense": (("intermediate", "dense"), "dense"),
    "out_dense": (("output", "dense"), "dense"),
    "out_layer_norm": (("output", "LayerNorm"), "norm"),
}
# format -> (top-level modules, per-layer name pattern, per-layer modules, pooler, word key,
#            buffers ignored on purpose)
_FORMATS = {
    "huggingface": (_HF_TOP, "encoder.layer.{i}.", _HF_LAYER, "pooler.dense",
                    "embeddings.word_embeddings.weight",
                    ("embeddings.position_ids", "embeddings.token_type_ids")),
    "minbert": (_MINBERT_TOP, "bert_layers.{i}.", _MINBERT_LAYER, "pooler_dense",
                "word_embedding.weight", ("position_ids",)),
}
# kind -> {torch leaf: (flax leaf, transpose)}
_LEAVES = {
    "embed": {"weight": ("embedding", False)},
    "dense": {"weight": ("kernel", True), "bias": ("bias", False)},
    "norm": {"weight": ("scale", False), "bias": ("bias", False)},
}


def rename_table(source_format: str, config: BertConfig, prefix: str = "",
                 pooler: bool = True) -> dict[str, tuple[tuple[str, ...], bool]]:
    """Source key -> (Flax parameter path, transpose?) for every parameter of `config`'s model."""
    top, layer_pattern, layer, pooler_name, _, _ = _FORMATS[source_format]
    modules = dict(top)
    for i in range(config.num_hidden_layers):
        for name, (path, kind) in layer.items():
            modules[layer_pattern.format(i=i) + name] = (("encoder", f"layer_{i}") + path, kind)
    if pooler:
        modules[pooler_name] = (("pooler", "dense"), "dense")
    return {f"{prefix}{name}.{leaf}": (path + (flax_leaf,), transpose)
            for name, (path, kind) in modules.items()
            for leaf, (flax_leaf, transpose) in _LEAVES[kind].items()}


def detect_format(keys, source: str = "state dict") -> tuple[str, str]:
    """(source format, encoder key prefix) from the word-embedding key; raises if not BERT."""
    found = []
    for key in keys:
        for fmt, spec in _FORMATS.items():
            suffix = spec[4]
            if key.endswith(suffix):
                prefix = key[:-len(suffix)]
                if prefix == "" or prefix.endswith("."):
                    found.append((fmt, prefix))
    if len(found) == 1:
        return found[0]
    if found:
        raise ConversionError(f"{source}: ambiguous checkpoint, several word embeddings: "
                              + ", ".join(f"{p}{_FORMATS[f][4]}" for f, p in found))
    keys = list(keys)
    raise ConversionError(
        f"{source}: not a BERT checkpoint: it has no word-embedding weight "
        "('[bert.]embeddings.word_embeddings.weight' as in HuggingFace BertModel, or "
        f"'bert.word_embedding.weight' as in minBERT). Its {len(keys)} keys are under: "
        + ", ".join(sorted({k.split(".")[0] for k in keys})[:12]) + "; they begin: "
        + ", ".join(keys[:6]))


def expected_shapes(config: BertConfig, pooler: bool = True) -> dict[tuple[str, ...], tuple]:
    """Flax parameter path -> shape for `config`, computed abstractly (no allocation)."""
    import jax
    from flax import traverse_util
    from bert_jax.model import init_params
    tree = jax.eval_shape(lambda: init_params(config, jax.random.key(0), pooler))
    return {path: tuple(leaf.shape) for path, leaf in traverse_util.flatten_dict(tree).items()}


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
    buffers = {prefix + b for b in _FORMATS[source_format][5]}
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
                        f"({_shape_summary(config)}): " + "; ".join(misshaped))
    if problems:
        raise ConversionError(f"{source}: cannot convert:\n  " + "\n  ".join(problems))

    from flax import traverse_util
    flat = {}
    for key, (path, transpose) in table.items():
        value = np.asarray(state[key], dtype=np.float32)
        flat[path] = np.ascontiguousarray(value.T) if transpose else value
        report.converted.append(key)
    return traverse_util.unflatten_dict(flat), report


def _shape_summary(config: BertConfig) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.shape_dict().items())


# --------------------------------------------------------------------------------------------
# Reading files.

def _import_torch():
    try:
        import torch
    except ImportError:
        raise ImportError("reading .bin/.pt checkpoints needs PyTorch: `pip install torch` "
                          "(CPU is enough), or convert from .safetensors") from None
    return torch


def _torch_safe_globals() -> list:
    """What `torch.load(weights_only=True)` may build beyond tensors: minBERT's metadata."""
    import types
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
        raise FileNotFoundError(f"{path}: no such checkpoint file")
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
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
        state = load_file(path)
    except SafetensorError as err:
        raise ConversionError(f"{path}: cannot read this safetensors file (truncated or "
                              f"corrupt?): {err}") from err
    except TypeError as err:  # numpy has no bfloat16: read through torch
        try:
            torch = _import_torch()
        except ImportError:
            raise ConversionError(f"{path}: holds tensors numpy cannot read ({err}); "
                                  "install torch to convert it") from err
        from safetensors.torch import load_file as torch_load_file
        return {k: _to_numpy(v) for k, v in torch_load_file(path).items()}
    return {k: v.astype(np.float32, copy=False) if np.issubdtype(v.dtype, np.floating) else v
            for k, v in state.items()}


def read_config(path: str | Path) -> BertConfig:
    """A `BertConfig` from a HuggingFace or bert-jax `config.json`.

    HuggingFace's `dtype`/`torch_dtype` (the storage dtype of its weights) is dropped: converted
    parameters are float32 and the compute dtype is chosen when loading.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
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
    top, layer_pattern, *_ = _FORMATS[source_format]
    names = {flax[1]: name for name, (flax, _) in top.items()}  # e.g. "word_embeddings" -> src
    needed = [prefix + names[n] + ".weight" for n in ("position_embeddings",
                                                       "token_type_embeddings")]
    needed.append(prefix + layer_pattern.format(i=0) + "interm_dense.weight"
                  if source_format == "minbert" else
                  prefix + layer_pattern.format(i=0) + "intermediate.dense.weight")
    if any(k not in state for k in needed):
        raise ConversionError("cannot infer the config from tensor shapes: missing "
                              + ", ".join(k for k in needed if k not in state))
    vocab_size, hidden = np.shape(state[prefix + names["word_embeddings"] + ".weight"])
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
# Converting whole checkpoints and the converted-folder format.

def find_weights(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: no {' or '.join(WEIGHT_FILES)} there (sharded "
                            "checkpoints are not supported)")


def convert_checkpoint(src: str | Path, out_dir: str | Path | None = None, *,
                       vocab_file: str | Path | None = None,
                       config_file: str | Path | None = None,
                       allow_missing_pooler: bool = False, overwrite: bool = False,
                       verbose: bool = True) -> tuple[BertConfig, Params, ConversionReport]:
    """Convert `src` (HF folder, state-dict file or minBERT checkpoint); save to `out_dir` if given.

    Config: `config_file`, else `config.json` in/beside `src`, else (minBERT only) inferred from
    shapes. Vocab (needed only to save): `vocab_file`, else `vocab.txt` in/beside `src`, else
    (minBERT with 30522 tokens) the embedded default's bert-base-uncased `vocab.txt`.
    Prints the report when `verbose`; otherwise skipped head keys raise a warning.
    Returns (config, params as float32 numpy tree, report).
    """
    src = Path(src)
    if src.is_dir():
        weights, folder = find_weights(src), src
        if config_file is None and not (src / "config.json").is_file():
            raise FileNotFoundError(f"{src}: no config.json there (pass config_file / --config)")
    elif src.is_file():
        weights, folder = src, src.parent
    else:
        raise FileNotFoundError(f"{src}: no such file or folder")
    config_file = config_file or (folder / "config.json" if (folder / "config.json").is_file()
                                  else None)
    config = read_config(config_file) if config_file is not None else None
    state, extras = read_checkpoint(weights)
    source_format, _ = detect_format(state.keys(), str(weights))

    notes = []
    if config is not None:
        pass
    elif source_format == "minbert":
        hints = extras.get("model_config")
        config = infer_config(state, hints)
        heads = ("from model_config" if getattr(hints, "num_attention_heads", None)
                 else "assumed from BERT's head size 64")
        notes.append(f"config inferred from tensor shapes ({_shape_summary(config)}; "
                     f"num_attention_heads {heads}); pass --config to override")
    else:
        raise ConversionError(f"{weights}: no config.json beside it: pass config_file / --config")

    params, report = convert_state_dict(state, config, allow_missing_pooler=allow_missing_pooler,
                                        source=str(weights))
    report.notes.extend(notes)
    if out_dir is not None:
        if vocab_file is None:
            vocab_file = _default_vocab(folder, source_format, config, report)
        save_converted(out_dir, params, config, vocab_file, overwrite=overwrite,
                       protect=[src, weights] + ([Path(config_file)] if config_file else []),
                       metadata={
            "source": str(weights.resolve()), "source_format": report.source_format,
            "skipped": report.skipped, "ignored": report.ignored,
            "missing_pooler": report.missing_pooler})
    if verbose:
        print(report.summary())
    elif report.skipped:
        warnings.warn(f"{weights}: skipped {len(report.skipped)} keys with no counterpart in "
                      f"the Flax encoder: {', '.join(report.skipped)}", stacklevel=2)
    return config, params, report


def _default_vocab(folder: Path, source_format: str, config: BertConfig,
                   report: ConversionReport) -> Path:
    if (folder / "vocab.txt").is_file():
        return folder / "vocab.txt"
    if source_format == "minbert" and config.vocab_size == 30522:
        from bert_jax.pretrained import embedded_model_dir
        vocab = embedded_model_dir() / "vocab.txt"
        report.notes.append(f"vocab: {vocab} (bert-base-uncased's WordPiece vocabulary, which "
                            "minBERT uses); pass --vocab to choose another")
        return vocab
    raise FileNotFoundError(f"{folder}: no vocab.txt there (pass vocab_file / --vocab)")


def params_crc32(params: Params) -> str:
    """A CRC32 over every parameter's path, shape, dtype and bytes (to detect corruption)."""
    from flax import traverse_util
    crc = 0
    for path, value in sorted(traverse_util.flatten_dict(params).items()):
        value = np.ascontiguousarray(np.asarray(value))
        crc = zlib.crc32(f"{'/'.join(path)}:{value.shape}:{value.dtype}".encode(), crc)
        crc = zlib.crc32(value.data, crc)
    return f"{crc:08x}"


def check_output_folder(out: Path, protect: list[Path], overwrite: bool) -> None:
    """Refuse an output folder whose replacement would destroy what it must not.

    `out` may not be, hold, or (for folders in `protect`) lie inside any path of `protect` (the
    sources) nor be or hold the current folder; with `overwrite`, an existing `out` must be a
    previous conversion (it holds `conversion.json` and `params/`) or an empty folder.
    Raises ConversionError (or FileExistsError without `overwrite`) naming both paths.
    """
    out = out.resolve()
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise ConversionError(f"{out}: OUT is the current folder or holds it; pass a new "
                              "folder for the converted model (e.g. converted/)")
    for source in protect:
        source = Path(source).resolve()
        if out == source or out in source.parents:
            raise ConversionError(f"{out}: OUT is or holds the source {source}; replacing it "
                                  "would delete the source. Pass another OUT")
        if source.is_dir() and source in out.parents:
            raise ConversionError(f"{out}: OUT lies inside the source folder {source}; pass a "
                                  "folder outside it")
    if not out.exists():
        return
    if not overwrite:
        raise FileExistsError(f"{out}: already exists (pass overwrite=True / --overwrite)")
    is_conversion = (out / "conversion.json").is_file() and (out / "params").is_dir()
    if not out.is_dir() or not (is_conversion or not any(out.iterdir())):
        raise ConversionError(f"{out}: exists and is not a converted model folder (no "
                              "conversion.json and params/); --overwrite replaces only an "
                              "earlier conversion. Pass another OUT, or remove it yourself")


def save_converted(out_dir: str | Path, params: Params, config: BertConfig,
                   vocab_file: str | Path, *, overwrite: bool = False,
                   metadata: dict[str, Any] | None = None,
                   protect: list[Path] | None = None) -> Path:
    """Write `params/` (orbax), `config.json`, `vocab.txt`, `conversion.json` to `out_dir`.

    Built in a temporary sibling folder and renamed into place, so `out_dir` is either absent or
    complete. An existing `out_dir` raises `FileExistsError` unless `overwrite`, and even then
    only an earlier conversion (or an empty folder) is replaced; `out_dir` may never be, hold or
    lie inside a path of `protect` (the sources), nor be or hold the current folder
    (`check_output_folder`).
    """
    import orbax.checkpoint as ocp
    out = Path(out_dir).resolve()
    vocab_file = Path(vocab_file)
    check_output_folder(out, [*(protect or []), vocab_file], overwrite)
    if not vocab_file.is_file():
        raise FileNotFoundError(f"{vocab_file}: no such vocab file")
    with vocab_file.open(encoding="utf-8") as f:
        vocab_lines = sum(1 for _ in f)
    if vocab_lines > config.vocab_size:
        raise ConversionError(f"{vocab_file}: {vocab_lines} tokens, more than the model's "
                              f"vocab_size {config.vocab_size}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        params = _as_float32_numpy(params)
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(tmp / "params", params)
            checkpointer.wait_until_finished()
        config.to_json(tmp / "config.json")
        shutil.copyfile(vocab_file, tmp / "vocab.txt")
        meta = {**(metadata or {}), "params_crc32": params_crc32(params)}
        (tmp / "conversion.json").write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _as_float32_numpy(params: Params) -> Params:
    import jax
    return jax.tree.map(lambda x: np.asarray(x, dtype=np.float32), params)


def load_converted(folder: str | Path, *, verify: bool = True) -> tuple[BertConfig, Params]:
    """Load a folder written by `save_converted`: (config, params as float32 jax arrays).

    The parameter tree is checked against the config's shapes (with or without the pooler) and,
    when `verify`, against the CRC32 recorded in `conversion.json`; mismatches raise ValueError.
    """
    import jax
    import jax.numpy as jnp
    import orbax.checkpoint as ocp
    from flax import traverse_util
    folder = Path(folder).resolve()
    if not (folder / "params").is_dir():
        raise FileNotFoundError(f"{folder}: no params/ there (not a converted folder)")
    config = read_config(folder / "config.json")
    with ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore(folder / "params")
    params = _as_float32_numpy(params)
    flat = traverse_util.flatten_dict(params)
    want = expected_shapes(config, pooler=("pooler", "dense", "kernel") in flat)
    got = {path: tuple(v.shape) for path, v in flat.items()}
    if got != want:
        diffs = sorted({"/".join(p) + f": expected {want.get(p)}, got {got.get(p)}"
                        for p in set(want) | set(got) if want.get(p) != got.get(p)})
        raise ValueError(f"{folder}: parameters do not match config.json: " + "; ".join(diffs))
    meta_file = folder / "conversion.json"
    if verify and meta_file.is_file():
        expected = json.loads(meta_file.read_text()).get("params_crc32")
        actual = params_crc32(params)
        if expected is not None and expected != actual:
            raise ValueError(f"{folder}: parameters are corrupt (CRC32 {actual}, "
                             f"conversion.json records {expected})")
    return config, jax.tree.map(jnp.asarray, params)


# --------------------------------------------------------------------------------------------
# CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bert_jax.convert",
        description="Convert a PyTorch BERT checkpoint into a bert-jax folder: params/ (orbax), "
                    "config.json and vocab.txt.",
        epilog="SRC is a HuggingFace BERT folder (config.json + model.safetensors or "
               "pytorch_model.bin), a single .safetensors/.bin/.pt state dict of a HuggingFace "
               "BertModel (config.json and vocab.txt beside it, or --config/--vocab), or a "
               "CS224N minBERT checkpoint (torch.save dict with 'model'). Task-head weights "
               "(keys outside the encoder) are listed as skipped.")
    parser.add_argument("src", metavar="SRC", help="checkpoint folder or file")
    parser.add_argument("out", metavar="OUT", help="output folder (created atomically)")
    parser.add_argument("--vocab", metavar="FILE",
                        help="vocab.txt to ship with the model (default: beside SRC)")
    parser.add_argument("--config", metavar="FILE",
                        help="HuggingFace config.json (default: beside SRC; minBERT checkpoints "
                             "infer it from tensor shapes)")
    parser.add_argument("--allow-missing-pooler", action="store_true",
                        help="convert a checkpoint without pooler weights (the model then runs "
                             "with add_pooling_layer=False)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 on success, 1 on a conversion error)."""
    args = build_parser().parse_args(argv)
    try:
        convert_checkpoint(args.src, args.out, vocab_file=args.vocab, config_file=args.config,
                           allow_missing_pooler=args.allow_missing_pooler,
                           overwrite=args.overwrite, verbose=True)
    except (ConversionError, FileNotFoundError, FileExistsError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {Path(args.out).resolve()} (params/, config.json, vocab.txt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""An export folder (written by `python -m bert_jax.export`): its files, the PyTorch names of the
encoder and task-head parameters, and reading it back (`load_export`, for `MultitaskModel.load`).

Beside a transformers `BertModel` folder (`config.json`, `model.safetensors`, `vocab.txt`, ...),
an export of a training run holds `heads.safetensors` (every head Dense layer of every task as
PyTorch `nn.Linear` tensors) and `heads_config.json` (the `HeadConfig`: pooling, the built-in
heads, the run's own task definitions as `extra_tasks` (`Task.to_dict` each; absent from exports
written before tasks were data: none), and the training `max_length`); every export holds
`export.json` (provenance), by which it is recognised (`is_export`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors import SafetensorError
from safetensors.numpy import load_file

from bert_jax.checkpoint_files import read_json_object
from bert_jax.config import BertConfig, check_vocab
from bert_jax.converted import OutputKind, convert_checkpoint
from bert_jax.errors import ConversionError, ExportError
from bert_jax.heads import HeadConfig, init_multitask_params
from bert_jax.tasks import Task
from bert_jax.weight_names import LEAVES, rename_table

HEADS_WEIGHTS, HEADS_CONFIG, EXPORT_INFO = "heads.safetensors", "heads_config.json", "export.json"
# An earlier export holds export.json; --overwrite replaces nothing else (check_output_folder).
EXPORTED = OutputKind(EXPORT_INFO, "an earlier export", "exported/", ExportError)


@dataclasses.dataclass
class ModelFiles:
    """A model ready to export (or loaded from an export).

    `encoder`: the `BertModel` parameter tree (float32 numpy); `heads`/`head_params`: the
    `HeadConfig` and the head parameter tree (`MultitaskBert` names without "bert"), None for a
    pretrained encoder; `max_length`: the training max_length (None when unknown); `protect`:
    the source paths an output must never replace; `info`: provenance for `export.json`.
    """
    bert_config: BertConfig
    encoder: dict
    vocab_file: Path
    heads: Any = None
    head_params: dict | None = None
    max_length: int | None = None
    protect: list = dataclasses.field(default_factory=list)
    info: dict = dataclasses.field(default_factory=dict)

    @property
    def params(self) -> dict:
        """The whole `MultitaskBert` tree (encoder under "bert" and the heads)."""
        return {"bert": self.encoder, **(self.head_params or {})}


# --------------------------------------------------------------------------------------------
# Names: the converter's tables (bert_jax.weight_names), run backwards.

def encoder_state_dict(config: BertConfig, encoder: dict) -> dict[str, np.ndarray]:
    """The `BertModel` parameter tree as a HuggingFace `BertModel` state dict (numpy float32,
    PyTorch layout: Linear weights [out, in]), through `bert_jax.weight_names.rename_table`."""
    flat = flatten_dict(encoder)
    pooler = ("pooler", "dense", "kernel") in flat
    table = rename_table("huggingface", config, prefix="", pooler=pooler)
    missing = sorted("/".join(p) for _, (p, _) in table.items() if p not in flat)
    extra = sorted("/".join(p) for p in set(flat) - {p for p, _ in table.values()})
    if missing or extra:
        raise ExportError("the encoder parameters do not match its config.json: "
                          + "; ".join(filter(None, [
                              missing and "missing " + ", ".join(missing),
                              extra and "unexpected " + ", ".join(extra)])))
    return {key: np.ascontiguousarray(flat[path].T if transpose else flat[path], np.float32)
            for key, (path, transpose) in table.items()}


def _dense_leaves() -> dict[str, tuple[str, bool]]:
    """Flax Dense leaf -> (torch Linear leaf, transpose): the converter's "dense" kind reversed."""
    return {flax: (torch, transpose) for torch, (flax, transpose) in LEAVES["dense"].items()}


def heads_state_dict(head_params: dict) -> dict[str, np.ndarray]:
    """Head parameters ({"sst_classifier": {"kernel", "bias"}, ...}) as dotted PyTorch
    `nn.Linear` names: "sst_classifier.weight" [out, in], "sst_classifier.bias" [out]."""
    leaves, state = _dense_leaves(), {}
    for path, value in flatten_dict(head_params).items():
        module, leaf = ".".join(path[:-1]), path[-1]
        if leaf not in leaves:
            raise ExportError(f"head parameter {'/'.join(path)}: not a Dense layer's kernel/bias")
        name, transpose = leaves[leaf]
        state[f"{module}.{name}"] = np.ascontiguousarray(value.T if transpose else value,
                                                         np.float32)
    return state


def heads_from_state_dict(state: dict[str, np.ndarray]) -> dict:
    """The inverse of `heads_state_dict` (a head layer is one module: "<name>.weight" ->
    {"<name>": {"kernel"}}, whatever its name holds)."""
    leaves = {torch: (flax, transpose) for flax, (torch, transpose) in _dense_leaves().items()}
    flat = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        if leaf not in leaves or not module:
            raise ExportError(f"{key}: not a head Linear layer's weight/bias")
        name, transpose = leaves[leaf]
        flat[(module, name)] = np.ascontiguousarray(
            value.T if transpose else value, np.float32)
    return unflatten_dict(flat)


# --------------------------------------------------------------------------------------------
# Reading an export back.

def is_export(folder: str | Path) -> bool:
    """True for a folder written by `python -m bert_jax.export` (it holds `export.json`)."""
    return (Path(folder) / EXPORTED.marker).is_file()


def load_export(folder: str | Path) -> ModelFiles:
    """An export folder back as `ModelFiles` (encoder through `convert_checkpoint`, heads from
    heads.safetensors, checked against the HeadConfig's shapes). Raises ExportError for an
    export without task heads (made from a pretrained encoder)."""
    folder = Path(folder)
    if not (folder / HEADS_CONFIG).is_file() or not (folder / HEADS_WEIGHTS).is_file():
        raise ExportError(f"{folder}: an export without task heads ({HEADS_CONFIG} and "
                          f"{HEADS_WEIGHTS}); it was made from a pretrained encoder: load it with "
                          "MultitaskModel.from_pretrained(folder) (fresh heads)")
    heads, max_length = _read_heads_config(folder / HEADS_CONFIG)
    try:
        config, encoder, _ = convert_checkpoint(folder, verbose=False)
    except ConversionError as err:  # one line: the first problems, then the fix
        first, *rest = [line.strip() for line in str(err).splitlines()]
        problems = " ".join([first, "; ".join(rest)]).strip()
        raise ExportError(f"{problems[:400]}{' ...' if len(problems) > 400 else ''}; the export "
                          "is damaged: export the run again") from None
    check_vocab(folder / "vocab.txt", config, ExportError)
    try:
        head_params = heads_from_state_dict(load_file(folder / HEADS_WEIGHTS))
    except (SafetensorError, OSError) as err:
        raise ExportError(f"{folder / HEADS_WEIGHTS}: cannot read it (truncated or corrupt?): "
                          f"{err}; export the run again") from None
    want = jax.eval_shape(lambda: init_multitask_params(config, heads, jax.random.key(0)))
    want = {p: tuple(v.shape) for p, v in flatten_dict(want).items() if p[0] != "bert"}
    got = {p: tuple(v.shape) for p, v in flatten_dict(head_params).items()}
    if want != got:
        diffs = sorted("/".join(p) + f": expected {want.get(p)}, got {got.get(p)}"
                       for p in set(want) | set(got) if want.get(p) != got.get(p))
        raise ExportError(f"{folder / HEADS_WEIGHTS}: does not match {HEADS_CONFIG} ({heads}): "
                          + "; ".join(diffs))
    return ModelFiles(config, encoder, folder / "vocab.txt", heads, head_params, max_length,
                      [folder],
                      {"source": str(folder.resolve()), "source_kind": "export"})


def _read_heads_config(path: Path) -> tuple[HeadConfig, int | None]:
    """(HeadConfig, training max_length or None) from an export's heads_config.json; ExportError
    naming the file when it is damaged."""
    def damaged(why: str) -> ExportError:
        return ExportError(f"{path}: {why}; the file is damaged: export the run again")
    values = read_json_object(path, damaged)
    try:
        tasks = values.get("extra_tasks", [])  # none in an export from before tasks as data
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise ValueError(f"extra_tasks {tasks!r} is not a list of task definitions")
        heads = HeadConfig(**{f.name: values[f.name] for f in dataclasses.fields(HeadConfig)
                              if f.name in values and f.name != "extra_tasks"},
                           extra_tasks=tuple(Task.from_dict(t) for t in tasks))
    except (TypeError, ValueError) as err:  # TaskError is a ValueError
        raise damaged(str(err)) from None
    max_length = values.get("max_length")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                   or max_length < 2):
        raise damaged(f"max_length {max_length!r} is not a whole number of at least 2")
    return heads, max_length

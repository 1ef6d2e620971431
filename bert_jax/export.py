"""Flax model -> PyTorch world: a `transformers` BertModel folder or a sentence-transformers model.

    python -m bert_jax.export SRC OUT [--format hf|sentence-transformers] [--which best|last]

SRC is a training run folder (`--out` of `python -m train.multitask`), a folder written by
`python -m bert_jax.convert` (or a HuggingFace BERT folder), an earlier export, or the embedded
default's name (`all-MiniLM-L6-v2`). OUT then holds:

* `hf` (both formats): `config.json` (a standard HuggingFace BertConfig), `model.safetensors`
  (a `BertModel` state dict in PyTorch's layout and names: the converter's rename table run
  backwards), `vocab.txt`, `tokenizer.json` and
  `tokenizer_config.json`, so `transformers.AutoModel.from_pretrained(OUT)` and
  `AutoTokenizer.from_pretrained(OUT)` load it. No torch is needed to export.
* `sentence-transformers`: the same plus `modules.json`, `sentence_bert_config.json`,
  `config_sentence_transformers.json` and `1_Pooling/config.json`, in the classic layout of the
  hub's sentence-transformers models (read since 2.x; tested with 6.2), so
  `SentenceTransformer(OUT).encode(texts)` gives the model's own embeddings
  (`MultitaskModel.embed`): mean pooling -> `pooling_mode_mean_tokens`;
  the "cls" pooling of this project is BERT's pooler (dense + tanh over the [CLS] state), which
  sentence-transformers' CLS pooling is not, so it is exported as CLS pooling followed by a
  `2_Dense` module (the pooler's weights, Tanh). No Normalize module: these models do not
  normalise their embeddings (the upstream all-MiniLM-L6-v2 does; cosine similarities are the
  same either way). `max_seq_length` is the run's training `max_length` (else 128, as
  `MultitaskModel`), or `--max-length`.
* From a run (or an export of one), the task heads beside them, the built-ins' and the run's
  own tasks' alike: `heads.safetensors` (every head Dense layer as PyTorch `nn.Linear`
  tensors, `sst_classifier.weight` [5, hidden], `<task>_classifier.weight` ...) and
  `heads_config.json` (the `HeadConfig` with the run's task definitions, the training
  `max_length` and each head's formula). `bert_jax.MultitaskModel.load(OUT)` reads such a
  folder back (`bert_jax.exported`), every task's head with it.
* `export.json`: where it came from. `--overwrite` replaces only a folder holding one (an
  earlier export) or an empty folder, and never SRC, a folder holding SRC or lying inside it, or
  the current folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict
from safetensors.numpy import save_file
from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer

from bert_jax import __version__
from bert_jax.cli import prog
from bert_jax.checkpoints import load_run
from bert_jax.checkpoint_files import convert_state_dict
from bert_jax.config import BertConfig
from bert_jax.converted import as_float32_numpy, check_output_folder, staged_folder
from bert_jax.embedded import DEFAULT_MODEL, embedded_model_dir, is_default_name
from bert_jax.errors import BertJaxError, ExportError, MissingFileError
from bert_jax.exported import (EXPORT_INFO, EXPORTED, HEADS_CONFIG, HEADS_WEIGHTS, ModelFiles,
                               encoder_state_dict, heads_state_dict, is_export, load_export)
from bert_jax.heads import head_layer_names
from bert_jax.pretrained import load_pretrained
from bert_jax.tasks import Task
from bert_jax.tokenizer import Tokenizer

FORMATS = ("hf", "sentence-transformers")
DEFAULT_MAX_LENGTH = 128  # MultitaskModel's default for an encoder without a training run
# bert_jax's BertConfig holds fields of HuggingFace's BertConfig only, with the same names.
HF_CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(BertConfig))
SPECIAL_TOKENS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                  "cls_token": "[CLS]", "mask_token": "[MASK]"}
_TANH = "torch.nn.modules.activation.Tanh"


# --------------------------------------------------------------------------------------------
# Describing the model for transformers and for the reader of heads_config.json.

def hf_config(config: BertConfig) -> dict[str, Any]:
    """A standard HuggingFace `BertConfig` dict for `config`."""
    return {"architectures": ["BertModel"], "model_type": "bert",
            **{k: getattr(config, k) for k in HF_CONFIG_FIELDS},
            "position_embedding_type": "absolute"}


def _formula(task: Task) -> str:
    """How `task`'s head turns embeddings into its outputs, in words and torch terms."""
    layers = head_layer_names(task)
    x = {"cross": "w", "concat": f"relu({task.name}_hidden(cat([|u - v|, u * v])))"}.get(
        task.head, "u - v" if len(task.sides) == 2 else "u")
    value = (f"{task.range[1]:g} * cos(u, v)" if task.head == "cosine" else
             f"{layers[-1]}({x})")
    if not task.is_classification:
        low, high = task.range
        return f"{value}: {task.label} on the {low:g}..{high:g} scale"
    classes = ", ".join(str(c) for c in task.classes)
    if task.num_outputs > 1:
        return f"{value}: {task.num_outputs} logits, one per class in order ({classes})"
    return (f"{value}: 1 logit (sigmoid > 0.5: {task.classes[1]}, else {task.classes[0]})")


def head_formulas(heads) -> dict[str, str]:
    """How each task's head turns sequence embeddings into outputs (for heads_config.json):
    one entry per task of `heads.tasks`, and what u, v and w are."""
    embed = ("pooler_output of BertModel (dense + tanh over the [CLS] state)"
             if heads.pooling == "cls" else
             "mean of BertModel's last_hidden_state over the attention_mask")
    formulas = {"u, v": f"sentence embeddings: {embed}; single sentences, token_type_ids 0"}
    if any(t.encoding == "cross" for t in heads.tasks):
        formulas["w"] = (f"the embedding ({embed}) of a cross-encoded pair: one sequence "
                         "[CLS] a [SEP] b [SEP], token_type_ids 0 to the first [SEP], 1 after it")
    formulas.update((t.name, _formula(t)) for t in heads.tasks)
    formulas["layers"] = ("every name.weight/name.bias pair is a torch.nn.Linear "
                          "(y = x W^T + b); dropout only in training")
    return formulas


def heads_config(heads, max_length: int) -> dict[str, Any]:
    """heads_config.json: the `HeadConfig` (its own tasks as `Task.to_dict` each), the
    training `max_length` and the heads' formulas."""
    values = {f.name: getattr(heads, f.name) for f in dataclasses.fields(heads)}
    values["extra_tasks"] = [t.to_dict() for t in heads.extra_tasks]
    return {**values, "tasks": list(heads.names), "max_length": max_length,
            "formulas": head_formulas(heads)}


# --------------------------------------------------------------------------------------------
# Reading sources.

def load_source(src: str | Path, which: str = "best") -> ModelFiles:
    """What `src` holds: a training run folder (checkpoint `which`), an export, a converted or
    HuggingFace folder / state-dict file, or the embedded default by name."""
    if is_default_name(src):
        folder = embedded_model_dir()
        config, encoder = load_pretrained(src)
        return ModelFiles(config, as_float32_numpy(encoder), folder / "vocab.txt",
                          protect=[folder], info={"source": DEFAULT_MODEL,
                                                  "source_kind": "default"})
    path = Path(src)
    if not path.exists():
        raise MissingFileError(
            f"{path}: no such file or folder. Pass a training run folder (--out of "
            "train.multitask), a folder written by bert_jax.convert, or "
            f"{DEFAULT_MODEL!r}")
    if path.is_dir() and (path / "train_config.json").is_file():
        run = load_run(path, which)
        params = as_float32_numpy(run.params)
        train_config = json.loads((path / "train_config.json").read_text())
        heads = {k: v for k, v in params.items() if k != "bert"}
        return ModelFiles(run.bert_config, params["bert"], run.vocab_file, run.heads, heads,
                          int(train_config.get("max_length", DEFAULT_MAX_LENGTH)), [path],
                          {"source": str(path.resolve()), "source_kind": "run",
                           "checkpoint": which, "checkpoint_meta": run.meta})
    if path.is_dir() and is_export(path) and (path / HEADS_CONFIG).is_file():
        files = load_export(path)
        files.encoder = as_float32_numpy(files.encoder)
        return files
    config, encoder = load_pretrained(path)
    folder = path if path.is_dir() else path.parent
    if not (folder / "vocab.txt").is_file():
        raise MissingFileError(f"{folder}: no vocab.txt there to export with the model")
    return ModelFiles(config, as_float32_numpy(encoder), folder / "vocab.txt", protect=[path],
                      info={"source": str(path.resolve()),
                            "source_kind": "converted" if (folder / "params").is_dir()
                            else "huggingface"})


# --------------------------------------------------------------------------------------------
# Writing.

def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def _write_tokenizer(folder: Path, vocab_file: Path, config: BertConfig) -> None:
    shutil.copyfile(vocab_file, folder / "vocab.txt")
    ours = Tokenizer(vocab_file)  # lowercasing, accent-stripping BERT rules, [CLS] a [SEP] b [SEP]
    tok = HFTokenizer.from_str(ours._tok.to_str())
    vocab = tok.get_vocab()
    specials = {k: v for k, v in SPECIAL_TOKENS.items() if v in vocab}
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in sorted(specials.values(), key=vocab.get)])
    tok.save(str(folder / "tokenizer.json"))
    _write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "BertTokenizer", "do_lower_case": True, "do_basic_tokenize": True,
        "tokenize_chinese_chars": True, "strip_accents": None, "never_split": None,
        "clean_up_tokenization_spaces": True, "model_max_length": config.max_position_embeddings,
        "padding_side": "right", "truncation_side": "right", **specials})


def _write_sentence_transformers(folder: Path, files: ModelFiles, pooling: str,
                                 max_length: int) -> list[str]:
    hidden = files.bert_config.hidden_size
    modules = [{"idx": 0, "name": "0", "path": "",
                "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling"}]
    _write_json(folder / "sentence_bert_config.json",
                {"max_seq_length": max_length, "do_lower_case": False})
    _write_json(folder / "config_sentence_transformers.json",
                {"model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None,
                 "similarity_fn_name": "cosine"})
    (folder / "1_Pooling").mkdir()
    _write_json(folder / "1_Pooling" / "config.json", {
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False})
    written = ["modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
               "1_Pooling/"]
    if pooling == "cls":  # BERT's pooler: CLS token -> Dense(tanh), as MultitaskBert.embed
        dense = files.encoder["pooler"]["dense"]
        (folder / "2_Dense").mkdir()
        _write_json(folder / "2_Dense" / "config.json", {
            "in_features": hidden, "out_features": hidden, "bias": True,
            "activation_function": _TANH})
        save_file({"linear.weight": np.ascontiguousarray(dense["kernel"].T, np.float32),
                   "linear.bias": np.ascontiguousarray(dense["bias"], np.float32)},
                  str(folder / "2_Dense" / "model.safetensors"), metadata={"format": "pt"})
        shutil.copymode(folder / "config.json", folder / "2_Dense" / "model.safetensors")
        modules.append({"idx": 2, "name": "2", "path": "2_Dense",
                        "type": "sentence_transformers.models.Dense"})
        written.append("2_Dense/")
    _write_json(folder / "modules.json", modules)
    return written


def export_model(files: ModelFiles, out_dir: str | Path, fmt: str = "hf", *,
                 max_length: int | None = None, overwrite: bool = False) -> str:
    """Write `files` to `out_dir` in format `fmt` ("hf" or "sentence-transformers").

    Built in a temporary sibling folder and renamed into place, so OUT is either untouched or
    complete. Returns a one-line description of what was written. Raises ExportError /
    FileExistsError for an OUT that `check_output_folder` refuses.
    """
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    config = files.bert_config
    pooling = files.heads.pooling if files.heads is not None else "mean"
    max_length = max_length or files.max_length or DEFAULT_MAX_LENGTH
    if max_length > config.max_position_embeddings:
        raise ExportError(f"max length {max_length} is more than the model's "
                          f"max_position_embeddings {config.max_position_embeddings}")
    out = Path(out_dir).resolve()
    check_output_folder(out, [*files.protect, files.vocab_file], overwrite, EXPORTED)

    state = encoder_state_dict(config, files.encoder)
    pooler = "pooler.dense.weight" in state
    if pooling == "cls" and not pooler:
        raise ExportError("the model pools with BERT's pooler but has no pooler weights")
    # The converter must read back exactly what was exported (every key, shape and value).
    again, _ = convert_state_dict(state, config, allow_missing_pooler=not pooler,
                                  source="the exported state dict")
    flat_in, flat_again = flatten_dict(files.encoder), flatten_dict(again)
    if set(flat_in) != set(flat_again) or any(
            not np.array_equal(flat_in[p], flat_again[p]) for p in flat_in):
        raise ExportError("internal error: the exported state dict does not convert back to "
                          "the same parameters")
    if not pooler:
        warnings.warn("the model has no pooler: transformers will initialise a random one "
                      "(ignore pooler_output, or load with add_pooling_layer=False)", stacklevel=2)

    with staged_folder(out) as tmp:
        _write_json(tmp / "config.json", hf_config(config))
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        shutil.copymode(tmp / "config.json", tmp / "model.safetensors")  # not 0600
        _write_tokenizer(tmp, files.vocab_file, config)
        parts = ["BertModel for transformers (config.json, model.safetensors, vocab.txt, "
                 "tokenizer.json, tokenizer_config.json)"]
        if fmt == "sentence-transformers":
            written = _write_sentence_transformers(tmp, files, pooling, max_length)
            parts.append(f"sentence-transformers modules ({pooling} pooling"
                         + (" + Dense(tanh) = BERT's pooler" if pooling == "cls" else "")
                         + f", max_seq_length {max_length}: {', '.join(written)})")
        if files.heads is not None:
            save_file(heads_state_dict(files.head_params), str(tmp / HEADS_WEIGHTS),
                      metadata={"format": "pt"})
            shutil.copymode(tmp / "config.json", tmp / HEADS_WEIGHTS)
            _write_json(tmp / HEADS_CONFIG, heads_config(files.heads, max_length))
            parts.append(f"task heads of {', '.join(files.heads.names)} ({HEADS_WEIGHTS}, "
                         f"{HEADS_CONFIG})")
        _write_json(tmp / EXPORT_INFO, {"format": fmt, **files.info,
                                        "bert_jax_version": __version__})
    return f"wrote {out}: " + "; ".join(parts)


# --------------------------------------------------------------------------------------------
# CLI

def _max_length_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"{value} is too small: pass 2 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog("bert_jax.export"),
        description="Export a bert-jax model for PyTorch: a transformers BertModel folder, or a "
                    "sentence-transformers model, with the task heads beside it.",
        epilog="SRC is a training run folder (--out of train.multitask), a folder written by "
               "bert_jax.convert, an earlier export, or 'all-MiniLM-L6-v2' (the embedded "
               "default). Load the result with transformers.AutoModel.from_pretrained(OUT), "
               "SentenceTransformer(OUT) or bert_jax.MultitaskModel.load(OUT).")
    parser.add_argument("src", metavar="SRC", help="the model to export (see below).")
    parser.add_argument("out", metavar="OUT", help="the folder to write (created atomically).")
    parser.add_argument("--format", choices=FORMATS, default="hf",
                        help="hf writes a transformers BertModel folder; sentence-transformers "
                             "adds the modules SentenceTransformer(OUT) needs (default hf).")
    parser.add_argument("--which", choices=("best", "last"), default="best",
                        help="which checkpoint of a training run to export (default best).")
    parser.add_argument("--max-length", type=_max_length_arg, metavar="N",
                        help="max_seq_length of the sentence-transformers model (default the "
                             f"run's training max_length, else {DEFAULT_MAX_LENGTH}).")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT when it holds an earlier export.")
    return parser


def _source_paths(src: str) -> list[Path]:
    """The paths an output must not replace, known before loading `src`."""
    if is_default_name(src):
        try:
            return [embedded_model_dir()]
        except FileNotFoundError:
            return []
    return [Path(src)]


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0, or 2 with one `error: ...` line)."""
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # Refuse a bad OUT before the (slow) loading; export_model checks again.
            check_output_folder(Path(args.out), _source_paths(args.src), args.overwrite,
                                EXPORTED)
            files = load_source(args.src, args.which)
            line = export_model(files, args.out, args.format, max_length=args.max_length,
                                overwrite=args.overwrite)
        for w in caught:
            if issubclass(w.category, UserWarning):
                print(f"warning: {w.message}", file=sys.stderr)
    except BertJaxError as err:  # ExportError, ConversionError, CheckpointError, OutputWriteError
        message = "; ".join(s.strip() for s in str(err).splitlines() if s.strip())
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

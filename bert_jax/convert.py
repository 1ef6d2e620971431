"""PyTorch BERT checkpoints -> Flax parameters (and the CLI `python -m bert_jax.convert`).

Sources (see `convert_checkpoint`):

* a HuggingFace BERT folder (`config.json` with `model.safetensors` or `pytorch_model.bin`);
* one `.safetensors` / `.bin` / `.pt` state dict of a HuggingFace `BertModel` (keys with or
  without a `bert.` prefix); config from `config_file` or a `config.json` beside it;
* a checkpoint of the CS224N minBERT PyTorch code: a `torch.save` dict whose `model` entry uses
  minBERT's names (`bert.word_embedding`, `bert.bert_layers.N.self_attention.query`, ...).

The core is `convert_state_dict`: the source format's rename table (`bert_jax.weight_names`),
Linear weights transposed to Flax kernels, LayerNorm `weight` -> `scale`. Every source key is
accounted for: converted, a known buffer (`position_ids`), or a task-head key outside the
encoder (reported as skipped). Missing, unexpected and mis-shaped keys raise `ConversionError`
listing all of them. Files are read by `bert_jax.checkpoint_files`; the result is saved as a
converted folder (`bert_jax.converted`: `params/`, `config.json`, `vocab.txt`, `conversion.json`).

CLI: `python -m bert_jax.convert SRC OUT [--vocab FILE] [--config FILE]`.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from bert_jax.checkpoint_files import find_weights, infer_config, read_checkpoint, read_config
from bert_jax.config import BertConfig
from bert_jax.converted import Params, save_converted
from bert_jax.embedded import embedded_model_dir
from bert_jax.errors import BertJaxError, ConversionError, MissingFileError
from bert_jax.weight_names import FORMATS, detect_format, expected_shapes, rename_table
from bert_jax.cli import prog


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
# Converting.

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
                        f"({_shape_summary(config)}): " + "; ".join(misshaped))
    if problems:
        raise ConversionError(f"{source}: cannot convert:\n  " + "\n  ".join(problems))

    flat = {}
    for key, (path, transpose) in table.items():
        value = np.asarray(state[key], dtype=np.float32)
        flat[path] = np.ascontiguousarray(value.T) if transpose else value
        report.converted.append(key)
    return traverse_util.unflatten_dict(flat), report


def _shape_summary(config: BertConfig) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.shape_dict().items())


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
            raise MissingFileError(f"{src}: no config.json there (pass config_file / --config)")
    elif src.is_file():
        weights, folder = src, src.parent
    else:
        raise MissingFileError(f"{src}: no such file or folder")
    config_file = config_file or (folder / "config.json" if (folder / "config.json").is_file()
                                  else None)
    config = read_config(config_file) if config_file is not None else None
    state, extras = read_checkpoint(weights)
    source_format, _ = detect_format(state.keys(), str(weights))

    notes = []
    if config is None:
        if source_format != "minbert":
            raise ConversionError(f"{weights}: no config.json beside it: pass config_file / "
                                  "--config")
        hints = extras.get("model_config")
        config = infer_config(state, hints)
        heads = ("from model_config" if getattr(hints, "num_attention_heads", None)
                 else "assumed from BERT's head size 64")
        notes.append(f"config inferred from tensor shapes ({_shape_summary(config)}; "
                     f"num_attention_heads {heads}); pass --config to override")

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
        vocab = embedded_model_dir() / "vocab.txt"
        report.notes.append(f"vocab: {vocab} (bert-base-uncased's WordPiece vocabulary, which "
                            "minBERT uses); pass --vocab to choose another")
        return vocab
    raise MissingFileError(f"{folder}: no vocab.txt there (pass vocab_file / --vocab)")


# --------------------------------------------------------------------------------------------
# CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog("bert_jax.convert"),
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
    except BertJaxError as err:  # ConversionError, MissingFileError, OutputExistsError, ...
        print(f"error: {err}", file=sys.stderr)
        return 1
    out = Path(args.out).resolve()
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
    print(f"wrote {out} ({', '.join(names)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

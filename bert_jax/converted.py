"""Converting a PyTorch BERT checkpoint (`convert_checkpoint`), the converted-folder format, and
the guard every tool that writes a model folder uses.

`convert_checkpoint` reads a HuggingFace folder, a state-dict file or a CS224N minBERT checkpoint
(`bert_jax.checkpoint_files`) and converts it (`convert_state_dict`), in memory or into a
converted folder. A converted folder (written by `save_converted`, read by `load_converted`)
holds `params/` (an orbax StandardCheckpointer checkpoint of the float32 parameter tree),
`config.json` (`BertConfig.to_json`: the model's shape only), `vocab.txt` and `conversion.json`
(provenance, skipped keys and a CRC32 of the parameters, checked on load). The command line is
`python -m bert_jax.convert`.

`check_output_folder` and `staged_folder` serve the converter and the export alike: an output
folder is built beside its target and renamed into place, and `--overwrite` replaces only an
earlier output of the same tool (recognised by its marker file).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import uuid
import warnings
import zlib
from pathlib import Path
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from bert_jax.checkpoint_files import (ConversionReport, Params, convert_state_dict,
                                      find_weights, infer_config, read_checkpoint, read_config,
                                      shape_summary)
from bert_jax.checkpoints import quiet_save_threads
from bert_jax.config import BertConfig
from bert_jax.embedded import embedded_model_dir
from bert_jax.errors import (BertJaxError, ConversionError, MissingFileError, OutputExistsError,
                             OutputWriteError, write_failure)
from bert_jax.weight_names import detect_format, expected_shapes


# --------------------------------------------------------------------------------------------
# Output folders: what may be replaced, and replacing it atomically.

@dataclasses.dataclass(frozen=True)
class OutputKind:
    """What one tool writes, for `check_output_folder`.

    `marker`: the file only this tool writes, by which an earlier output is recognised (the only
    folder `--overwrite` replaces); `name`: how a refusal names such a folder ("a converted model
    folder"); `example`: an OUT to suggest; `error`: the error raised for a refused OUT.
    """
    marker: str
    name: str
    example: str
    error: type[BertJaxError]


CONVERTED = OutputKind("conversion.json", "a converted model folder", "converted/",
                       ConversionError)


def check_output_folder(out: Path, protect: list[Path], overwrite: bool,
                        kind: OutputKind) -> None:
    """Refuse an OUT whose (re)placement would destroy what it must not.

    OUT may not be or hold the current folder, be or hold a path of `protect` (the sources), nor
    lie inside a protected folder. An existing OUT must be a folder; unless empty it needs
    `overwrite`, and even then must be an earlier output of this `kind` (it holds
    `kind.marker`). Raises `kind.error` (or FileExistsError without `overwrite`) naming the paths.
    """
    out = out.resolve()
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise kind.error(f"{out}: OUT is the current folder or holds it; pass a new folder "
                         f"(e.g. {kind.example})")
    for source in protect:
        source = Path(source).resolve()
        if out == source or out in source.parents:
            raise kind.error(f"{out}: OUT is or holds the source {source}; replacing it would "
                             "delete the source. Pass another OUT")
        if source.is_dir() and source in out.parents:
            raise kind.error(f"{out}: OUT lies inside the source folder {source}; pass a "
                             "folder outside it")
    if not out.exists():
        return
    if not out.is_dir():
        raise kind.error(f"{out}: exists and is not a folder; pass another OUT")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise OutputExistsError(f"{out}: already exists and is not empty (pass --overwrite / "
                              f"overwrite=True to replace {kind.name})")
    if not (out / kind.marker).is_file():
        raise kind.error(f"{out}: exists and is not {kind.name} (no {kind.marker}); --overwrite "
                         "replaces only those. Pass another OUT, or remove it yourself")


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Yield a new temporary folder beside `out` to fill; when the block ends without error it
    replaces `out` (renamed into place), so `out` is always either as before or complete. On an
    error the temporary folder is removed and `out` left as it was. A write the disk refuses
    (permissions, a full disk: an OSError, or tensorstore's ValueError saying so) becomes
    `OutputWriteError` naming `out`."""
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as err:
        raise OutputWriteError(f"{out}: cannot create it ({err.strerror or err})") from err
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = None if isinstance(err, BertJaxError) else write_failure(err)
        if reason is not None:  # an OSError, or tensorstore's ValueError for a full disk
            raise OutputWriteError(f"{out}: cannot write it ({reason}); free disk space or "
                                   "choose another folder") from err
        raise


# --------------------------------------------------------------------------------------------
# The converted-folder format.

def as_float32_numpy(params: Params) -> Params:
    """The parameter tree with every leaf a float32 numpy array."""
    return jax.tree.map(lambda x: np.asarray(x, dtype=np.float32), params)


def params_crc32(params: Params) -> str:
    """A CRC32 over every parameter's path, shape, dtype and bytes (to detect corruption)."""
    crc = 0
    for path, value in sorted(traverse_util.flatten_dict(params).items()):
        value = np.ascontiguousarray(np.asarray(value))
        crc = zlib.crc32(f"{'/'.join(path)}:{value.shape}:{value.dtype}".encode(), crc)
        crc = zlib.crc32(value.data, crc)
    return f"{crc:08x}"


def save_converted(out_dir: str | Path, params: Params, config: BertConfig,
                   vocab_file: str | Path, *, overwrite: bool = False,
                   metadata: dict[str, Any] | None = None,
                   protect: list[Path] | None = None) -> Path:
    """Write `params/` (orbax), `config.json`, `vocab.txt`, `conversion.json` to `out_dir`.

    Built in a temporary sibling folder and renamed into place, so `out_dir` is either absent or
    complete. An existing, non-empty `out_dir` raises `FileExistsError` unless `overwrite`, and
    even then only an earlier conversion is replaced; `out_dir` may never be, hold or lie inside
    a path of `protect` (the sources), nor be or hold the current folder
    (`check_output_folder`).
    """
    out = Path(out_dir).resolve()
    vocab_file = Path(vocab_file)
    check_output_folder(out, [*(protect or []), vocab_file], overwrite, CONVERTED)
    if not vocab_file.is_file():
        raise MissingFileError(f"{vocab_file}: no such vocab file")
    with vocab_file.open(encoding="utf-8") as f:
        vocab_lines = sum(1 for _ in f)
    if vocab_lines > config.vocab_size:
        raise ConversionError(f"{vocab_file}: {vocab_lines} tokens, more than the model's "
                              f"vocab_size {config.vocab_size}")
    with staged_folder(out) as tmp:
        params = as_float32_numpy(params)
        with quiet_save_threads(), ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(tmp / "params", params)
            checkpointer.wait_until_finished()
        config.to_json(tmp / "config.json")
        shutil.copyfile(vocab_file, tmp / "vocab.txt")
        meta = {**(metadata or {}), "params_crc32": params_crc32(params)}
        (tmp / CONVERTED.marker).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def load_converted(folder: str | Path, *, verify: bool = True) -> tuple[BertConfig, Params]:
    """Load a folder written by `save_converted`: (config, params as float32 jax arrays).

    The parameter tree is checked against the config's shapes (with or without the pooler) and,
    when `verify`, against the CRC32 recorded in `conversion.json`; mismatches raise ValueError.
    """
    folder = Path(folder).resolve()
    if not (folder / "params").is_dir():
        raise MissingFileError(f"{folder}: no params/ there (not a converted folder)")
    config = read_config(folder / "config.json")
    with ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore(folder / "params")
    params = as_float32_numpy(params)
    flat = traverse_util.flatten_dict(params)
    want = expected_shapes(config, pooler=("pooler", "dense", "kernel") in flat)
    got = {path: tuple(v.shape) for path, v in flat.items()}
    if got != want:
        diffs = sorted({"/".join(p) + f": expected {want.get(p)}, got {got.get(p)}"
                        for p in set(want) | set(got) if want.get(p) != got.get(p)})
        raise ValueError(f"{folder}: parameters do not match config.json: " + "; ".join(diffs))
    meta_file = folder / CONVERTED.marker
    if verify and meta_file.is_file():
        expected = json.loads(meta_file.read_text()).get("params_crc32")
        actual = params_crc32(params)
        if expected is not None and expected != actual:
            raise ValueError(f"{folder}: parameters are corrupt (CRC32 {actual}, "
                             f"conversion.json records {expected})")
    return config, jax.tree.map(jnp.asarray, params)


# --------------------------------------------------------------------------------------------
# Converting a checkpoint (into a converted folder, or in memory).

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
        notes.append(f"config inferred from tensor shapes ({shape_summary(config)}; "
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

"""The device check's stages that need JAX alone: correctness on the device and model FLOP
utilisation (`python -m benchmarks.device_stages STAGE --ctx FILE --result FILE`).

`device_check` runs each stage in its own process with its own time limit; a stage writes its
figures to the result file as it goes (`Results`), so a stage stopped at its limit still leaves
what it had measured. `stage_main` is the entry point that `device_speed` shares.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import jax
import numpy as np
import safetensors.numpy

from bert_jax.cs224n import default_file, find_data_dir, load_split
from benchmarks import cli
from bert_jax.config import PRESETS
from bert_jax.embedded import resolve_model_dir
from bert_jax.model import BertModel, init_params
from bert_jax.packing import pack
from bert_jax.pretrained import load_pretrained
from bert_jax.tokenizer import Tokenizer, pad_ids
from bert_jax.weight_names import rename_table

MAX_LENGTH = 128


class Results:
    """A stage's figures, written to `path` (JSON) after every update."""

    def __init__(self, path: str | Path):
        self.path, self.values = Path(path), {}

    def update(self, **values) -> None:
        self.values.update(values)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.values, indent=1, default=float))
        tmp.replace(self.path)

    def error(self, what: str, err: BaseException) -> None:
        """Record a failed part of the stage (the stage goes on with its other parts)."""
        traceback.print_exc()
        line = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}" \
            if str(err).strip() else type(err).__name__
        self.update(_errors=self.values.get("_errors", []) + [f"{what}: {line}"])


def device_info() -> dict:
    dev = jax.devices()[0]
    return {"device": dev.device_kind, "platform": dev.platform,
            "device_count": jax.device_count()}


def bench_args(ctx: dict, flags: list[str]):
    """`python -m benchmarks`'s arguments for `flags`, with the check's data and weights."""
    base = ["--init", ctx["weights"], "--seed", "0"]
    if ctx.get("data_dir"):
        base += ["--data-dir", ctx["data_dir"]]
    return cli.build_parser().parse_args(base + flags)


def attention_for_fixed_lengths() -> str:
    """cuDNN's fused attention where JAX runs on an NVIDIA GPU (the fastest there for fixed
    lengths), XLA's elsewhere."""
    return "cudnn" if jax.default_backend() == "gpu" else "xla"


def tiny_model(ctx: dict, out: Results) -> None:
    """--smoke: a tiny random BERT (`PRESETS["tiny"]`) as a HuggingFace folder with the
    vocabulary and tokenizer files of the check's weights, in the check's temporary folder:
    every stage then compiles in seconds on a CPU. Written from numpy (nothing compiled)."""
    source = resolve_model_dir(ctx["weights"])
    folder = Path(ctx["tmp"]) / "tiny-model"
    folder.mkdir(parents=True, exist_ok=True)
    config = PRESETS["tiny"]
    rng = np.random.default_rng(0)

    def fresh(path, leaf):
        name = path[-1].key
        if name in ("scale", "bias"):  # LayerNorm 1, biases 0; the rest N(0, 0.02)
            return np.full(leaf.shape, 1.0 if name == "scale" else 0.0, np.float32)
        return (0.02 * rng.standard_normal(leaf.shape)).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(
        fresh, jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0))))
    state = {}
    for key, (path, transpose) in rename_table("huggingface", config).items():
        value = params
        for part in path:
            value = value[part]
        state[key] = np.ascontiguousarray(value.T if transpose else value)
    safetensors.numpy.save_file(state, str(folder / "model.safetensors"))
    hf = json.loads((source / "config.json").read_text())
    hf.update({k: getattr(config, k) for k in ("hidden_size", "num_hidden_layers",
                                               "num_attention_heads", "intermediate_size",
                                               "max_position_embeddings", "vocab_size")})
    (folder / "config.json").write_text(json.dumps(hf, indent=1))
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    out.update(**device_info(), weights=str(folder))


# ------------------------------------------------------------------------------ correctness

def sts_dev_sentences(ctx: dict, tokenizer: Tokenizer, n: int) -> list[np.ndarray]:
    """The first n/2 sentence pairs of the STS dev file, as the project's token ids."""
    folder = find_data_dir(ctx.get("data_dir"))
    ds = load_split(folder / default_file("sts", "dev"), "sts",
                    skip_bad_rows=True)
    texts = list(ds["sentence1"][:n // 2]) + list(ds["sentence2"][:n // 2])
    return tokenizer.encode_ids(texts, max_length=MAX_LENGTH)


def hidden_fn(config, dtype: str = "float32", attention_impl: str = "xla") -> Callable:
    """jit-compiled padded pass: (params, ids, mask) -> last hidden states [B, T, D]."""
    model = BertModel(config, dtype=dtype, attention_impl=attention_impl)
    return jax.jit(lambda p, i, m: model.apply({"params": p}, i, m).last_hidden_state)


def packed_hidden(config, params, rows: dict, n: int) -> np.ndarray:
    model = BertModel(config)
    fn = jax.jit(lambda p, i, s, q: model.apply({"params": p}, i, None, None, position_ids=q,
                                                segment_ids=s, num_segments=n).last_hidden_state)
    return np.asarray(fn(params, rows["input_ids"], rows["segment_ids"], rows["position_ids"]),
                      np.float32)


def pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    return (hidden.astype(np.float32) * m).sum(1) / np.maximum(m.sum(1), 1e-9)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two [N, D] arrays."""
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1),
                                        1e-12)


def correctness(ctx: dict, out: Results) -> None:
    """Packed vs padded (float32), bfloat16 vs float32 and cuDNN vs XLA attention (bfloat16,
    unpadded positions) on real STS dev sentences through the encoder of the check's weights."""
    n = 32 if ctx["smoke"] else 256
    config, params = load_pretrained(ctx["weights"])
    sentences = sts_dev_sentences(ctx, Tokenizer.from_pretrained(ctx["weights"]), n)
    n = len(sentences)
    length = -(-max(len(s) for s in sentences) // 64) * 64  # cuDNN-friendly padded length
    ids, mask = pad_ids(sentences, length)
    out.update(**device_info(), correctness_sentences=n, correctness_padded_length=length)

    with jax.default_matmul_precision("highest"):  # float32 proper (no TF32) for this check
        h_pad = np.asarray(hidden_fn(config)(params, ids, mask), np.float32)
        rows = pack(sentences, MAX_LENGTH)
        h_pack = packed_hidden(config, params, rows, n)
    e_pad = pooled(h_pad, mask)
    hidden_diff, e_pack = 0.0, np.zeros_like(e_pad)
    for k, sentence in enumerate(sentences):
        r, c = np.nonzero(rows["segment_ids"] == k + 1)
        hidden_diff = max(hidden_diff, float(np.abs(h_pack[r, c] - h_pad[k, :len(sentence)]).max()))
        e_pack[k] = h_pack[r, c].mean(0)
    out.update(packed_vs_padded_max_abs_diff=float(np.abs(e_pack - e_pad).max()),
               packed_vs_padded_hidden_max_abs_diff=hidden_diff,
               packed_rows=int(rows["input_ids"].shape[0]))

    h_bf16 = np.asarray(hidden_fn(config, "bfloat16")(params, ids, mask), np.float32)
    out.update(bf16_vs_f32_min_cosine=float(cosines(pooled(h_bf16, mask), e_pad).min()))

    if jax.default_backend() != "gpu":
        out.update(cudnn_vs_xla_status=f"n/a: cuDNN attention needs an NVIDIA GPU "
                                       f"(JAX runs on {jax.default_backend()})")
        return
    try:
        h_cudnn = np.asarray(hidden_fn(config, "bfloat16", "cudnn")(params, ids, mask),
                             np.float32)
        real = mask.astype(bool)
        out.update(cudnn_vs_xla_max_abs_diff=float(np.abs(h_cudnn[real] - h_bf16[real]).max()),
                   cudnn_vs_xla_min_token_cosine=float(cosines(h_cudnn[real], h_bf16[real]).min()),
                   cudnn_vs_xla_min_cosine=float(cosines(pooled(h_cudnn, mask),
                                                         pooled(h_bf16, mask)).min()),
                   cudnn_vs_xla_status="ok")
    except Exception as err:  # noqa: BLE001 - recorded; the check goes on
        out.error("cudnn_vs_xla", err)


# ------------------------------------------------------------------------------ utilisation

def mfu(ctx: dict, out: Results) -> None:
    """bert-base's shape at 256 examples per task x 128 tokens in bfloat16 (JAX alone): model
    FLOP utilisation of the multitask train step against the device's peak."""
    smoke = ctx["smoke"]
    # --limit-train: the bench plans an epoch of real steps even for fixed lengths; it needs a
    # batch's worth of examples per task, and no more (tokenizing all would cost seconds).
    flags = ["--model", "tiny", "--batch-size", "2", "--seq-len", "16", "--repeats", "2",
             "--warmup", "1", "--limit-train", "64"] if smoke else \
        ["--model", "bert-base", "--batch-size", "256", "--seq-len", "128", "--repeats", "5",
         "--warmup", "2", "--limit-train", "512"]
    args = bench_args(ctx, flags + ["--dtype", "bfloat16", "--attention-impl",
                                    attention_for_fixed_lengths(), "--skip-encode", "--no-torch"])
    out.update(**device_info(), bert_base_256x128_shape=f"{args.model}, {args.batch_size} "
               f"examples per task ({5 * args.batch_size} sequences) x {args.seq_len} tokens, "
               f"bfloat16, attention {args.attention_impl}")
    res = cli.run(args, [], None, [], None)
    out.update(bert_base_256x128_mfu_jax=res.get("train_mfu_jax"),
               bert_base_256x128_tflops_jax=(res.get("train_flops_per_s_jax") or 0) / 1e12,
               bert_base_256x128_seq_per_s_jax=res.get("train_seq_per_s_jax"),
               bert_base_256x128_step_seconds_jax=res.get("train_step_seconds_jax"),
               bert_base_256x128_compile_seconds_jax=res.get("compile_seconds_jax"))


STAGES = {"tiny_model": tiny_model, "correctness": correctness, "mfu": mfu}


def stage_main(stages: dict[str, Callable], argv: list[str] | None = None) -> int:
    """Run one stage: `STAGE --ctx FILE --result FILE`; 1 when it (or a part of it) failed."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("stage", choices=sorted(stages))
    p.add_argument("--ctx", required=True, help="the check's context (JSON)")
    p.add_argument("--result", required=True, help="where the stage writes its figures (JSON)")
    args = p.parse_args(argv)
    ctx = json.loads(Path(args.ctx).read_text())
    out = Results(args.result)
    start = time.perf_counter()
    try:
        stages[args.stage](ctx, out)
    except Exception as err:  # noqa: BLE001 - recorded in the result; the check goes on
        out.error(args.stage, err)
    print(f"stage {args.stage}: {time.perf_counter() - start:.1f} s", flush=True)
    return 1 if out.values.get("_errors") else 0


if __name__ == "__main__":
    sys.exit(stage_main(STAGES))

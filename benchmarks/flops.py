"""Analytic model FLOPs, parameter counts and device peaks (for model FLOP utilisation)."""
from __future__ import annotations

import jax
import numpy as np

from bert_jax.config import BertConfig

# Dense peak FLOP/s per chip, by compute dtype ("float32" on NVIDIA GPUs = TF32 tensor cores,
# which XLA uses for float32 matmuls by default; PyTorch is set to match on GPU). Matched against
# `device.device_kind` by substring, first match wins (so "H100 PCIe" comes before "H100").
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"bfloat16": 756e12, "float16": 756e12, "float32": 378e12}),
    ("H100", {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12}),
    ("H200", {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12}),
    ("GH200", {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12}),
    ("B200", {"bfloat16": 2250e12, "float16": 2250e12, "float32": 1100e12}),
    ("A100", {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12}),
    ("L40S", {"bfloat16": 362e12, "float16": 362e12, "float32": 183e12}),
    ("L4", {"bfloat16": 121e12, "float16": 121e12, "float32": 60e12}),
    ("A10", {"bfloat16": 125e12, "float16": 125e12, "float32": 62.5e12}),
    ("V100", {"float16": 125e12, "float32": 15.7e12}),
    ("T4", {"float16": 65e12, "float32": 8.1e12}),
    ("TPU v4", {"bfloat16": 275e12, "float32": 275e12}),
    ("TPU v5 lite", {"bfloat16": 197e12, "float32": 197e12}),
    ("TPU v5e", {"bfloat16": 197e12, "float32": 197e12}),
    ("TPU v5", {"bfloat16": 459e12, "float32": 459e12}),
    ("TPU v6", {"bfloat16": 918e12, "float32": 918e12}),
]


def peak_flops(device_kind: str, dtype: str) -> float | None:
    for name, peaks in PEAK_FLOPS:
        if name.lower() in device_kind.lower():
            return peaks.get(dtype)
    return None


def device_peak(device_info: dict, dtype: str) -> float | None:
    """The peak of `device_info` ({"platform", "device_kind"}) at `dtype`; None on CPU."""
    if device_info["platform"] == "cpu":
        return None
    return peak_flops(device_info["device_kind"], dtype)


def count_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def non_embedding_params(params) -> int:
    """Parameters of the encoder layers and the heads (not embeddings, not the unused pooler)."""
    bert = params["bert"]
    heads = {k: v for k, v in params.items() if k != "bert"}
    return count_params(bert["encoder"]) + count_params(heads)


def layout_flops(n_params: int, config: BertConfig, shapes, train: bool) -> float:
    """`model_flops` summed over a step's encoder inputs, `shapes` = [(rows, length), ...]."""
    return sum(model_flops(n_params, config, rows, length, train) for rows, length in shapes)


def model_flops(n_params: int, config: BertConfig, sequences: int, length: int,
                train: bool) -> float:
    """Analytic model FLOPs of one pass over `sequences` sentences padded to `length`."""
    forward = (2.0 * n_params * sequences * length
               + 4.0 * config.num_hidden_layers * sequences * length ** 2 * config.hidden_size)
    return 3.0 * forward if train else forward

"""Model shape: `BertConfig`, read from a HuggingFace `config.json`, and a few named presets.

Knows nothing of Flax or data: it is plain configuration that the model, the converter and the
trainer pass around explicitly.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from bert_jax.errors import ConfigError, MissingFileError

ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Shape and numerics of a BERT encoder (field names follow HuggingFace's `BertConfig`).

    `dtype` is the compute dtype of activations and matmuls; parameters are always stored in
    `param_dtype` (float32). `attention_impl` picks the `jax.nn.dot_product_attention`
    implementation: "xla" (everywhere) or "cudnn" (NVIDIA GPUs, float16/bfloat16 only; it has no
    attention-probability dropout, so that dropout is skipped when training with it).
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: str = "xla"

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a whole number of at least 1, not {value!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), not {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}")
        if self.dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"dtype {self.dtype!r} is not one of {COMPUTE_DTYPES}")
        if self.attention_impl not in ATTENTION_IMPLEMENTATIONS:
            raise ConfigError(
                f"attention_impl {self.attention_impl!r} is not one of {ATTENTION_IMPLEMENTATIONS}")
        if self.hidden_act not in ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu"):
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not supported")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def replace(self, **changes: Any) -> "BertConfig":
        return dataclasses.replace(self, **changes)

    def shape_dict(self) -> dict[str, int]:
        """The fields that decide parameter shapes (used to refuse mismatched checkpoints)."""
        return {k: getattr(self, k) for k in (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "max_position_embeddings", "type_vocab_size")}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "BertConfig":
        """Build from a HuggingFace-style dict, ignoring keys that are not model shape."""
        model_type = values.get("model_type", "bert")
        if model_type not in ("bert", None):
            raise ConfigError(f"model_type {model_type!r} is not BERT")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    @classmethod
    def from_json(cls, path: str | Path) -> "BertConfig":
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError:
            raise MissingFileError(f"{path}: no config.json there") from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from None
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": "bert", **dataclasses.asdict(self)}

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


PRESETS: dict[str, BertConfig] = {
    # sentence-transformers/all-MiniLM-L6-v2, the embedded default.
    "minilm-l6": BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                            intermediate_size=1536),
    "bert-base": BertConfig(),
    "bert-large": BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                             intermediate_size=4096),
    # A tiny model for tests and smoke runs.
    "tiny": BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, max_position_embeddings=128),
}

"""Model shape: `BertConfig`, read from a HuggingFace `config.json`, and a few named presets.

Knows nothing of Flax or data: it is plain configuration that the model, the converter and the
trainer pass around explicitly. How the model is run (compute dtype, attention kernel) is no
part of it: those are chosen where the model is built (`bert_jax.model.BertModel`'s `dtype` and
`attention_impl`), so a saved `config.json` describes the weights only, as HuggingFace's does.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from bert_jax.errors import ConfigError, MissingFileError

# The largest value each size field may take: far beyond any BERT (bert-large: hidden 1,024,
# 24 layers; multilingual vocabularies ~250,000), small enough that a damaged config.json
# (hidden_size 10**12) is refused before anything is allocated.
_SIZE_LIMITS = {"vocab_size": 1 << 22, "hidden_size": 1 << 16, "num_hidden_layers": 1024,
                "num_attention_heads": 1024, "intermediate_size": 1 << 18,
                "max_position_embeddings": 1 << 20, "type_vocab_size": 1024}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Shape of a BERT encoder: the fields of HuggingFace's `BertConfig` this model uses (same
    names and meanings). Keys of a `config.json` that are not fields (HuggingFace's
    `torch_dtype`, or the `dtype`, `param_dtype` and `attention_impl` that this project's run and
    converted folders saved before those became run-time choices) are ignored on reading.
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
    initializer_range: float = 0.02

    def __post_init__(self):
        for name, most in _SIZE_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
                raise ConfigError(f"{name} must be a whole number from 1 to {most:,}, "
                                  f"not {value!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} must be a number in [0, 1), not {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}")
        for name in ("initializer_range", "layer_norm_eps"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 < value < 1:
                raise ConfigError(f"{name} must be a number in (0, 1), not {value!r}")
        if (isinstance(self.pad_token_id, bool) or not isinstance(self.pad_token_id, int)
                or not 0 <= self.pad_token_id < self.vocab_size):
            raise ConfigError(f"pad_token_id must be a whole number from 0 to vocab_size - 1 "
                              f"({self.vocab_size - 1}), not {self.pad_token_id!r}")
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
        """Build from a HuggingFace-style dict, ignoring keys that are not fields (not shape).
        Raises ConfigError for anything but a dict and for a field out of its range."""
        if not isinstance(values, dict):
            raise ConfigError(f"a model config must be a JSON object (keys such as hidden_size), "
                              f"not {type(values).__name__}")
        model_type = values.get("model_type", "bert")
        if model_type not in ("bert", None):
            raise ConfigError(f"model_type {model_type!r} is not BERT")
        names = {f.name for f in dataclasses.fields(cls)}
        # null (JSON's "unset", as some HuggingFace configs write pad_token_id) keeps the default
        return cls(**{k: v for k, v in values.items() if k in names and v is not None})

    @classmethod
    def from_json(cls, path: str | Path) -> "BertConfig":
        """Read `path` (a config.json); ConfigError naming the file for anything not a BERT
        config (not JSON, not an object, a field out of range), MissingFileError if absent."""
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise MissingFileError(f"{path}: no config.json there") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"{path}: not a readable JSON file ({err}); restore the model's "
                              "config.json") from None
        try:
            return cls.from_dict(values)
        except ConfigError as err:
            raise ConfigError(f"{path}: not a usable BERT config: {err}; restore the model's "
                              "config.json") from None

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": "bert", **dataclasses.asdict(self)}

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


# Embedding tables may hold up to this many rows more than the vocabulary's lines (padded to a
# multiple of 64 or 128 for speed); a shorter vocabulary is a different or truncated file.
VOCAB_PADDING = 128


def check_vocab(vocab_file: str | Path, config: BertConfig,
                error: type[Exception] = ConfigError) -> int:
    """The number of tokens (lines) of `vocab_file`, after checking that they fit the model's
    word embedding (`config.vocab_size` rows): not empty, no more than that, and no more than
    `VOCAB_PADDING` fewer. Raises `error` naming the file."""
    path = Path(vocab_file)
    try:
        with path.open(encoding="utf-8") as f:
            lines = sum(1 for _ in f)
    except FileNotFoundError:
        raise MissingFileError(f"{path}: no vocab.txt there") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{path}: not a readable vocabulary ({err}); restore the model's "
                    "vocab.txt") from None
    if not config.vocab_size - VOCAB_PADDING < lines <= config.vocab_size:
        raise error(f"{path}: {lines} tokens, but the model's word embedding has "
                    f"{config.vocab_size} rows (config.json vocab_size): the vocabulary and the "
                    "model do not fit; restore the model's vocab.txt and config.json")
    return lines


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

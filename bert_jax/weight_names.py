"""PyTorch BERT names <-> Flax parameter paths: the rename tables of the converter (and, run
backwards, of the export).

Two source formats: HuggingFace's `BertModel` ("huggingface") and the CS224N minBERT code
("minbert"). Each maps source module names to Flax module paths and a kind ("embed", "dense",
"norm"); the kind gives the leaves (`LEAVES`): Linear weights are transposed into Flax kernels,
LayerNorm `weight` becomes `scale`.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

import jax
from flax import traverse_util

from bert_jax.config import BertConfig
from bert_jax.errors import ConversionError
from bert_jax.model import init_params

# Source module name -> (Flax module path, kind).
Modules = dict[str, tuple[tuple[str, ...], str]]


class SourceFormat(NamedTuple):
    """The names of one source format."""
    top: Modules            # modules outside the layers (embeddings)
    layer_pattern: str      # prefix of layer i's modules, with "{i}"
    layer: Modules          # the modules of one layer
    pooler: str             # the pooler's dense module
    word_key: str           # the word-embedding weight, which identifies the format
    buffers: tuple[str, ...]  # keys ignored on purpose (not parameters)


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
FORMATS = {
    "huggingface": SourceFormat(_HF_TOP, "encoder.layer.{i}.", _HF_LAYER, "pooler.dense",
                                "embeddings.word_embeddings.weight",
                                ("embeddings.position_ids", "embeddings.token_type_ids")),
    "minbert": SourceFormat(_MINBERT_TOP, "bert_layers.{i}.", _MINBERT_LAYER, "pooler_dense",
                            "word_embedding.weight", ("position_ids",)),
}
# kind -> {torch leaf: (flax leaf, transpose)}
LEAVES = {
    "embed": {"weight": ("embedding", False)},
    "dense": {"weight": ("kernel", True), "bias": ("bias", False)},
    "norm": {"weight": ("scale", False), "bias": ("bias", False)},
}


def source_name(source_format: str, flax_path: tuple[str, ...]) -> str:
    """The source module name of a Flax module path (e.g. ("intermediate", "dense") in a layer,
    or ("embeddings", "position_embeddings")), without prefix or layer pattern."""
    fmt = FORMATS[source_format]
    for name, (path, _) in (*fmt.top.items(), *fmt.layer.items()):
        if path == flax_path:
            return name
    raise KeyError(f"{source_format}: no module for {'/'.join(flax_path)}")


def rename_table(source_format: str, config: BertConfig, prefix: str = "",
                 pooler: bool = True) -> dict[str, tuple[tuple[str, ...], bool]]:
    """Source key -> (Flax parameter path, transpose?) for every parameter of `config`'s model."""
    fmt = FORMATS[source_format]
    modules = dict(fmt.top)
    for i in range(config.num_hidden_layers):
        for name, (path, kind) in fmt.layer.items():
            modules[fmt.layer_pattern.format(i=i) + name] = (("encoder", f"layer_{i}") + path,
                                                             kind)
    if pooler:
        modules[fmt.pooler] = (("pooler", "dense"), "dense")
    return {f"{prefix}{name}.{leaf}": (path + (flax_leaf,), transpose)
            for name, (path, kind) in modules.items()
            for leaf, (flax_leaf, transpose) in LEAVES[kind].items()}


def detect_format(keys: Iterable[str], source: str = "state dict") -> tuple[str, str]:
    """(source format, encoder key prefix) from the word-embedding key; raises if not BERT."""
    found = []
    for key in keys:
        for name, fmt in FORMATS.items():
            if key.endswith(fmt.word_key):
                prefix = key[:-len(fmt.word_key)]
                if prefix == "" or prefix.endswith("."):
                    found.append((name, prefix))
    if len(found) == 1:
        return found[0]
    if found:
        raise ConversionError(f"{source}: ambiguous checkpoint, several word embeddings: "
                              + ", ".join(f"{p}{FORMATS[f].word_key}" for f, p in found))
    keys = list(keys)
    raise ConversionError(
        f"{source}: not a BERT checkpoint: it has no word-embedding weight "
        "('[bert.]embeddings.word_embeddings.weight' as in HuggingFace BertModel, or "
        f"'bert.word_embedding.weight' as in minBERT). Its {len(keys)} keys are under: "
        + ", ".join(sorted({k.split(".")[0] for k in keys})[:12]) + "; they begin: "
        + ", ".join(keys[:6]))


def expected_shapes(config: BertConfig, pooler: bool = True) -> dict[tuple[str, ...], tuple]:
    """Flax parameter path -> shape for `config`, computed abstractly (no allocation)."""
    tree = jax.eval_shape(lambda: init_params(config, jax.random.key(0), pooler))
    return {path: tuple(leaf.shape) for path, leaf in traverse_util.flatten_dict(tree).items()}

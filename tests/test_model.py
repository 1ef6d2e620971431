"""bert_jax/model.py: the Flax encoder against PyTorch `transformers.BertModel` (CPU, float32).

Real all-MiniLM-L6-v2 weights and a randomly initialised bert-base-shaped model converted through
the CLI; padded batches of single sentences and of sentence pairs (token_type_ids 1).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require

torch = require("torch")
transformers = require("transformers")

from bert_jax import BertModel, Tokenizer, load_pretrained, mean_pool  # noqa: E402
from bert_jax.config import PRESETS, BertConfig  # noqa: E402
from bert_jax.convert import main as convert_main  # noqa: E402
from bert_jax.errors import ConfigError  # noqa: E402
from bert_jax.model import BertEmbeddings, init_params  # noqa: E402
from bert_jax.pretrained import embedded_model_dir  # noqa: E402

ATOL = 1e-4
SINGLES = ["Hi!",
           "A much longer sentence, with several more words in it than the others have.",
           "it's a lovely film with lovely performances."]
PAIRS = (["How do I learn JAX?", "What is the capital of France?", "Is this a paraphrase?"],
         ["What is the best way to learn JAX quickly and well?", "Paris.",
          "Is this sentence a paraphrase of that one, or not at all?"])


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(embedded_model_dir() / "vocab.txt")


@pytest.fixture(scope="module")
def batches(tokenizer):
    """Two int32 batches [3, T] (T <= 16): single sentences and pairs, padded to the longest."""
    return {"singles": tokenizer(SINGLES, max_length=16, padding="longest"),
            "pairs": tokenizer(*PAIRS, max_length=16, padding="longest")}


@pytest.fixture(scope="module")
def minilm_torch():
    return transformers.BertModel.from_pretrained(embedded_model_dir()).eval()


@pytest.fixture(scope="module")
def bert_base(tmp_path_factory):
    """(torch model, config, params): a random bert-base saved by HF and converted by the CLI."""
    root = tmp_path_factory.mktemp("bert_base")
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig()).eval()  # bert-base shape
    model.save_pretrained(root / "hf")
    (root / "hf" / "vocab.txt").write_bytes((embedded_model_dir() / "vocab.txt").read_bytes())
    assert convert_main([str(root / "hf"), str(root / "converted")]) == 0
    config, params = load_pretrained(root / "converted")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (768, 12, 12)
    return model, config, params


def torch_forward(model, batch):
    """(last_hidden_state [B, T, D], pooler_output [B, D], masked mean [B, D]) as numpy."""
    inputs = {k: torch.from_numpy(batch[k].astype(np.int64))
              for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        out = model(**inputs)
    mask = inputs["attention_mask"].unsqueeze(-1).float()
    mean = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
    return out.last_hidden_state.numpy(), out.pooler_output.numpy(), mean.numpy()


def jax_forward(config, params, batch, dtype=jnp.float32, **kwargs):
    return BertModel(config, dtype=dtype).apply({"params": params}, batch["input_ids"],
                                                batch["attention_mask"], batch["token_type_ids"],
                                                **kwargs)


def assert_matches_torch(model, config, params, batch):
    hidden, pooled, mean = torch_forward(model, batch)
    out = jax_forward(config, params, batch)
    keep = batch["attention_mask"].astype(bool)
    assert np.abs(np.asarray(out.last_hidden_state)[keep] - hidden[keep]).max() < ATOL
    assert np.abs(np.asarray(out.pooler_output) - pooled).max() < ATOL
    ours = mean_pool(out.last_hidden_state, batch["attention_mask"])
    assert np.abs(np.asarray(ours) - mean).max() < ATOL


@pytest.mark.parametrize("kind", ["singles", "pairs"])
def test_minilm_matches_torch(kind, batches, minilm_torch, default_model):
    batch = batches[kind]
    assert batch["attention_mask"].min() == 0  # padding present
    if kind == "pairs":
        assert batch["token_type_ids"].max() == 1
    assert_matches_torch(minilm_torch, *default_model, batch)


@pytest.mark.slow
def test_bert_base_matches_torch(batches, bert_base):
    for batch in batches.values():
        assert_matches_torch(*bert_base, batch)


def cosine(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_bfloat16_agrees_with_float32(batches, default_model):
    config, params = default_model
    for batch in batches.values():
        full = jax_forward(config, params, batch)
        half = jax_forward(config, params, batch, dtype=jnp.bfloat16)
        assert half.last_hidden_state.dtype == jnp.bfloat16
        mask = batch["attention_mask"]
        assert cosine(mean_pool(full.last_hidden_state, mask),
                      mean_pool(half.last_hidden_state, mask)).min() >= 0.999


def test_dropout(batches, default_model, minilm_torch):
    """deterministic=True is the reference (PyTorch in eval mode); deterministic=False drops
    out: the same rng gives the same output, another rng another one, and both differ from the
    reference; attention-probability dropout acts on its own, and rates of 0 change nothing."""
    config, params = default_model
    batch = batches["pairs"]
    keep = batch["attention_mask"].astype(bool)
    hidden, _, _ = torch_forward(minilm_torch, batch)
    reference = np.asarray(jax_forward(config, params, batch, deterministic=True)
                           .last_hidden_state)
    assert np.abs(reference[keep] - hidden[keep]).max() < ATOL

    def noisy(cfg, seed):
        return np.asarray(jax_forward(cfg, params, batch, deterministic=False,
                                      rngs={"dropout": jax.random.key(seed)}).last_hidden_state)

    first, again, other = noisy(config, 0), noisy(config, 0), noisy(config, 1)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first[keep] - other[keep]).mean() > 0.05
    assert np.abs(first[keep] - reference[keep]).mean() > 0.05
    attention_only = config.replace(hidden_dropout_prob=0.0)
    assert np.abs(noisy(attention_only, 0)[keep] - reference[keep]).mean() > 0.01
    no_dropout = config.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    np.testing.assert_allclose(noisy(no_dropout, 0)[keep], reference[keep], atol=1e-6)


def test_embedding_dropout_zeroes_its_rate_and_rescales_the_rest(default_model, batches):
    """Inverted dropout on the embeddings: about `hidden_dropout_prob` of the values become 0,
    the others are the deterministic values / (1 - p)."""
    config, params = default_model
    batch = batches["singles"]
    module = BertEmbeddings(config)
    args = ({"params": params["embeddings"]}, batch["input_ids"], batch["token_type_ids"])
    exact = np.asarray(module.apply(*args, deterministic=True))
    dropped = np.asarray(module.apply(*args, deterministic=False,
                                      rngs={"dropout": jax.random.key(0)}))
    zero = dropped == 0
    p = config.hidden_dropout_prob
    assert abs(zero.mean() - p) < 0.01, zero.mean()  # ~18,000 values
    np.testing.assert_allclose(dropped[~zero], exact[~zero] / (1 - p), rtol=1e-6, atol=1e-6)


def test_jit_matches_torch(batches, default_model, minilm_torch):
    """The compiled encoder (what training and inference run) against PyTorch, not against
    itself: XLA fusions may not change the numbers beyond float32 noise."""
    config, params = default_model
    batch = batches["pairs"]
    model = BertModel(config)
    apply = jax.jit(lambda p, ids, mask, tt: model.apply({"params": p}, ids, mask, tt))
    jitted = apply(params, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    hidden, pooled, _ = torch_forward(minilm_torch, batch)
    keep = batch["attention_mask"].astype(bool)
    assert np.abs(np.asarray(jitted.last_hidden_state)[keep] - hidden[keep]).max() < ATOL
    assert np.abs(np.asarray(jitted.pooler_output) - pooled).max() < ATOL


def test_cudnn_attention_is_refused_off_gpu_with_a_clear_message():
    if jax.default_backend() == "gpu":
        pytest.skip("runs where there is no GPU")
    params = init_params(PRESETS["tiny"], jax.random.PRNGKey(0))
    model = BertModel(PRESETS["tiny"], dtype=jnp.bfloat16, attention_impl="cudnn")
    with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
        model.apply({"params": params}, jnp.ones((1, 4), jnp.int32))


def test_dtype_and_attention_are_how_the_model_runs_not_its_shape():
    """BertConfig holds HuggingFace's shape fields only; the compute dtype and the attention
    kernel are arguments of the module, checked when it runs."""
    fields = set(BertConfig.__dataclass_fields__)
    assert not {"dtype", "param_dtype", "attention_impl"} & fields
    assert fields <= set(transformers.BertConfig().to_dict())
    params = init_params(PRESETS["tiny"], jax.random.PRNGKey(0))
    ids = jnp.ones((1, 4), jnp.int32)
    with pytest.raises(ConfigError, match="flash.*not one of xla, cudnn"):
        BertModel(PRESETS["tiny"], attention_impl="flash").apply({"params": params}, ids)
    with pytest.raises(ConfigError, match="int8 is not one of float32, bfloat16, float16"):
        BertModel(PRESETS["tiny"], dtype=jnp.int8).apply({"params": params}, ids)
    out = BertModel(PRESETS["tiny"], dtype="bfloat16").apply({"params": params}, ids)
    assert out.last_hidden_state.dtype == jnp.bfloat16

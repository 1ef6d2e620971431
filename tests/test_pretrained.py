"""bert_jax/pretrained.py: the embedded default is sha256-checked, converted once into a cache
and loaded from it; a damaged cache is rebuilt and an unwritable one does not stop the load."""
from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

from bert_jax import BertConfig, converted, embedded, load_pretrained, pretrained
from bert_jax.api import MultitaskModel
from bert_jax.errors import ChecksumError


def test_default_sha_mismatch(tmp_path, monkeypatch):
    src = embedded.embedded_model_dir()
    copy = tmp_path / "model"
    copy.mkdir()
    for item in src.iterdir():
        if item.name != "model.safetensors":
            (copy / item.name).symlink_to(item)
    data = bytearray((src / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.safetensors").write_bytes(data)
    monkeypatch.setattr(pretrained, "embedded_model_dir", lambda: copy)
    with pytest.raises(ChecksumError) as err:
        load_pretrained("all-MiniLM-L6-v2", cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert str(copy / "model.safetensors") in message
    assert embedded.DEFAULT_MODEL_SHA256 in message
    assert pretrained.file_sha256(copy / "model.safetensors") in message
    assert not (tmp_path / "cache").exists()


def test_default_second_load_uses_cache(default_model, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("converted again instead of loading the cache")
    monkeypatch.setattr(pretrained, "convert_checkpoint", refuse)
    config, params = load_pretrained("all-MiniLM-L6-v2")
    assert config == default_model[0] == BertConfig(
        hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    jax.tree.map(np.testing.assert_array_equal, params, default_model[1])


def test_default_corrupt_cache_is_rebuilt(tmp_path, default_model, bert_jax_cache):
    (entry,) = bert_jax_cache.glob("all-MiniLM-L6-v2-*")
    damaged = tmp_path / entry.name
    shutil.copytree(entry, damaged)
    meta = json.loads((damaged / "conversion.json").read_text())
    meta["params_crc32"] = "00000000"
    (damaged / "conversion.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="cached conversion unusable.*corrupt"):
        _, params = load_pretrained("all-MiniLM-L6-v2", cache_dir=tmp_path)
    jax.tree.map(np.testing.assert_array_equal, params, default_model[1])
    assert json.loads((damaged / "conversion.json").read_text())["params_crc32"] != "00000000"
    converted.load_converted(damaged)  # rebuilt and intact


def test_default_with_an_unwritable_cache_still_loads(tmp_path, default_model):
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("x")
    with pytest.warns(UserWarning, match="could not cache the converted model"):
        config, params = load_pretrained("all-MiniLM-L6-v2", cache_dir=blocker)
    assert config == default_model[0]
    np.testing.assert_array_equal(
        np.asarray(params["embeddings"]["word_embeddings"]["embedding"]),
        np.asarray(default_model[1]["embeddings"]["word_embeddings"]["embedding"]))


def test_a_converted_folder_with_runtime_settings_in_its_config_still_loads(tiny_model_dir,
                                                                             tmp_path):
    """A converted folder written when config.json also held `dtype`, `param_dtype` and
    `attention_impl`: those keys are ignored, so it loads as the model's shape and runs in
    float32 with XLA attention on the CPU."""
    values = json.loads((tiny_model_dir / "config.json").read_text())
    assert set(values) == {"model_type", *BertConfig.__dataclass_fields__}  # written now
    old = tmp_path / "old"
    shutil.copytree(tiny_model_dir, old)
    values.update(dtype="bfloat16", param_dtype="float32", attention_impl="cudnn")
    (old / "config.json").write_text(json.dumps(values))
    config, params = load_pretrained(old)
    want_config, want_params = load_pretrained(tiny_model_dir)
    assert config == want_config
    jax.tree.map(np.testing.assert_array_equal, params, want_params)
    texts = ["a fine film", "a dull one"]
    np.testing.assert_array_equal(MultitaskModel.from_pretrained(old).embed(texts),
                                  MultitaskModel.from_pretrained(tiny_model_dir).embed(texts))

"""bert_jax.hub: a HuggingFace model name resolves from a local cache laid out as huggingface_hub
lays it out (offline), the offline error path, and a cased vocabulary tokenizes as
BertTokenizerFast does."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from conftest import require

from bert_jax import load_pretrained
from bert_jax.tokenizer import Tokenizer

transformers = require("transformers")
torch = require("torch")

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=64)
CASED_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Hello", "hello", "World", "world",
               "caf", "##é", "##e", "café", "!", "Paris", "paris"]


def hub_cache(root, repo_id, files: dict[str, bytes], revision="0123456789abcdef" * 2 + "abcd"):
    """What huggingface_hub leaves on disk after a download: blobs, a snapshot, refs/main."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for name, data in files.items():
        blob = repo / "blobs" / f"blob-{name}"
        blob.write_bytes(data)
        (snapshot / name).symlink_to(blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture()
def offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_a_hub_name_resolves_from_the_local_cache_offline(offline_cache, tmp_path):
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**TINY))
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(CASED_VOCAB + [f"w{i}" for i in range(48)]))
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    hub_cache(offline_cache, "org/tiny-bert", files)
    config, params = load_pretrained("org/tiny-bert")
    want_config, want = load_pretrained(folder)
    assert config == want_config
    jax.tree.map(np.testing.assert_array_equal, params, want)
    assert Tokenizer.from_pretrained("org/tiny-bert").vocab_size == 64


def test_offline_without_a_cached_copy_says_how_to_get_it(offline_cache):
    with pytest.raises(FileNotFoundError) as err:
        load_pretrained("bert-base-uncased")
    text = str(err.value)
    assert text.startswith("bert-base-uncased: not in the local HuggingFace cache")
    assert "HF_HUB_OFFLINE is set" in text and "hf download bert-base-uncased" in text
    assert "\n" not in text


@pytest.mark.parametrize("lowercase", [False, True])
def test_tokenizer_config_decides_the_case(tmp_path, lowercase):
    (tmp_path / "vocab.txt").write_text("\n".join(CASED_VOCAB) + "\n")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lowercase}))
    ours = Tokenizer.from_pretrained(tmp_path)
    # from_pretrained reads the folder as transformers does (vocab.txt + tokenizer_config.json)
    ref = transformers.BertTokenizerFast.from_pretrained(tmp_path)
    for text in ["Hello World !", "hello Paris", "café Paris", "Café world"]:
        assert ours.encode_ids([text], 32)[0].tolist() == ref(text)["input_ids"], text


def test_nothing_is_downloaded_unless_asked(tmp_path, monkeypatch):
    """Without BERT_JAX_DOWNLOAD=1 a model missing from the cache is an error, and no network
    call is made; with it (and offline unset) the download is attempted."""
    from bert_jax import hub
    calls = []

    def fake_snapshot(repo_id, **kwargs):
        calls.append(kwargs.get("local_files_only", False))
        if kwargs.get("local_files_only"):
            raise hub.LocalEntryNotFoundError("not cached")
        return str(tmp_path)
    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # huggingface_hub reads HF_HUB_OFFLINE once, when first imported: that may have been
    # during an offline_cache test of this process
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("BERT_JAX_DOWNLOAD", raising=False)
    with pytest.raises(FileNotFoundError, match="downloads are off \\(set BERT_JAX_DOWNLOAD=1"):
        hub.hub_model_dir("bert-base-uncased")
    assert calls == [True]  # the cache was read, the network never
    monkeypatch.setenv("BERT_JAX_DOWNLOAD", "1")
    assert hub.hub_model_dir("bert-base-uncased") == tmp_path
    assert calls == [True, True, False]


def test_the_real_lookup_opens_no_connection_by_default(tmp_path, monkeypatch):
    """huggingface_hub's own snapshot_download (not a fake), downloads not asked for, offline
    mode unset: a cached model resolves and a missing one is an error, and neither opens a
    network connection (every socket connect fails the test)."""
    import socket

    from bert_jax import hub
    connects = []

    def no_network(*args, **kwargs):
        connects.append(args)
        raise OSError("network blocked by the test")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # huggingface_hub reads HF_HUB_OFFLINE once, when first imported: that may have been
    # during an offline_cache test of this process
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("BERT_JAX_DOWNLOAD", raising=False)
    snapshot = hub_cache(tmp_path / "hub", "org/cached-bert", {"config.json": b"{}"})
    assert hub.hub_model_dir("org/cached-bert") == snapshot
    with pytest.raises(FileNotFoundError, match="org/missing-bert: not in the local HuggingFace"):
        hub.hub_model_dir("org/missing-bert")
    assert connects == []


@pytest.mark.parametrize("name", ["bert--base", "org/name.", "a" * 97, "a/b/c", "../x",
                                  "my model", "org/x.git"])
def test_a_name_the_hub_rejects_is_one_line_before_any_lookup(name, tmp_path, monkeypatch,
                                                              capsys):
    """Names huggingface_hub refuses (its validate_repo_id) are one error line, by the model
    loader and by predict's command line, with no cache lookup nor download (downloads on)."""
    from bert_jax import hub, predict
    from bert_jax.embedded import resolve_model_dir
    from bert_jax.errors import BertJaxError

    def no_lookup(*args, **kwargs):
        raise AssertionError("snapshot_download called")
    monkeypatch.setattr(hub, "snapshot_download", no_lookup)
    monkeypatch.setenv("BERT_JAX_DOWNLOAD", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # huggingface_hub reads HF_HUB_OFFLINE once, when first imported: that may have been
    # during an offline_cache test of this process
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.chdir(tmp_path)
    for lookup in (resolve_model_dir, hub.hub_model_dir):
        with pytest.raises(BertJaxError) as err:
            lookup(name)
        assert name in str(err.value) and "\n" not in str(err.value)
    sentences = tmp_path / "in.txt"
    sentences.write_text("a man plays\ta man is playing\n")
    assert predict.main([name, "--task", "sts", "--input", str(sentences)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and name in err

"""train.frozen_baseline: the frozen encoder's embeddings, batched and bucketed as predictions
are, equal `MultitaskModel.embed`'s (which pads each batch itself) in input order."""
from __future__ import annotations

import numpy as np

from train.frozen_baseline import embed_sentences


def test_embed_sentences_are_the_models_embeddings_in_order(tiny_model_dir):
    from bert_jax.api import MultitaskModel
    model = MultitaskModel.from_pretrained(str(tiny_model_dir), max_length=32, batch_size=4)
    texts = ["a gorgeous film", "bad", "the cat sat on the mat and looked at the dog for a while",
             "fine", "it is what it is", "no"]  # 6 sentences: a batch of 4, then 2 filled up
    got = embed_sentences(model, model._ids(texts))
    want = model.embed(texts)
    assert got.shape == (len(texts), model.config.hidden_size) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(got[0], got[1])  # rows differ: an order mix-up would show

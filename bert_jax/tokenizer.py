"""WordPiece tokenization through the `tokenizers` library (BERT uncased rules).

`Tokenizer(texts, texts_pair=None, max_length=128)` returns numpy int32 arrays padded to a length
the caller chooses; `encode_ids` returns unpadded id arrays for the data pipeline, which pads each
batch to a length bucket itself, and `encode_pair_ids` the same for pairs encoded together
(`[CLS] a [SEP] b [SEP]`, a cross-encoder's input) with where their token types turn to 1
(`pair_type_ids`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from bert_jax.embedded import resolve_model_dir
from bert_jax.errors import MissingFileError


class Tokenizer:
    """BERT WordPiece tokenizer built from a `vocab.txt` (one token a line, id = line number).

    Normalisation is BERT's: clean control characters, split CJK characters, strip accents and
    lowercase (when `lowercase`). Single sentences become `[CLS] a [SEP]`; pairs become
    `[CLS] a [SEP] b [SEP]` with `token_type_ids` 0 for the first segment and 1 for the second.
    """

    def __init__(self, vocab_file: str | Path, lowercase: bool = True,
                 strip_accents: bool | None = None):
        vocab_file = Path(vocab_file)
        if not vocab_file.is_file():
            raise MissingFileError(f"{vocab_file}: no vocab.txt there")
        vocab = {}
        with vocab_file.open(encoding="utf-8") as f:
            for index, line in enumerate(f):
                token = line.rstrip("\n")
                if token:
                    vocab.setdefault(token, index)
        for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
            if special not in vocab:
                raise ValueError(f"{vocab_file}: the vocabulary has no {special} token")
        self.vocab_file = vocab_file
        self.vocab_size = len(vocab)
        self.pad_id, self.cls_id, self.sep_id = vocab["[PAD]"], vocab["[CLS]"], vocab["[SEP]"]

        tok = _HFTokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents,
            lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", self.cls_id), ("[SEP]", self.sep_id)])
        tok.decoder = decoders.WordPiece(prefix="##")
        self._tok = tok

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path) -> "Tokenizer":
        """From a model name (the embedded default, a HuggingFace name) or a folder holding
        `vocab.txt`; its `tokenizer_config.json` (`do_lower_case`, `strip_accents`) is honoured,
        so a cased model tokenizes as `BertTokenizerFast` does."""
        folder = resolve_model_dir(name_or_path)
        settings = {}
        config_file = folder / "tokenizer_config.json"
        if config_file.is_file():
            settings = json.loads(config_file.read_text(encoding="utf-8"))
        return cls(folder / "vocab.txt", lowercase=bool(settings.get("do_lower_case", True)),
                   strip_accents=settings.get("strip_accents"))

    def _encode(self, texts, texts_pair, max_length):
        if isinstance(texts, str):
            texts = [texts]
        if isinstance(texts_pair, str):
            texts_pair = [texts_pair]
        self._tok.enable_truncation(max_length=max_length, strategy="longest_first")
        self._tok.no_padding()
        if texts_pair is None:
            return self._tok.encode_batch(list(texts))
        if len(texts_pair) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(texts_pair)} texts_pair")
        return self._tok.encode_batch(list(zip(texts, texts_pair)))

    def encode_ids(self, texts: Sequence[str], max_length: int = 512) -> list[np.ndarray]:
        """Unpadded int32 token ids per text (with [CLS]/[SEP]), truncated to `max_length`."""
        return [np.asarray(e.ids, np.int32) for e in self._encode(texts, None, max_length)]

    def encode_pair_ids(self, texts_a: Sequence[str], texts_b: Sequence[str],
                        max_length: int = 512) -> list[tuple[np.ndarray, int]]:
        """Per pair `(ids, first)`: the unpadded int32 joint ids `[CLS] a [SEP] b [SEP]` [n]
        (n <= `max_length`, truncated longest-first: the longer side loses a token at a time,
        exactly as `BertTokenizerFast(a, b, truncation=True, max_length=...)`) and `first`, the
        number of tokens of type 0 (`[CLS] a [SEP]` after truncation). The token types are
        `pair_type_ids(n, first)`. (An empty `b` gives `[CLS] a [SEP] [SEP]`, where
        `BertTokenizerFast` reads `""` as no second text; the loaders reject empty sentences.)"""
        if max_length < 3:
            raise ValueError(f"max_length must be at least 3 for a pair ([CLS], [SEP], [SEP]), "
                             f"not {max_length}")
        if isinstance(texts_a, str) or isinstance(texts_b, str):
            raise TypeError("encode_pair_ids takes two lists of texts, not strings")
        return [(np.asarray(e.ids, np.int32), e.type_ids.count(0))
                for e in self._encode(list(texts_a), list(texts_b), max_length)]

    def count_tokens(self, texts: Sequence[str]) -> np.ndarray:
        """Untruncated length of each text in tokens (with [CLS]/[SEP]): int32 [n]."""
        self._tok.no_truncation()
        self._tok.no_padding()
        return np.asarray([len(e.ids) for e in self._tok.encode_batch(list(texts))], np.int32)

    def __call__(self, texts: str | Sequence[str], texts_pair: str | Sequence[str] | None = None,
                 max_length: int = 128, padding: str = "max_length") -> dict[str, np.ndarray]:
        """Tokenize, truncate to `max_length` and pad.

        padding: "max_length" pads every row to `max_length`; "longest" to the longest row.
        Returns int32 arrays `input_ids`, `attention_mask`, `token_type_ids`, each [n, length].
        """
        if padding not in ("max_length", "longest"):
            raise ValueError(f"padding must be 'max_length' or 'longest', not {padding!r}")
        encodings = self._encode(texts, texts_pair, max_length)
        length = max_length if padding == "max_length" else max(
            (len(e.ids) for e in encodings), default=0)
        out = {k: np.zeros((len(encodings), length), np.int32)
               for k in ("input_ids", "attention_mask", "token_type_ids")}
        out["input_ids"][:] = self.pad_id
        for row, e in enumerate(encodings):
            n = len(e.ids)
            out["input_ids"][row, :n] = e.ids
            out["attention_mask"][row, :n] = 1
            out["token_type_ids"][row, :n] = e.type_ids
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(map(int, ids)), skip_special_tokens=True)


def pair_type_ids(length: int, first: int) -> np.ndarray:
    """Token types of a joint pair of `length` tokens whose first `first` are `[CLS] a [SEP]`:
    int32 [length], 0 before `first` and 1 from it (see `Tokenizer.encode_pair_ids`)."""
    if not 0 <= first <= length:
        raise ValueError(f"first={first} is outside a sequence of {length} tokens")
    types = np.ones(length, np.int32)
    types[:first] = 0
    return types


def pad_ids(rows: Sequence[np.ndarray], length: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pad unpadded id rows to `length`: returns (`input_ids`, `attention_mask`), int32 [n, length].

    Rows longer than `length` raise: the caller picks a length that fits (the batcher's bucket).
    """
    ids = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        if len(row) > length:
            raise ValueError(f"row {i} has {len(row)} tokens, more than the padded length {length}")
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return ids, mask

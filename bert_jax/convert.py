"""The command line `python -m bert_jax.convert SRC OUT [--vocab FILE] [--config FILE]`:
a PyTorch BERT checkpoint -> a converted folder (`params/`, `config.json`, `vocab.txt`,
`conversion.json`).

Sources (see `bert_jax.converted.convert_checkpoint`, which does the work):

* a HuggingFace BERT folder (`config.json` with `model.safetensors` or `pytorch_model.bin`);
* one `.safetensors` / `.bin` / `.pt` state dict of a HuggingFace `BertModel` (keys with or
  without a `bert.` prefix); config from `--config` or a `config.json` beside it;
* a checkpoint of the CS224N minBERT PyTorch code: a `torch.save` dict whose `model` entry uses
  minBERT's names (`bert.word_embedding`, `bert.bert_layers.N.self_attention.query`, ...).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bert_jax.cli import prog
from bert_jax.converted import convert_checkpoint
from bert_jax.errors import BertJaxError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog("bert_jax.convert"),
        description="Convert a PyTorch BERT checkpoint into a bert-jax folder: params/ (orbax), "
                    "config.json and vocab.txt.",
        epilog="SRC is a HuggingFace BERT folder (config.json + model.safetensors or "
               "pytorch_model.bin), a single .safetensors/.bin/.pt state dict of a HuggingFace "
               "BertModel (config.json and vocab.txt beside it, or --config/--vocab), or a "
               "CS224N minBERT checkpoint (torch.save dict with 'model'). Task-head weights "
               "(keys outside the encoder) are listed as skipped.")
    parser.add_argument("src", metavar="SRC", help="checkpoint folder or file")
    parser.add_argument("out", metavar="OUT", help="output folder (created atomically)")
    parser.add_argument("--vocab", metavar="FILE",
                        help="vocab.txt to ship with the model (default beside SRC)")
    parser.add_argument("--config", metavar="FILE",
                        help="HuggingFace config.json (default beside SRC; minBERT checkpoints "
                             "infer it from tensor shapes)")
    parser.add_argument("--allow-missing-pooler", action="store_true",
                        help="convert a checkpoint without pooler weights (the model then runs "
                             "with add_pooling_layer=False)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 on success, 1 on a conversion error)."""
    args = build_parser().parse_args(argv)
    try:
        convert_checkpoint(args.src, args.out, vocab_file=args.vocab, config_file=args.config,
                           allow_missing_pooler=args.allow_missing_pooler,
                           overwrite=args.overwrite, verbose=True)
    except BertJaxError as err:  # ConversionError, MissingFileError, OutputExistsError, ...
        print(f"error: {err}", file=sys.stderr)
        return 1
    out = Path(args.out).resolve()
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
    print(f"wrote {out} ({', '.join(names)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

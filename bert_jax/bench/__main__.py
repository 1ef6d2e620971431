"""`python -m bert_jax.bench [flags]`: see `bert_jax.bench.cli`."""
import sys

from bert_jax.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())

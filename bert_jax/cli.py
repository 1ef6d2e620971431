"""What every command-line tool shares: argparse types that refuse bad numbers before any work."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bert_jax import backend_log

# Every tool: a GPU/TPU build of JAX that cannot start its device says so in one line, not in
# JAX's traceback, and a CPU run logs no line about the absent TPU (bert_jax/backend_log.py).
backend_log.install()


def prog(module: str) -> str:
    """The name `--help` and error lines show for a tool: the console script's own name when it
    was started as one (`bert-jax-evaluate`), else `python -m MODULE`."""
    started_as = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return started_as if started_as.startswith("bert-jax-") else f"python -m {module}"


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: pass 1 or more")
    return value


def nonnegative_int(text: str) -> int:
    """argparse type: a whole number >= 0 (0 usually means 'no limit' / 'off')."""
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: pass 0 or more")
    return value


SEED_MAX = 2**32 - 1  # numpy's and JAX's seeds: unsigned 32-bit words


def seed_int(text: str) -> int:
    """argparse type: a random seed, a whole number from 0 to SEED_MAX (2**32 - 1)."""
    value = _whole(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"{value} is out of range: pass a seed from 0 to "
                                         f"{SEED_MAX}")
    return value


def nonnegative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not allowed: pass a finite number >= 0")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = nonnegative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("0 is not allowed: pass a number above 0")
    return value


def output_file(text: str) -> str:
    """argparse type: a path a file can be written to (not an existing folder)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder: pass a file path")
    if any(p.exists() and not p.is_dir() for p in path.parents):
        raise argparse.ArgumentTypeError(f"{text}: a part of the path is a file, not a folder")
    return text


def output_dir(text: str) -> str:
    """argparse type: a path a folder can be made at (not an existing file)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file: pass a folder path")
    if any(p.exists() and not p.is_dir() for p in path.parents):
        raise argparse.ArgumentTypeError(f"{text}: a part of the path is a file, not a folder")
    return text


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    """The `--data-dir DIR` flag every tool that reads the CS224N files shares."""
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="folder with the CS224N files (default data/, else ../shared/data)")

"""A row's label as a task reads it: one of its classes (a class index) or a score in its range,
or what is wrong with it."""
from __future__ import annotations

import math
import re
from typing import Any

from bert_jax.tasks import Task

_PLAIN_NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")


def _parse_number(name: str, value: str) -> tuple[float | None, str | None]:
    """(number, None) or (None, what is wrong). A plain decimal number (`3`, `1.0`, `4.25`; a
    sign and spaces around it allowed): no exponent, digit separator, `inf`/`nan` or non-ASCII
    digit, which `float()` would accept."""
    if value.strip() == "":
        return None, f"{name} is empty (the row has no label)"
    if not _PLAIN_NUMBER.fullmatch(value.strip(" ")):
        try:
            x = float(value)
        except ValueError:
            return None, f"{name} {value!r} is not a number"
        if not math.isfinite(x):
            return None, f"{name} is {value.strip()!r}: labels must be finite numbers"
        return None, f"{name} {value!r} is not a plain decimal number (like 3 or 1.0)"
    return float(value), None


def _numeric_classes(task: Task) -> bool:
    return all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in task.classes)


def parse_label(task: Task, value: str) -> tuple[Any, str | None]:
    """(label, None) or (None, what is wrong): a class index (classification; numeric classes
    match by value, so `1` and `1.0` are the same label, others by their text) or a score
    within the task's range."""
    name = task.label
    if task.is_classification and not _numeric_classes(task):
        text = value.strip()
        for index, c in enumerate(task.classes):
            if text == str(c):
                return index, None
        return None, (f"{name} {value!r} is not one of the task's classes "
                      f"({', '.join(repr(str(c)) for c in task.classes)})")
    x, problem = _parse_number(name, value)
    if problem:
        return None, problem
    if task.is_classification:
        for index, c in enumerate(task.classes):
            if x == c:
                return index, None
        shown = [f"{c:g}" for c in task.classes]
        if len(shown) == 2:
            return None, f"{name} {value!r} is not {shown[0]} or {shown[1]} ({float(task.classes[0]):.1f} / {float(task.classes[1]):.1f})"
        return None, f"{name} {value!r} is not one of {', '.join(shown)}"
    low, high = task.range
    if not low <= x <= high:
        return None, f"{name} {value!r} is outside {low:g}..{high:g}"
    return x, None

"""Settings validation: every setting declares its rule once, on its dataclass field, and one function checks them.

A config class (the methods' settings, :class:`~latentscm.data.SimulationConfig`) declares each field
with :func:`setting`, whose rule says what the field accepts, and calls :func:`check_fields` first
in ``__post_init__``, then its rules that involve several fields. ``__post_init__`` only checks:
values read from TOML or JSON (lists, numpy scalars) are turned into the declared Python types
by :func:`normalise` where a dict becomes a config.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
import os
from typing import Any, Callable

import numpy as np

_RULE = "latentscm.rule"
_WHY = "latentscm.why"
_COMPARE = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a setting accepts: ``accepts(value)`` tests it, ``text`` says it in an error message
    (``"an integer >= 1"``), ``fix(value)`` suggests a correction for a near miss (or returns "")."""

    text: str
    accepts: Callable[[Any], bool]
    fix: Callable[[Any], str] = lambda value: ""


def setting(default, rule: Rule, why: str | None = None):
    """A dataclass field with ``default`` that accepts what ``rule`` accepts; ``why`` explains the
    bound in the error message."""
    return dataclasses.field(default=default, metadata={_RULE: rule, _WHY: why})


def check_fields(cfg, owner: str) -> None:
    """Check every field of the dataclass instance ``cfg`` against its rule; ``ValueError`` naming ``owner``,
    the field, what it accepts and what it got. A field declared without :func:`setting` is a
    programming error (``TypeError``)."""
    for f in dataclasses.fields(cfg):
        if _RULE not in f.metadata:
            raise TypeError(f"{type(cfg).__name__}.{f.name} declares no rule; declare it with setting()")
        rule, why, value = f.metadata[_RULE], f.metadata[_WHY], getattr(cfg, f.name)
        if not rule.accepts(value):
            because = f" ({why})" if why else ""
            raise ValueError(f"{owner}: {f.name} must be {rule.text}{because}; got {value!r}{rule.fix(value)}")


def normalise(value):
    """A setting as read from TOML or JSON in the declared Python types: lists and arrays become tuples,
    numpy scalars Python numbers (recursively); anything else is returned unchanged."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(normalise(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---------------------------------------------------------------------------------------------------
# rules
# ---------------------------------------------------------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _int_fix(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return " (True and False are not integers here; write a whole number)"
    if _is_real(value) and not _is_int(value) and math.isfinite(value) and float(value).is_integer():
        return f" (write {int(value)}, without the decimal point)"
    return ""


def _number_fix(value) -> str:
    return " (True and False are not numbers here)" if isinstance(value, (bool, np.bool_)) else ""


def integer(ge: int) -> Rule:
    """An integer ``>= ge`` (not a bool, not a float such as 5.0)."""
    return Rule(f"an integer >= {ge}", lambda v: _is_int(v) and v >= ge, _int_fix)


def number(*, gt: float | None = None, ge: float | None = None, lt: float | None = None,
           le: float | None = None) -> Rule:
    """A finite real number (not a bool) within the given bounds, e.g. ``number(gt=0)``, ``number(gt=0, le=1)``."""
    bounds = [(op, b) for op, b in ((">", gt), (">=", ge), ("<", lt), ("<=", le)) if b is not None]
    if len(bounds) == 2:  # a lower and an upper bound: written as an interval, "(0, 1]"
        (low_op, low), (high_op, high) = bounds
        text = f"a number in {'(' if low_op == '>' else '['}{low:g}, {high:g}{')' if high_op == '<' else ']'}"
    else:
        text = "a finite number" + "".join(f" {op} {b:g}" for op, b in bounds)

    def accepts(v):
        return _is_real(v) and math.isfinite(v) and all(_COMPARE[op](v, b) for op, b in bounds)

    return Rule(text, accepts, _number_fix)


def one_of(*options) -> Rule:
    """One of ``options`` (equal and of the same type: 1 is not True, True is not 1)."""
    shown = [repr(o) for o in options]
    text = " or ".join(shown) if len(shown) == 2 else "one of " + ", ".join(shown)
    return Rule(text, lambda v: any(v == o and type(v) is type(o) for o in options))


def flag() -> Rule:
    """True or False."""
    return Rule("True or False", lambda v: v is True or v is False)


def optional(rule: Rule, meaning: str) -> Rule:
    """None, or what ``rule`` accepts; ``meaning`` says what None means ("for all rows")."""
    return Rule(f"{rule.text}, or None {meaning}", lambda v: v is None or rule.accepts(v), rule.fix)


def sequence(item: Rule, text: str, *, length: int | None = None, min_length: int = 0) -> Rule:
    """A tuple (or list) of values ``item`` accepts: exactly ``length`` of them, or at least ``min_length``."""
    def accepts(v):
        n = len(v) if isinstance(v, (tuple, list)) else -1
        return (n == length if length is not None else n >= min_length) and all(item.accepts(i) for i in v)

    return Rule(text, accepts)


def interval(ge: float | None = None) -> Rule:
    """A pair ``(lo, hi)`` of finite numbers with ``lo <= hi`` (and ``ge <= lo``)."""
    pair = sequence(number(), "", length=2)
    low = -math.inf if ge is None else ge
    text = "(lo, hi) with " + ("lo <= hi" if ge is None else f"{ge:g} <= lo <= hi")
    return Rule(text, lambda v: pair.accepts(v) and low <= v[0] <= v[1])


def path() -> Rule:
    """A folder path (str or os.PathLike)."""
    return Rule("a folder path", lambda v: isinstance(v, (str, os.PathLike)))


def integer_or(ge: int, *words: str) -> Rule:
    """An integer ``>= ge`` or one of the strings ``words`` (e.g. ``"all"``)."""
    shown = " or ".join(repr(w) for w in words)
    return Rule(f"an integer >= {ge} or {shown}",
                lambda v: (isinstance(v, str) and v in words) or (_is_int(v) and v >= ge), _int_fix)


# rules shared by several methods' settings
KNOWN_ORDER = optional(sequence(integer(0), "a tuple of node indices (integers >= 0)"), "to learn the order")
TEMPERATURES = sequence(number(gt=0), "a pair (start, end) of finite numbers > 0", length=2)

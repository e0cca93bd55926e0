"""Validation of method settings, shared by every method's frozen config dataclass."""

from __future__ import annotations

import math


def check_settings(cfg, method, *, ints=None, positive=(), choices=None, pair=()):
    """Validate ``cfg``'s fields in place (before any work); errors name the method and the fix.

    ints: {name: minimum}; positive: names of finite numbers > 0; choices: {name: allowed values};
    pair: names of (start, end) tuples of numbers > 0 (normalised to float tuples).
    """
    for name, low in (ints or {}).items():
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{method}: {name} must be an integer >= {low}; got {value!r}")
    for name in positive:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{method}: {name} must be a finite number > 0; got {value!r}")
    for name, allowed in (choices or {}).items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"{method}: {name} must be one of {tuple(allowed)}; got {getattr(cfg, name)!r}")
    for name in pair:
        value = tuple(getattr(cfg, name))
        if len(value) != 2 or not all(isinstance(v, (int, float)) and v > 0 for v in value):
            raise ValueError(f"{method}: {name} must be (start, end) with both > 0; got {getattr(cfg, name)!r}")
        object.__setattr__(cfg, name, (float(value[0]), float(value[1])))
    if getattr(cfg, "known_order", None) is not None:
        order = tuple(cfg.known_order)
        if not all(isinstance(i, int) or hasattr(i, "__index__") for i in order) or any(isinstance(i, bool) for i in order):
            raise ValueError(f"{method}: known_order must be a tuple of node indices; got {cfg.known_order!r}")
        object.__setattr__(cfg, "known_order", tuple(int(i) for i in order))

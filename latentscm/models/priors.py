"""Declarative priors.

A prior spec maps a *prior name* to a distribution, given as a dict (``{"dist": "laplace",
"scale": 0.3}``), as a TOML table with the same keys, or as a NumPyro distribution object::

    [priors]
    edge_weight = {dist = "horseshoe", scale = 0.1}
    noise_scale = {dist = "lognormal", loc = 0.0, scale = 0.5}

Prior names (the model's sample sites carry the same names):

===================  =======================================  ====================
name                 what                                     support
===================  =======================================  ====================
``edge_weight``      free entries of the weight matrix ``L``  real
``noise_scale``      SCM noise scales ``sigma`` (d,)           positive
``decoder_weight``   linear decoder matrix ``A`` (d, D)        real
``decoder_bias``     decoder offset ``b`` (D,)                 real
``obs_scale``        observation noise scale ``s`` (scalar)    positive
===================  =======================================  ====================

``horseshoe`` is hierarchical: ``w ~ N(0, g * l)``, ``g ~ HalfCauchy(scale)`` (site
``<name>_global_scale``), ``l ~ HalfCauchy(1)`` per entry (site ``<name>_local_scale``).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

DEFAULT_PRIORS = MappingProxyType(
    {
        "edge_weight": {"dist": "normal", "scale": 1.0},
        "noise_scale": {"dist": "lognormal", "loc": 0.0, "scale": 1.0},
        "decoder_weight": {"dist": "normal", "scale": 10.0},
        "decoder_bias": {"dist": "normal", "scale": 100.0},
        "obs_scale": {"dist": "lognormal", "loc": 0.0, "scale": 3.0},
    }
)
_POSITIVE = {"noise_scale", "obs_scale"}

# name -> (constructor, {parameter: default or None when required})
_FAMILIES = {
    "normal": (dist.Normal, {"loc": 0.0, "scale": None}),
    "laplace": (dist.Laplace, {"loc": 0.0, "scale": None}),
    "student_t": (dist.StudentT, {"df": None, "loc": 0.0, "scale": None}),
    "cauchy": (dist.Cauchy, {"loc": 0.0, "scale": None}),
    "lognormal": (dist.LogNormal, {"loc": 0.0, "scale": None}),
    "halfnormal": (dist.HalfNormal, {"scale": None}),
    "halfcauchy": (dist.HalfCauchy, {"scale": None}),
    "gamma": (dist.Gamma, {"concentration": None, "rate": 1.0}),
    "exponential": (dist.Exponential, {"rate": 1.0}),
    "horseshoe": (None, {"scale": None}),
}


class PriorError(ValueError):
    """An invalid prior specification."""


@dataclass(frozen=True)
class Prior:
    """One validated prior: a family name and parameters, or a user's distribution object."""

    name: str
    family: str
    params: MappingProxyType
    distribution: dist.Distribution | None = None

    def base(self):
        """The (batch-shape ()) NumPyro distribution of one entry (not for ``horseshoe``)."""
        if self.distribution is not None:
            return self.distribution
        return _FAMILIES[self.family][0](**self.params)

    def sample(self, site, shape):
        """Sample ``site`` with event shape ``shape`` inside a NumPyro model."""
        n = len(shape)
        if self.family == "horseshoe":
            g = numpyro.sample(f"{site}_global_scale", dist.HalfCauchy(self.params["scale"]))
            local = numpyro.sample(f"{site}_local_scale", dist.HalfCauchy(1.0).expand(shape).to_event(n))
            return numpyro.sample(site, dist.Normal(0.0, g * local).to_event(n))
        return numpyro.sample(site, self.base().expand(shape).to_event(n))


def _parse_one(name, spec):
    if isinstance(spec, dist.Distribution):
        if spec.batch_shape != () or spec.event_shape != ():
            raise PriorError(f"prior {name!r}: give a scalar distribution (batch and event shape ()); "
                             f"got batch {spec.batch_shape}, event {spec.event_shape}. The model expands it.")
        prior = Prior(name, type(spec).__name__, MappingProxyType({}), spec)
        support = spec.support
    else:
        if not isinstance(spec, dict) or "dist" not in spec:
            raise PriorError(f"prior {name!r}: expected a table like {{dist = \"normal\", scale = 1.0}} "
                             f"or a numpyro distribution; got {spec!r}")
        family = str(spec["dist"]).lower()
        if family not in _FAMILIES:
            raise PriorError(f"prior {name!r}: unknown distribution {spec['dist']!r}; "
                             f"choose one of {sorted(_FAMILIES)}")
        allowed = _FAMILIES[family][1]
        given = {k: v for k, v in spec.items() if k != "dist"}
        unknown = sorted(set(given) - set(allowed))
        if unknown:
            raise PriorError(f"prior {name!r}: {family} takes parameters {sorted(allowed)}; "
                             f"unknown {unknown}")
        params = {}
        for key, default in allowed.items():
            value = given.get(key, default)
            if value is None:
                raise PriorError(f"prior {name!r}: {family} needs parameter {key!r}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise PriorError(f"prior {name!r}: parameter {key!r} must be a finite number; got {value!r}")
            params[key] = float(value)
        for key in ("scale", "df", "concentration", "rate"):
            if key in params and params[key] <= 0:
                raise PriorError(f"prior {name!r}: parameter {key!r} must be > 0; got {params[key]}")
        prior = Prior(name, family, MappingProxyType(params))
        support = constraints.real if family == "horseshoe" else prior.base().support
    if name in _POSITIVE and support is not constraints.positive:
        raise PriorError(f"prior {name!r} must live on the positive reals (e.g. lognormal, halfnormal, "
                         f"gamma); {prior.family} has support {support}")
    if name not in _POSITIVE and support is not constraints.real:
        raise PriorError(f"prior {name!r} must live on the real line (e.g. normal, laplace, horseshoe); "
                         f"{prior.family} has support {support}")
    return prior


@dataclass(frozen=True)
class PriorSpec:
    """A complete, validated set of priors (defaults filled in)."""

    priors: MappingProxyType

    def __getitem__(self, name):
        return self.priors[name]

    def describe(self):
        """JSON-friendly description."""
        return {k: {"dist": p.family, **p.params} for k, p in self.priors.items()}


def parse_priors(spec=None):
    """Validate a prior spec (dict, TOML path, PriorSpec or None) and fill in the defaults."""
    if isinstance(spec, PriorSpec):
        return spec
    if isinstance(spec, (str, Path)):
        with open(spec, "rb") as fh:
            spec = tomllib.load(fh).get("priors", {})
    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(DEFAULT_PRIORS))
    if unknown:
        raise PriorError(f"unknown prior name(s) {unknown}; known names are {sorted(DEFAULT_PRIORS)}")
    merged = {**DEFAULT_PRIORS, **spec}
    return PriorSpec(MappingProxyType({k: _parse_one(k, v) for k, v in merged.items()}))


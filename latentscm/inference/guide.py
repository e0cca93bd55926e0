"""The guide and its plumbing, shared by the SVI methods on the SCM sites (``collapsed``, ``amortized``).

* :func:`site_specs`: shapes and supports of a model's continuous latent sites, traced abstractly (also
  used by ``biols`` and ``mcmc``);
* :func:`mean_field_guide`: mean-field Gaussians in unconstrained space for those sites and, when the
  order is learned, ``q(P | L, sigma)`` (Gumbel-matching with logits from an MLP of the sampled ``L`` and
  ``log sigma``). NumPyro's ``AutoNormal`` gives the first part, but an auto guide (or an ``AutoGuideList``
  of them) samples its sites independently: ``q(P)`` here is conditional on the guide's own ``L`` and
  ``sigma`` draws, so the guide is written out;
* :func:`initial_params`: the variational parameters at the data-driven start, one set per restart;
  :func:`step_factors` and :func:`scale_updates`: Adam's per-leaf step factors (``init_scale = "data"``);
* :func:`make_sampler` and :func:`draw`: posterior draws from a fitted guide, ``W`` and ``order`` derived.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro import handlers
from numpyro.distributions.transforms import biject_to

from ..models.permutation import GumbelSinkhornPermutation, order_from_matrix
from ..models.scm import position_tril, tril_size, tril_to_matrix, weights_from_order
from .programs import program

INIT_SCALE = 0.01  # guide sd of every continuous site at the start (the decoder's: see decoder_scales)


def site_specs(model, *args, exclude=("P",)):
    """``{name: (shape, support)}`` of ``model(*args)``'s unobserved sample sites, ``exclude`` left out,
    traced abstractly (no arithmetic runs)."""
    specs = {}

    def record():
        tr = handlers.trace(handlers.seed(model, 0)).get_trace(*args)
        for name, site in tr.items():
            if site["type"] == "sample" and not site["is_observed"] and name not in exclude:
                specs[name] = (tuple(site["value"].shape), site["fn"].support)
        return 0.0

    jax.eval_shape(record)
    return specs


def _mlp_logits(mlp, l_vec, sigma):
    """Order logits (d, d) from the (L, sigma) sample: one hidden tanh layer."""
    h = jnp.tanh(jnp.concatenate([l_vec, jnp.log(sigma)]) @ mlp["w1"] + mlp["b1"])
    d = sigma.shape[-1]
    return (h @ mlp["w2"] + mlp["b2"]).reshape(d, d)


class _Normal(dist.Normal):
    """``dist.Normal`` whose draw ``loc + eps * scale`` keeps its standard-normal ``eps`` in one buffer: without
    the barrier XLA fuses the float64 inverse-erf polynomial that makes ``eps`` into every consumer of the draw
    (the value, its gradient, the guide's log-density), computing it several times and roughly doubling the SVI
    step's program (``benchmarks/results/step-overhead.md``). The same numbers as ``dist.Normal``."""

    def sample(self, key, sample_shape=()):
        eps = jax.random.normal(key, shape=sample_shape + self.batch_shape + self.event_shape)
        return self.loc + jax.lax.optimization_barrier(eps) * self.scale


def mean_field_guide(specs, d, *, learn_order, gumbel_scale):
    """The guide: mean-field Gaussians for ``specs`` and, when ``learn_order``, q(P | L, sigma)."""

    def guide(temperature, *args):
        values = {}
        for name, (shape, support) in specs.items():
            loc = numpyro.param(f"{name}_loc", jnp.zeros(shape))
            scale = jax.nn.softplus(numpyro.param(f"{name}_rawscale", jnp.zeros(shape)))
            base = _Normal(loc, scale).to_event(len(shape))
            values[name] = numpyro.sample(name, dist.TransformedDistribution(base, biject_to(support)))
        if learn_order:
            mlp = numpyro.param("order_mlp", {})
            logits = _mlp_logits(mlp, values["edge_weight"], values["noise_scale"])
            numpyro.sample("P", GumbelSinkhornPermutation(logits, temperature, gumbel_scale))

    return guide


def softplus_inv(y):
    return np.log(np.expm1(y))


def order_margin(config) -> float:
    """The order logits' starting margin of a ``collapsed`` or ``amortized`` config: its ``logit_scale``, or
    when that is None 8 with ``use_pairs`` (the paired likelihood is much sharper), else 4."""
    return config.logit_scale if config.logit_scale is not None else 8.0 if config.use_pairs else 4.0


def initial_params(specs, ini, d, config, rng):
    """Stacked (restart axis first) initial variational parameters."""
    R = config.num_restarts
    hidden = config.mlp_hidden
    n_in = tril_size(d) + d
    out = {}
    for r in range(R):
        # restart 1 starts at the moment search's closest rival order, when it found one, with its own latents
        rival = r == 1 and ini.rival is not None and config.order_init == "proposal" and not config.known_order
        start = ini.rival if rival else ini
        proposed = bool(config.known_order) or (r == 0 and config.order_init == "proposal") or rival
        order = start.order if proposed else rng.permutation(d)
        L = position_tril(start.W, order) if r == 0 or config.known_order or rival else np.zeros(tril_size(d))
        locs = {
            "edge_weight": L, "noise_scale": np.log(start.sigma), "decoder_weight": start.A,
            "decoder_bias": start.b, "obs_scale": np.log(start.obs_scale),
        }
        params = {}
        for name, (shape, support) in specs.items():
            loc = locs.get(name)
            if loc is None:  # hierarchical scales: start at the unconstrained value of 1 (or 0.1 for global)
                loc = np.full(shape, np.log(0.1) if name.endswith("global_scale") else 0.0)
            params[f"{name}_loc"] = np.asarray(loc, np.float64).reshape(shape)
            scale = np.broadcast_to(decoder_scales(start, config).get(name, INIT_SCALE), shape)
            params[f"{name}_rawscale"] = softplus_inv(np.asarray(scale, np.float64))
        if config.known_order is None:
            P0 = np.eye(d)[order]
            params["order_mlp"] = {
                "w1": rng.normal(size=(n_in, hidden)) / np.sqrt(n_in), "b1": np.zeros(hidden),
                "w2": rng.normal(size=(hidden, d * d)) * 0.01, "b2": order_margin(config) * P0.reshape(-1),
            }
        out[r] = params
    return jax.tree.map(lambda *xs: jax.device_put(np.stack(xs)), *out.values())


def decoder_scales(ini, config):
    """With ``init_scale = "scale"`` or ``"data"``: the decoder's sites start at about their posterior sd
    (``obs_scale / sqrt(sum_n z_nj^2)`` for row j of A, ``obs_scale / sqrt(N)`` for b) instead of
    0.01; with ``"data"`` their Adam steps are also scaled by the same ratio (:func:`step_factors`). With N
    rows and a sharp observation model the decoder's posterior sd is ~1e-4: a guide sd of 0.01 leaves the
    guide's decoder draws far wider than the posterior after 1000 steps (LOO's Pareto k > 0.7 for a quarter
    of the default problem's pairs), and Adam's first steps of size ``learning_rate`` on all d x D entries
    wreck the likelihood and, at large d, the order."""
    if getattr(config, "init_scale", "fixed") not in ("scale", "data"):  # amortized has no such setting
        return {}
    z2 = np.maximum((np.asarray(ini.z) ** 2).sum(0), 1e-12)
    return {"decoder_weight": np.minimum(ini.obs_scale / np.sqrt(z2), INIT_SCALE)[:, None],
            "decoder_bias": min(ini.obs_scale / np.sqrt(len(ini.z)), INIT_SCALE)}


def step_factors(params, ini, config):
    """Per-leaf factors on Adam's updates (one restart's parameter tree): 1, or with
    ``init_scale = "data"`` the decoder's start-scale ratio and, for the order network's first layer,
    ``15 / fan-in`` (its fan-in is d(d-1)/2 + d)."""
    factors = jax.tree.map(lambda a: 1.0, jax.tree.map(lambda a: a[0], params))
    if config.init_scale != "data":
        return factors
    for name, scale in decoder_scales(ini, config).items():
        if f"{name}_loc" in factors:
            shape = np.shape(params[f"{name}_loc"])[1:]
            factors[f"{name}_loc"] = jnp.asarray(np.broadcast_to(np.asarray(scale) / INIT_SCALE, shape))
    if "order_mlp" in factors:
        # an Adam step moves every first-layer weight by ~learning_rate, so the hidden layer's input
        # moves by ~learning_rate x fan-in: keep that at its d = 5 size (fan-in 15), where the
        # defaults were set
        n_in = np.shape(params["order_mlp"]["w1"])[1]
        factors["order_mlp"]["w1"] = min(1.0, (tril_size(5) + 5) / n_in)
    return factors


class ScaleState(NamedTuple):
    factors: object  # the factors' tree (arrays)


def scale_updates(factors):
    """optax transformation multiplying each update leaf by a fixed factor. The factors (data-driven) live in
    its state, so they are an argument of the compiled SVI step, not constants of its program: the program
    then depends on the data's shapes only and JAX's persistent cache serves the next data set of that size."""
    return optax.GradientTransformation(
        lambda params: ScaleState(jax.tree.map(lambda f: jnp.asarray(f, jnp.result_type(float)), factors)),
        lambda updates, state, params=None: (jax.tree.map(lambda u, f: u * f, updates, state.factors), state))


def make_sampler(guide, temperature, num, d, known=None, identity=None):
    """The jitted draw function ``(key, params) -> {site: (num, ...)}`` of a fitted guide, with the
    graph's ``W`` (num, d, d) and ``order`` (num, d) derived inside it (``P`` is not returned; ``known``:
    a fixed order, else the guide's ``P``). Build it once per fit: a new one compiles again (``identity``:
    kept across processes, :func:`~latentscm.inference.programs.program`)."""
    def one(k, params):
        tr = handlers.trace(handlers.seed(handlers.substitute(guide, params), k)).get_trace(temperature)
        out = {name: site["value"] for name, site in tr.items() if site["type"] == "sample"}
        P = out.pop("P", None)
        P = jnp.eye(d)[jnp.asarray(known)] if P is None else jnp.round(P)  # straight-through: hard in value
        out["W"] = weights_from_order(tril_to_matrix(out["edge_weight"], d), P)
        out["order"] = order_from_matrix(P)
        return out

    return program(lambda key, params: jax.vmap(one, in_axes=(0, None))(jax.random.split(key, num), params),
                   identity)


def draw(sampler, params, key):
    """Posterior draws of a :func:`make_sampler` as numpy arrays."""
    return {k: np.asarray(v) for k, v in sampler(key, params).items()}

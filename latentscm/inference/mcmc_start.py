"""Where the ``mcmc`` chains start: the data-driven initialisation (or a short ``collapsed`` SVI fit), one
order and constrained start values per chain, mapped to the unconstrained ``init_params`` that
:class:`~latentscm.inference.mcmc_kernel.OrderNUTS` takes (with ``mass = "laplace"`` the kernel then moves
each start to the Laplace approximation of its order)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from numpyro.distributions.transforms import biject_to

from ..models.scm import position_tril
from .guide import site_specs
from .initialise import initialise, weights_in_order


def chain_starts(dataset, config, rng):
    """Per-chain constrained start values (list of dicts), the start orders (C, d) int32, the proposal
    order (d,) and the SVI posterior (or None, without ``svi_init_steps``).

    Every chain starts from the data-driven initialisation (for the identity decoder the order proposal
    and regressions on ``x``) in the proposal order, or (``order_init = "random"``) in a random order with
    the weights refitted in it; ``init_jitter`` perturbs ``L`` and ``log sigma``. With ``svi_init_steps``,
    chain c starts from draw c of a short ``collapsed`` fit."""
    C, d = config.num_chains, dataset.d
    x, t = dataset.x, dataset.targets
    v = np.where(t > 0, np.nan_to_num(np.asarray(dataset.values, np.float64)), 0.0)
    identity = config.decoder == "identity"
    ini = initialise(x, t, v, order=config.known_order, observed=identity, tau=config.tau, seed=0)
    dec = {} if identity else {"decoder_weight": ini.A, "decoder_bias": ini.b, "obs_scale": ini.obs_scale}
    svi = None
    if config.svi_init_steps:
        from .collapsed import CollapsedConfig, fit_collapsed

        svi = fit_collapsed(dataset, config=CollapsedConfig(
            steps=config.svi_init_steps, num_draws=max(C, 2), tau=config.tau, known_order=config.known_order,
            refit_on_misfit=0),  # a start only: no refit
            priors=None, seed=int(rng.integers(2**31)), progress=False)
    starts, orders = [], []
    for c in range(C):
        if svi is not None:
            order, W, sigma = svi.orders[c], svi.W[c], svi.noise_scales[c]
            vals = {"decoder_weight": svi.decoder["A"][c], "decoder_bias": svi.decoder["b"][c],
                    "obs_scale": svi.decoder["obs_scale"][c]}
        else:
            random = config.order_init == "random" and config.known_order is None
            order = rng.permutation(d) if random else ini.order
            W, sigma = weights_in_order(ini.z, t, order)
            vals = dict(dec)
        L = position_tril(W, order)
        vals["edge_weight"] = L + config.init_jitter * rng.normal(size=L.shape)
        vals["noise_scale"] = sigma * np.exp(config.init_jitter * rng.normal(size=d))
        starts.append(vals)
        orders.append(np.asarray(order))
    return starts, np.stack(orders).astype(np.int32), np.asarray(ini.order), svi


def init_params(model, args, starts, orders):
    """The unconstrained ``init_params`` of :class:`OrderNUTS` (leading chain axis): each site of
    ``model(*args, order=...)`` from its constrained start value where given, else (horseshoe scales) at
    log 1 (log 0.1 for global scales), as the collapsed method does; plus ``"order"`` (C, d)."""
    specs = site_specs(lambda: model(*args, order=jnp.asarray(orders[0])), exclude=())
    out = {}
    for name, (shape, support) in specs.items():
        rows = []
        for vals in starts:
            if name in vals:
                rows.append(biject_to(support).inv(jnp.asarray(vals[name], jnp.float64)).reshape(shape))
            else:
                rows.append(jnp.full(shape, np.log(0.1) if name.endswith("global_scale") else 0.0, jnp.float64))
        out[name] = jnp.stack(rows)
    out["order"] = jnp.asarray(orders)
    return out

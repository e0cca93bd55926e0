"""``mcmc``: HMC-within-Gibbs on the collapsed model, with Metropolis moves on the node order.

Target: the joint posterior of the collapsed model (:mod:`latentscm.models.collapsed`; z integrated
out, linear decoder) or, with ``decoder="identity"``, of the SCM with z observed (``x = z``,
:func:`identity_model`). One MCMC iteration, per chain:

0. With the linear decoder and ``decoder_update="gibbs"`` (the default): draw the latents
   ``z ~ p(z | x, rest)`` exactly, then the decoder ``A, b ~ p(A, b | z, x, s)`` (conjugate), and
   let steps 1-2 target :func:`augmented_model` (the SCM's sites and ``obs_scale`` given z, A, b).
   A Gibbs sampler on ``(z, A, b, rest)`` whose marginal is the collapsed posterior; NUTS then never
   sees the 600-dimensional, tightly determined decoder (see ``docs/mcmc.md``).
   ``decoder_update="nuts"`` keeps the decoder in the NUTS step on the collapsed model instead.
1. ``order_moves`` Metropolis-Hastings updates of the node order ``P`` (and, for one move type,
   a coordinate permutation of ``L``) targeting ``p(P, L | rest)``; the continuous sites other
   than ``L`` stay fixed. Two symmetric proposals, chosen with probability ``swap_prob`` and
   ``1 - swap_prob``:

   * **random swap**: exchange the positions of two uniformly chosen nodes, ``L`` fixed. With
     ``L`` in position space this relabels which nodes the weights connect (the graph changes);
     the proposal is symmetric, so the acceptance ratio is the ratio of the joint densities.
   * **adjacent reversal**: exchange the nodes at positions ``k, k+1`` (``k`` uniform) and permute
     ``L`` consistently, ``L' = Q L Q^T`` with the one entry that would leave the lower triangle,
     ``L[k+1, k]``, kept in place. In node space this keeps every edge weight except that the edge
     between the two swapped nodes is *reversed* with the same weight (``W'[j, i] = W[i, j]``).
     A plain graph-preserving swap (``L' = Q L Q^T``) is valid only when ``L[k+1, k] == 0``, which
     has probability zero for continuous weights; the reversal variant is always valid. It is a
     deterministic involution that permutes coordinates of ``L`` (and of the horseshoe's local
     scales, if used): unit Jacobian in the unconstrained space too, so with ``k`` uniform the
     acceptance ratio is again the joint-density ratio (the i.i.d. edge prior cancels).

   The uniform order prior cancels in both.
2. One NUTS step on all continuous sites (``edge_weight``, ``noise_scale``, ``obs_scale``, the
   decoder unless step 0 draws it, horseshoe scales) of the model conditioned on the current order, with step size and diagonal mass matrix
   adapted during warmup (the adaptation sees the order changing, which is fine: the adapted
   kernel is fixed after warmup and each step leaves the conditional invariant).

Chains run vectorised (``jax.vmap`` over one jitted step; ``chain_method="vectorized"``), one
after another (``"sequential"``, same code with a chain batch of one), or vectorised with the chain
axis split over JAX devices (``"parallel"``: the chains' states sharded with a ``NamedSharding``,
as many devices as divide ``num_chains``; same draws as ``"vectorized"`` up to float error). numpyro's ``HMCGibbs`` is not
used because its Gibbs function may only return the Gibbs sites, while the adjacent reversal also
moves ``L``; the loop here is numpyro's functional ``hmc(..., algo="NUTS")`` kernel plus a
``lax.fori_loop`` of order moves, run in jitted chunks of ``chunk`` iterations under a progress bar.

Initialisation: the data-driven initialisation (:func:`~latentscm.inference.initialise.initialise`;
for the identity decoder the order proposal and regressions on ``x`` itself) in every chain, with
Gaussian jitter ``init_jitter`` on ``L`` and ``log sigma``; ``order_init="random"`` starts each chain
from a random order instead (weights refitted in that order), and ``svi_init_steps > 0`` starts chain
``c`` from draw ``c`` of a short ``collapsed`` SVI fit.

Modules: the chain (:mod:`.mcmc_kernel`), the Gibbs augmentation (:mod:`.mcmc_gibbs`), the exact order
posterior (:mod:`.mcmc_exact`); this one holds the settings, the starts, the chain driver and the fit.

Exactness check: :func:`~latentscm.inference.mcmc_exact.exact_order_posterior` enumerates ``p(order | z)`` in closed form for the
identity decoder with Normal edge priors and fixed noise scales (Bayesian linear regression per node).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import jax.scipy.linalg
from numpyro import handlers
from tqdm.auto import tqdm

from .._validate import KNOWN_ORDER, check_fields, flag, integer, number, one_of, optional, sequence, setting
from ..models.collapsed import collapsed_model, sufficient_stats
from ..models.observed import identity_model, identity_stats
from ..models.priors import parse_priors
from .decoders import IdentityDecoder, LinearDecoder
from .mcmc_gibbs import augmented_model, make_augmentation
from .mcmc_kernel import ChainState, make_sampler
from ._datarules import check_decoder, check_known_order, check_unknowns
from .collapsed import latent_summaries
from .sharding import shard_leading
from .initialise import _node_fit, initialise
from .posterior import Posterior
from .svi import seed_keys

_CONSTRAIN_DRAWS = 500  # draws per call when the kept draws are mapped to constrained values

DECODERS = ("linear", "identity")
_DECODER_WHY = ("mcmc integrates z out exactly, which needs a linear decoder ('identity': x is z itself); for a "
                "nonlinear decoder such as 'mlp' use a variational method")


@dataclass(frozen=True)
class MCMCConfig:
    """Settings of the ``mcmc`` method (bounds declared per field, checked in ``__post_init__``).

    num_warmup, num_samples: iterations per chain (draws kept: ``num_chains * num_samples``);
    num_chains; chain_method: ``"vectorized"``, ``"sequential"`` or ``"parallel"`` (over devices); decoder: ``"linear"`` (collapsed
    model) or ``"identity"`` (``x`` is ``z``, needs ``D == d``); order_moves: Metropolis order
    proposals per iteration (None: d); swap_prob: probability that a proposal is a random swap (else
    an adjacent reversal); target_accept_prob, max_tree_depth, dense_mass: NUTS; tau: intervention
    noise scale; fixed_noise_scales: (d,) known SCM noise scales (no ``noise_scale`` site then);
    known_order: fixes the order (no order moves); order_init: ``"proposal"`` or ``"random"``;
    init_jitter: sd of the Gaussian jitter of each chain's start (unconstrained L and log sigma);
    svi_init_steps: > 0 runs a short ``collapsed`` SVI fit first and starts each chain from one of its
    draws (linear decoder only); chunk: iterations per jitted call (progress-bar granularity).
    """

    num_warmup: int = setting(500, integer(0))
    num_samples: int = setting(500, integer(1))
    num_chains: int = setting(4, integer(1))
    chain_method: str = setting("vectorized", one_of("vectorized", "sequential", "parallel"))
    decoder: str = setting("linear", one_of(*DECODERS), why=_DECODER_WHY)
    decoder_update: str = setting("gibbs", one_of("gibbs", "nuts"))
    order_moves: int | None = setting(None, optional(integer(0), "for d moves"))
    swap_prob: float = setting(0.5, number(ge=0, le=1))
    target_accept_prob: float = setting(0.8, number(gt=0, lt=1))
    max_tree_depth: int = setting(8, integer(1))
    dense_mass: bool = setting(False, flag())
    tau: float = setting(0.1, number(gt=0))
    fixed_noise_scales: tuple[float, ...] | None = setting(None, optional(
        sequence(number(gt=0), "positive finite numbers, one per latent"), "to sample the noise scales"))
    known_order: tuple[int, ...] | None = setting(None, KNOWN_ORDER)
    order_init: str = setting("proposal", one_of("proposal", "random"))
    init_jitter: float = setting(0.1, number(ge=0))
    svi_init_steps: int = setting(0, integer(0))
    chunk: int = setting(50, integer(1))

    def __post_init__(self):
        check_fields(self, "mcmc")
        if self.svi_init_steps and self.decoder != "linear":
            raise ValueError("mcmc: svi_init_steps needs decoder='linear' (the collapsed SVI fit)")

    def check_dataset(self, dataset):
        """Refuse, before any work, a dataset these settings cannot fit (DataError / ValueError)."""
        check_decoder("mcmc", self.decoder, dataset)
        check_known_order("mcmc", self.known_order, dataset.d)
        if self.fixed_noise_scales is not None and len(self.fixed_noise_scales) != dataset.d:
            raise ValueError(f"mcmc: fixed_noise_scales needs {dataset.d} values (one per latent); got "
                             f"{len(self.fixed_noise_scales)}")
        check_unknowns("mcmc", dataset)


def _chain_starts(dataset, config, rng, d):
    """Per-chain constrained start values and orders (C, d); the proposal order; the SVI posterior or None."""
    C = config.num_chains
    x, t = dataset.x, dataset.targets
    v = np.where(t > 0, np.nan_to_num(np.asarray(dataset.values, np.float64)), 0.0)
    svi = None
    identity = config.decoder == "identity"
    ini = initialise(x, t, v, order=config.known_order, observed=identity, tau=config.tau,
                     seed=0)
    z_hat, proposal = ini.z, ini.order
    dec = {} if identity else {"decoder_weight": ini.A, "decoder_bias": ini.b, "obs_scale": ini.obs_scale}
    if config.svi_init_steps:
        from .collapsed import CollapsedConfig, fit_collapsed

        svi = fit_collapsed(dataset, config=CollapsedConfig(
            steps=config.svi_init_steps, num_draws=max(C, 2), tau=config.tau, known_order=config.known_order),
            priors=None, seed=int(rng.integers(2**31)), progress=False)
    starts, orders = [], []
    for c in range(C):
        if svi is not None:
            order = svi.orders[c]
            W, sigma = svi.W[c], svi.noise_scales[c]
            vals = {"decoder_weight": svi.decoder["A"][c], "decoder_bias": svi.decoder["b"][c],
                    "obs_scale": svi.decoder["obs_scale"][c]}
        else:
            order = proposal if (config.order_init == "proposal" or config.known_order) else rng.permutation(d)
            W, sigma = np.zeros((d, d)), np.ones(d)
            for p, j in enumerate(order):
                _, coef, sigma[j] = _node_fit(z_hat, t, j, list(order[:p]))
                W[order[:p], j] = coef
            vals = dict(dec)
        L = W[np.ix_(order, order)].T[np.tril_indices(d, -1)]
        vals["edge_weight"] = L + config.init_jitter * rng.normal(size=L.shape)
        if config.fixed_noise_scales is None:
            vals["noise_scale"] = sigma * np.exp(config.init_jitter * rng.normal(size=d))
        starts.append(vals)
        orders.append(np.asarray(order))
    return starts, np.stack(orders).astype(np.int32), np.asarray(proposal), svi


def _run_chains(run, init_fn, z0, aux0, orders, keys, data, num_warmup, total, config, progress):
    """Run a chain batch; returns stacked StepInfo with leading (chain, iteration) of the kept draws."""
    state, aux = jax.jit(jax.vmap(init_fn, in_axes=(0, 0, 0, 0, None)))(z0, jnp.asarray(orders), aux0, keys, data)
    hkeys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    state = ChainState(state, jnp.asarray(orders), aux, hkeys)
    n_chunks = -(-total // config.chunk)
    size = -(-total // n_chunks)
    outs = []
    bar = tqdm(total=total, desc="mcmc", disable=not progress, leave=False)
    done = divergences = 0
    try:
        while done < total:
            state, out = run(state, data, size)
            out = jax.tree.map(np.asarray, out)
            outs.append(out)
            divergences += int(out.diverging[:, max(num_warmup - done, 0):].sum())
            bar.update(min(size, total - done))
            done += size
            bar.set_postfix(phase="warmup" if done <= num_warmup else "sampling", divergences=divergences)
    finally:
        bar.close()
    out = jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *outs)
    return jax.tree.map(lambda a: a[:, num_warmup:total], out)


def fit_mcmc(dataset, *, config: MCMCConfig, priors=None, seed=0, progress=True):
    """Sample the posterior of ``dataset`` by HMC-within-Gibbs; returns a :class:`Posterior`.

    All input checks run before any compilation.
    """
    start = time.perf_counter()
    priors = parse_priors(priors)
    d = dataset.d
    gibbs = config.decoder == "linear" and config.decoder_update == "gibbs"
    fixed = None if config.fixed_noise_scales is None else np.asarray(config.fixed_noise_scales, np.float64)
    # built before any work: it checks that the decoder priors are normal (conjugate given z)
    augment = make_augmentation(priors, config.tau, fixed) if gibbs else None
    rng = np.random.default_rng(seed)
    C, tau = config.num_chains, config.tau
    with jax.enable_x64(True):
        starts, orders0, proposal, svi = _chain_starts(dataset, config, rng, d)
        model, data = _model(dataset, config, priors, fixed, gibbs)
        init_fn, z0, aux0, step, postprocess = make_sampler(model, data, starts, orders0, config,
                                                            config.num_warmup, augment)

        def run(state, data, n):
            state, out = jax.lax.scan(lambda s, _: jax.vmap(step, in_axes=(0, None))(s, data), state, None, length=n)
            return state, jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), out)  # (chain, iteration, ...)

        run = jax.jit(run, static_argnums=2)
        keys = seed_keys(seed, C)
        total = config.num_warmup + config.num_samples
        if config.chain_method in ("vectorized", "parallel"):
            if config.chain_method == "parallel":  # the chain axis split over the devices (jit follows)
                devs = jax.devices()[:max(k for k in range(1, len(jax.devices()) + 1) if C % k == 0)]
                z0, aux0, keys = shard_leading((z0, aux0, keys), devs)
            out = _run_chains(run, init_fn, z0, aux0, orders0, keys, data, config.num_warmup, total, config, progress)
        else:
            one = lambda tree, c: jax.tree.map(lambda a: a[c:c + 1], tree)  # noqa: E731
            parts = [_run_chains(run, init_fn, one(z0, c), one(aux0, c), orders0[c:c + 1], keys[c:c + 1], data,
                                 config.num_warmup, total, config, progress) for c in range(C)]
            out = jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *parts)
        draws = _constrain(postprocess, out, data)
        draws.update({k: v.reshape((-1,) + v.shape[2:]) for k, v in out.dec.items()})
        S = C * config.num_samples
        noise = draws["noise_scale"] if fixed is None else np.broadcast_to(np.asarray(fixed), (S, d)).copy()
        if config.decoder == "linear":
            decoder = LinearDecoder(draws["decoder_weight"], draws["decoder_bias"], draws["obs_scale"])
            latent_mean, latent_sd = latent_summaries(
                dataset, {"W": draws["W"], "noise_scale": noise, "decoder_weight": decoder["A"],
                          "decoder_bias": decoder["b"], "obs_scale": decoder["obs_scale"]}, tau)
        else:
            decoder = IdentityDecoder()
            latent_mean, latent_sd = np.asarray(dataset.x, np.float64), np.zeros((dataset.N, d))
    orders = out.order.reshape(S, d)
    counts = {k: int(getattr(out, k).sum()) for k in ("swap_accepted", "swap_proposed", "reversal_accepted",
                                                      "reversal_proposed")}
    post = Posterior(
        method="mcmc", W=draws["W"], noise_scales=noise, orders=orders, decoder=decoder,
        latent_mean=latent_mean, latent_scale=latent_sd, elbo=np.zeros(0), seconds=0.0, tau=tau,
        info={"num_chains": C, "config": config.__dict__, "priors": priors.describe(),
              "proposal_order": proposal.tolist(), "divergences": int(out.diverging.sum()),
              "mean_accept_prob": float(out.accept_prob.mean()), "mean_leapfrog_steps": float(out.num_steps.mean()),
              "order_acceptance": _rate(counts["swap_accepted"] + counts["reversal_accepted"],
                                        counts["swap_proposed"] + counts["reversal_proposed"]),
              "swap_acceptance": _rate(counts["swap_accepted"], counts["swap_proposed"]),
              "reversal_acceptance": _rate(counts["reversal_accepted"], counts["reversal_proposed"]),
              "svi_init": svi is not None},
    )
    return dataclasses.replace(post, info=post.info | diagnostics(post), seconds=time.perf_counter() - start)


def _model(dataset, config, priors, fixed, gibbs):
    """The sampled model ``model(data, order, aux)`` and its data: the collapsed (or identity) model on the
    sufficient statistics, or under Gibbs updates the model given the augmentation, with the raw arrays."""
    raw, tau = None, config.tau
    if config.decoder == "identity":
        stats = identity_stats(jnp.asarray(dataset.x, jnp.float64), dataset.targets, dataset.values)
        base_model = identity_model
    elif gibbs:
        stats, base_model = None, None
        raw = (jnp.asarray(dataset.x, jnp.float64), jnp.asarray(dataset.targets),
               jnp.asarray(np.where(dataset.targets > 0, np.nan_to_num(dataset.values), 0.0), jnp.float64))
    else:
        stats = jax.tree.map(jnp.asarray, sufficient_stats(dataset.x, dataset.targets, dataset.values))
        base_model = collapsed_model

    def model(data, order, aux):
        with handlers.condition(data={} if fixed is None else {"noise_scale": fixed}):
            if gibbs:
                augmented_model(data, order, aux, priors=priors, tau=tau)
            else:
                base_model(data["stats"], priors=priors, tau=tau, order=order)

    return model, {"stats": stats, "raw": raw}


def _rate(a, b):
    return float(a / b) if b else float("nan")


def _constrain(postprocess, out, data, chunk=_CONSTRAIN_DRAWS):
    """Constrained draws (chain-major flattened, leading C * S) from the unconstrained chain output."""
    z = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), out.z)
    order = out.order.reshape(-1, out.order.shape[-1])
    f = jax.jit(jax.vmap(postprocess, in_axes=(0, 0, None)))
    n = len(order)
    parts = [jax.tree.map(np.asarray, f(jax.tree.map(lambda a: jnp.asarray(a[i:i + chunk]), z),
                                       jnp.asarray(order[i:i + chunk]), data)) for i in range(0, n, chunk)]
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)


def diagnostics(posterior):
    """Sampler diagnostics via ArviZ on ``posterior.to_arviz()``: max R-hat and min bulk ESS of ``W``
    and ``noise_scale`` (entries that never vary, e.g. the diagonal of W, are skipped)."""
    import arviz as az

    tree = posterior.to_arviz()
    out = {}
    for var in ("W", "noise_scale"):
        draws = np.asarray(tree["posterior"][var])
        varying = np.ptp(draws.reshape((-1,) + draws.shape[2:]), axis=0) > 0
        if posterior.info.get("num_chains", 1) < 2 or not varying.any():
            out[f"max_rhat_{var}"], out[f"min_ess_{var}"] = float("nan"), float("nan")
            continue
        with warnings.catch_warnings():  # constant entries (W's diagonal) divide 0 by 0
            warnings.simplefilter("ignore", RuntimeWarning)
            rhat = np.asarray(az.rhat(tree, var_names=[var])[var])
            ess = np.asarray(az.ess(tree, var_names=[var])[var])
        out[f"max_rhat_{var}"] = float(np.nanmax(rhat[varying]))
        out[f"min_ess_{var}"] = float(np.nanmin(ess[varying]))
    return out

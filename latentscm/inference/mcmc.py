"""``mcmc``: NUTS on the collapsed model composed with Metropolis moves on the node order.

Target: the joint posterior of the collapsed model (:mod:`latentscm.models.collapsed`; z integrated out
exactly from per-regime sufficient statistics, so one density evaluation costs the same whatever N) or,
with ``decoder="identity"``, of the SCM with z observed (``x = z``,
:func:`~latentscm.models.observed.identity_model`). The chain is one NumPyro ``MCMCKernel``,
:class:`~latentscm.inference.mcmc_kernel.OrderNUTS` (order moves, then NUTS on every continuous site,
with a dense Laplace mass matrix by default), and :class:`numpyro.infer.MCMC` runs the chains, warm-up,
progress bar and ``chain_method``.

Modules: the kernel (:mod:`.mcmc_kernel`), the chains' starts (:mod:`.mcmc_start`), the exact order
posterior by enumeration (:mod:`.mcmc_exact`); this one holds the settings, the fit and its diagnostics.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.infer import MCMC

from .._validate import KNOWN_ORDER, check_fields, flag, integer, number, one_of, optional, sequence, setting
from ..models.collapsed import collapsed_model, sufficient_stats
from ..models.observed import identity_model, identity_stats
from ..models.priors import parse_priors
from ._datarules import check_decoder, check_known_order, check_unknowns
from .collapsed import latent_summaries
from .decoders import IdentityDecoder, LinearDecoder
from .mcmc_kernel import MASSES, OrderNUTS
from .mcmc_start import chain_starts, init_params
from .posterior import Posterior
from .svi import seed_keys

DECODERS = ("linear", "identity")
_DECODER_WHY = ("mcmc integrates z out exactly, which needs a linear decoder ('identity': x is z itself); for a "
                "nonlinear decoder such as 'mlp' use a variational method")
_SUMMARY_DRAWS = 1000  # evenly spaced draws the latent summaries (mixture mean and sd of p(z_n | x, ...)) use
_FIELDS = ("diverging", "accept_prob", "num_steps", "step_size", "moves")


@dataclass(frozen=True)
class MCMCConfig:
    """Settings of the ``mcmc`` method (bounds declared per field, checked in ``__post_init__``).

    num_warmup, num_samples: iterations per chain (draws kept: ``num_chains * num_samples``);
    num_chains; chain_method: ``"vectorized"``, ``"sequential"`` or ``"parallel"`` (NumPyro's: one chain
    per JAX device); decoder: ``"linear"`` (collapsed model) or ``"identity"`` (``x`` is ``z``, needs
    ``D == d``); mass_matrix: ``"laplace"`` (dense inverse Hessian at each chain's conditional mode, fixed;
    chains start from a draw of that Gaussian) or ``"adapt"`` (NumPyro's windowed adaptation, diagonal unless
    ``dense_mass``); order_moves: Metropolis order proposals per iteration (None: 4 d); swap_prob: probability
    that a proposal is a random swap (else a relocation of one node, its pair weights carried); target_accept_prob, max_tree_depth: NUTS;
    tau: intervention noise scale; fixed_noise_scales: (d,) known SCM noise scales (no ``noise_scale`` site
    then); known_order: fixes the order (no order moves); order_init: ``"proposal"`` or ``"random"``;
    init_jitter: sd of the Gaussian jitter of each chain's start (unconstrained L and log sigma);
    svi_init_steps: > 0 runs a short ``collapsed`` SVI fit first and starts each chain from one of its
    draws (linear decoder only).
    """

    num_warmup: int = setting(500, integer(0))
    num_samples: int = setting(2000, integer(1))
    num_chains: int = setting(4, integer(1))
    chain_method: str = setting("vectorized", one_of("vectorized", "sequential", "parallel"))
    decoder: str = setting("linear", one_of(*DECODERS), why=_DECODER_WHY)
    mass_matrix: str = setting("laplace", one_of(*MASSES))
    order_moves: int | None = setting(None, optional(integer(0), "for 4 d moves"))
    swap_prob: float = setting(0.1, number(ge=0, le=1))
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

    def __post_init__(self):
        check_fields(self, "mcmc")
        if self.svi_init_steps and self.decoder != "linear":
            raise ValueError("mcmc: svi_init_steps needs decoder='linear' (the collapsed SVI fit)")
        if self.dense_mass and self.mass_matrix == "laplace":
            raise ValueError("mcmc: dense_mass applies to mass_matrix='adapt' (the Laplace mass matrix is "
                             "always dense); drop dense_mass or set mass_matrix='adapt'")

    def check_dataset(self, dataset):
        """Refuse, before any work, a dataset these settings cannot fit (DataError / ValueError)."""
        check_decoder("mcmc", self.decoder, dataset)
        check_known_order("mcmc", self.known_order, dataset.d)
        if self.fixed_noise_scales is not None and len(self.fixed_noise_scales) != dataset.d:
            raise ValueError(f"mcmc: fixed_noise_scales needs {dataset.d} values (one per latent); got "
                             f"{len(self.fixed_noise_scales)}")
        check_unknowns("mcmc", dataset)


def _model(dataset, config, priors, fixed):
    """The sampled model ``model(stats, *, order)`` and its statistics: the collapsed model on the per-pattern
    sufficient statistics (rows taken as independent), or the identity model on z's statistics."""
    if config.decoder == "identity":
        stats = identity_stats(jnp.asarray(dataset.x, jnp.float64), dataset.targets, dataset.values)
        base = partial(identity_model, priors=priors, tau=config.tau)
    else:
        stats = jax.tree.map(jnp.asarray, sufficient_stats(dataset.x, dataset.targets, dataset.values))
        base = partial(collapsed_model, priors=priors, tau=config.tau)

    def model(stats, *, order):
        with handlers.condition(data={} if fixed is None else {"noise_scale": fixed}):
            base(stats, order=order)

    return model, stats


def stats_d(stats):
    """The number of latents d of collapsed or identity statistics."""
    return stats.gram.shape[-1] if hasattr(stats, "gram") else stats.d


def _run(model, stats, starts, orders, config, seed, progress):
    """Run the chains with :class:`numpyro.infer.MCMC`; returns the draws (chain-major, leading C * S) and the
    extra fields (leading C * S)."""
    n_moves = 4 * stats_d(stats) if config.order_moves is None else config.order_moves
    n_moves = 0 if config.known_order is not None else n_moves
    kernel = OrderNUTS(model, order_moves=n_moves, swap_prob=config.swap_prob, mass=config.mass_matrix,
                       dense_mass=config.dense_mass, target_accept_prob=config.target_accept_prob,
                       max_tree_depth=config.max_tree_depth)
    params = init_params(model, (stats,), starts, orders)
    if config.num_chains == 1:
        params = jax.tree.map(lambda a: a[0], params)
    with warnings.catch_warnings():  # "not enough devices": NumPyro then runs the chains one by one
        warnings.filterwarnings("ignore", message="There are not enough devices")
        mcmc = MCMC(kernel, num_warmup=config.num_warmup, num_samples=config.num_samples,
                    num_chains=config.num_chains, chain_method=config.chain_method, progress_bar=progress)
    mcmc.run(jnp.asarray(seed_keys(seed, 1)[0]), stats, init_params=params, extra_fields=_FIELDS)
    draws = jax.tree.map(np.asarray, mcmc.get_samples())
    return draws, jax.tree.map(np.asarray, mcmc.get_extra_fields())


def fit_mcmc(dataset, *, config: MCMCConfig, priors=None, seed=0, progress=True):
    """Sample the posterior of ``dataset`` with :class:`OrderNUTS` chains; returns a :class:`Posterior`.

    All input checks run before any compilation.
    """
    start = time.perf_counter()
    priors = parse_priors(priors)
    d, C, tau = dataset.d, config.num_chains, config.tau
    fixed = None if config.fixed_noise_scales is None else np.asarray(config.fixed_noise_scales, np.float64)
    rng = np.random.default_rng(seed)
    with jax.enable_x64(True):
        starts, orders0, proposal, svi = chain_starts(dataset, config, rng)
        model, stats = _model(dataset, config, priors, fixed)
        draws, extra = _run(model, stats, starts, orders0, config, seed, progress)
        S = C * config.num_samples
        noise = draws["noise_scale"] if fixed is None else np.broadcast_to(fixed, (S, d)).copy()
        if config.decoder == "linear":
            decoder = LinearDecoder(draws["decoder_weight"], draws["decoder_bias"], draws["obs_scale"])
            keep = np.linspace(0, S - 1, min(S, _SUMMARY_DRAWS)).round().astype(int)
            latent_mean, latent_sd = latent_summaries(
                dataset, {"W": draws["W"][keep], "noise_scale": noise[keep], "decoder_weight": decoder["A"][keep],
                          "decoder_bias": decoder["b"][keep], "obs_scale": decoder["obs_scale"][keep]}, tau)
        else:
            decoder = IdentityDecoder()
            latent_mean, latent_sd = np.asarray(dataset.x, np.float64), np.zeros((dataset.N, d))
    moves = extra["moves"].reshape(-1, 4).sum(0)
    post = Posterior(
        method="mcmc", W=draws["W"], noise_scales=noise, orders=draws["order"].reshape(S, d), decoder=decoder,
        latent_mean=latent_mean, latent_scale=latent_sd, elbo=np.zeros(0), seconds=0.0, tau=tau,
        info={"num_chains": C, "config": config.__dict__, "priors": priors.describe(),
              "proposal_order": proposal.tolist(), "divergences": int(extra["diverging"].sum()),
              "mean_accept_prob": float(extra["accept_prob"].mean()),
              "mean_leapfrog_steps": float(extra["num_steps"].mean()),
              "step_size": float(np.median(extra["step_size"])),
              "order_acceptance": _rate(moves[0] + moves[2], moves[1] + moves[3]),
              "swap_acceptance": _rate(moves[0], moves[1]), "relocation_acceptance": _rate(moves[2], moves[3]),
              "svi_init": svi is not None},
    )
    return dataclasses.replace(post, info=post.info | diagnostics(post), seconds=time.perf_counter() - start)


def _rate(a, b):
    return float(a / b) if b else float("nan")


def diagnostics(posterior):
    """Sampler diagnostics via ArviZ on ``posterior.to_arviz()``: max R-hat and min bulk ESS of ``W``
    and ``noise_scale`` (entries that never vary, e.g. the diagonal of W, are skipped)."""
    import arviz_stats

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
            rhat = np.asarray(arviz_stats.rhat(tree, var_names=[var])[var])
            ess = np.asarray(arviz_stats.ess(tree, var_names=[var])[var])
        out[f"max_rhat_{var}"] = float(np.nanmax(rhat[varying]))
        out[f"min_ess_{var}"] = float(np.nanmin(ess[varying]))
    return out

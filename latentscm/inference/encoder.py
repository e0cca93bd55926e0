"""The ``amortized`` method's encoder and what is computed with it: the supervised start (encoder and
decoder fitted by regression before SVI), the latent summaries of training rows (each pair's second row
through the pair's transform), and the importance-sampled log predictive of a network decoder."""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
from jax.scipy.special import logsumexp

from ..models.amortized import intervention_scale, pair_noise_guide, pair_second
from ..models.collapsed import make_units
from ..models.scm import InterventionalLinearGaussian
from .initialise import Initialisation, estimate_latents, order_score, propose_order, weights_in_order

_INIT_Z_SCALE = 0.05
_ENCODE_ROWS = 4096  # rows per call of the encoder's mean and sd
_SAMPLED_ROWS = 256  # rows per call where each row is sampled for every posterior draw


class GaussianEncoder(eqx.Module):
    """``q(z | x, m, v)``: one row's ``[x_std (D,), m (d,), v (d,)]`` -> (loc (d,), scale_tril (d, d)).

    With ``missing=True`` a fourth input ``(d,)`` flags the targeted entries whose value is unknown
    (their ``v`` is 0); None feeds zeros.

    ``x_std`` is ``x`` standardised by the training data's per-feature mean and sd. The MLP's outputs
    are ``d`` means, ``d`` log-scales (the Cholesky diagonal) and, for ``full=True``, the
    ``d(d-1)/2`` below-diagonal entries of the Cholesky factor.
    """

    net: eqx.nn.MLP
    d: int = eqx.field(static=True)
    full: bool = eqx.field(static=True)
    missing: bool = eqx.field(static=True)

    def __init__(self, D, d, width, depth, full, *, key, missing=False):
        n_out = 2 * d + (d * (d - 1) // 2 if full else 0)
        net = eqx.nn.MLP(D + (3 if missing else 2) * d, n_out, width, depth, activation=jax.nn.leaky_relu, key=key)
        last = net.layers[-1]
        weight = last.weight.at[d:].set(0.0)
        bias = last.bias.at[d:].set(0.0).at[d:2 * d].set(jnp.log(_INIT_Z_SCALE))
        self.net = eqx.tree_at(lambda n: (n.layers[-1].weight, n.layers[-1].bias), net, (weight, bias))
        self.d, self.full, self.missing = d, full, missing

    def __call__(self, x_std, targets, values, missing=None):
        d = self.d
        extra = [jnp.zeros_like(targets) if missing is None else missing] if self.missing else []
        out = self.net(jnp.concatenate([x_std, targets, values] + extra))
        tril = jnp.diag(jnp.exp(jnp.clip(out[d:2 * d], -12.0, 5.0)))
        if self.full:
            rows, cols = jnp.tril_indices(d, -1)
            tril = tril.at[rows, cols].set(out[2 * d:])
        return out[:d], tril

    def distribution(self, x_std, targets, values, missing=None):
        """Batched ``q(z_n)`` for rows (B, ...): ``Normal(...).to_event(1)`` or ``MultivariateNormal``."""
        loc, tril = jax.vmap(self)(x_std, targets, values, missing)
        if self.full:
            return dist.MultivariateNormal(loc, scale_tril=tril)
        return dist.Normal(loc, jnp.diagonal(tril, 0, -2, -1)).to_event(1)


def _fit_regression(net, inputs, targets, weights, steps, learning_rate, key, batch=2048):
    """Fit ``net`` (a row-wise module of ``inputs``) to ``targets`` by weighted squared error (Adam).

    inputs: tuple of (N, ...) arrays; targets, weights: (N, k). Minibatches of ``batch`` rows.
    """
    N = targets.shape[0]
    B = min(N, batch)
    params, static = eqx.partition(net, eqx.is_inexact_array)
    opt = optax.adam(learning_rate)

    def loss(p, idx):
        out = jax.vmap(eqx.combine(p, static))(*(a[idx] for a in inputs))
        out = out[0] if isinstance(out, tuple) else out
        return jnp.sum(weights[idx] * (out - targets[idx]) ** 2) / jnp.maximum(jnp.sum(weights[idx]), 1.0)

    @functools.partial(jax.jit, static_argnums=3)
    def run(p, s, key, n):
        def body(carry, k):
            p, s = carry
            idx = jax.random.choice(k, N, (B,), replace=False) if B < N else jnp.arange(N)
            g = jax.grad(loss)(p, idx)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (p, s), _ = jax.lax.scan(body, (p, s), jax.random.split(key, n))
        return p, s

    if steps > 0:
        params, _ = run(params, opt.init(params), key, steps)
    return eqx.combine(params, static)


def encode(encoder, x_std, targets, values, missing=None, chunk=_ENCODE_ROWS):
    """Encoder mean and sd (N, d) for every row, in chunks."""
    f = eqx.filter_jit(lambda e, x, t, v, u: jax.vmap(e)(x, t, v, u))
    missing = jnp.zeros_like(targets) if missing is None else missing
    means, sds = [], []
    for i in range(0, len(x_std), chunk):
        loc, tril = f(encoder, x_std[i:i + chunk], targets[i:i + chunk], values[i:i + chunk], missing[i:i + chunk])
        means.append(np.asarray(loc))
        sds.append(np.sqrt(np.sum(np.asarray(tril) ** 2, axis=-1)))
    return np.concatenate(means), np.concatenate(sds)


def initialise_amortized(dataset, config, key, x_std, targets, values):
    """Data-driven start: pretrained encoder and decoder, latent estimate, order proposal, L and sigma."""
    d, D = dataset.d, dataset.D
    k_enc, k_dec, k_fit1, k_fit2 = jax.random.split(key, 4)
    encoder = GaussianEncoder(D, d, config.encoder_width, config.encoder_depth,
                              config.encoder_covariance == "full", key=k_enc,
                              missing=config.unknown_values == "latent")
    t_np = np.asarray(targets)
    lab = (t_np > 0) & np.isfinite(dataset.values)  # targeted with a known value: a label
    v_np = np.where(lab, np.asarray(values), np.where(t_np > 0, np.nan, 0.0))  # NaN where unknown
    z_lin, found = estimate_latents(np.asarray(dataset.x, np.float64), t_np, v_np, tau=config.tau,
                                    value_scale=config.value_scale, order=config.known_order)[:2]
    if config.latent_init == "supervised":
        # Label z_j by v_j where j is targeted; nodes without usable interventions fall back to z_lin.
        usable = np.array([lab[:, j].sum() >= d + 2 and np.ptp(v_np[lab[:, j], j]) > 0 for j in range(d)])
        labels = np.where(usable, np.where(lab, v_np, 0.0), z_lin)
        weights = np.where(usable, lab.astype(np.float32), 1.0)
        zeros = jnp.zeros_like(targets)
        encoder = _fit_regression(encoder, (x_std, zeros, zeros), jnp.asarray(labels, jnp.float32),
                                  jnp.asarray(weights, jnp.float32), config.pretrain_steps, 3e-3, k_fit1)
        z_hat = encode(encoder, x_std, zeros, zeros)[0].astype(np.float64)
    else:
        z_hat = z_lin
        zeros = jnp.zeros_like(targets)
        encoder = _fit_regression(encoder, (x_std, zeros, zeros), jnp.asarray(z_lin, jnp.float32),
                                  jnp.ones_like(targets), config.pretrain_steps, 3e-3, k_fit1)
    first = encoder.net.layers[0]
    encoder = eqx.tree_at(lambda e: e.net.layers[0].weight, encoder, first.weight.at[:, D:].set(0.0))
    if config.known_order is None and found is not None:  # the identification's order (no value anchors)
        order, score = found, order_score(z_hat, t_np, found)
    elif config.known_order is None:
        order, score = propose_order(z_hat, t_np, v_np)
    else:
        order = np.asarray(config.known_order)
        score = order_score(z_hat, t_np, order)
    W, sigma = weights_in_order(z_hat, t_np, order)
    x64 = np.asarray(dataset.x, np.float64)
    Z1 = np.c_[z_hat, np.ones(len(z_hat))]
    coef, *_ = np.linalg.lstsq(Z1, x64, rcond=None)
    A, b = coef[:-1], coef[-1]
    resid = x64 - Z1 @ coef
    decoder = None
    if config.decoder == "mlp":
        decoder = eqx.nn.MLP(d, D, config.decoder_width, config.decoder_depth, activation=jax.nn.leaky_relu,
                             key=k_dec)
        decoder = _fit_regression(decoder, (jnp.asarray(z_hat, jnp.float32),), jnp.asarray(x64, jnp.float32),
                                  jnp.ones((len(x64), D), jnp.float32), config.pretrain_steps, 3e-3, k_fit2)
        resid = x64 - decode_point(decoder, z_hat[None], None)[0]
    obs_scale = max(float(np.sqrt(np.mean(resid**2))), 1e-3)
    ini = Initialisation(z_hat, A, b, obs_scale, np.asarray(order), W, sigma, float(score), t_np)
    return ini, encoder, decoder


def decode_point(net, z, draws):
    """``decode`` for a point-estimate decoder: z (K, M, d) -> (K, M, D); ``draws`` unused."""
    return np.asarray(_apply_rows(net, jnp.asarray(z, jnp.float32)))


@eqx.filter_jit
def _apply_rows(net, z):
    return jax.vmap(jax.vmap(net))(z)


def importance_log_predictive(encoder, decoder, x_norm, draws, tau, num_draws, num_particles, key, value_scale,
                              dataset, chunk=_SAMPLED_ROWS, per_draw=False):
    """Per-row estimate (N,) of ``log p(x_n | m_n, v_n, data)`` for a nonlinear decoder; with ``per_draw``
    the per-draw estimates (num_draws, N) of ``log p(x_n | m_n, v_n, theta_s)`` instead (same keys).

    For each of ``num_draws`` posterior draws theta_s (the first ones), ``p(x_n | theta_s)`` is estimated
    by importance sampling with the encoder ``q(z | x_n, m_n, v_n)`` as proposal (``num_particles``
    samples): ``mean_k p(x_n | z_k) p(z_k | theta_s) / q(z_k)``; the estimates are averaged over draws.
    Unbiased for ``p(x_n | data)``; its log is biased low (Jensen), the more so the worse q fits.
    ``value_scale`` (None: values must be known): prior sd of unknown values (NaN where targeted).
    """
    x = jnp.asarray(dataset.x, jnp.float32)
    x_std = (x - x_norm[0]) / x_norm[1]
    t = jnp.asarray(dataset.targets, jnp.float32)
    v = jnp.asarray(np.where(dataset.targets > 0, np.nan_to_num(dataset.values), 0.0), jnp.float32)
    miss = jnp.asarray((dataset.targets > 0) & np.isnan(dataset.values), jnp.float32)
    if value_scale is None and dataset.num_unknown_values:
        raise ValueError("heldout_nll: the dataset has unknown intervention values; the fit had "
                         "unknown_values = 'error'")
    scales = jnp.broadcast_to(intervention_scale(tau, t, None if value_scale is None else 1 - miss,
                                                 value_scale or 0.0), t.shape)
    S = min(num_draws, len(draws["W"]))
    W, sigma, s = (jnp.asarray(draws[k][:S], jnp.float32) for k in ("W", "noise_scale", "obs_scale"))

    @eqx.filter_jit
    def rows(key, x, x_std, t, v, miss, tau):
        q = encoder.distribution(x_std, t, v, miss)  # batch (B,)
        z = q.sample(key, (num_particles,))  # (K, B, d)
        log_q = q.log_prob(z)  # (K, B)
        mean = jax.vmap(jax.vmap(decoder))(z)  # (K, B, D)

        def one_draw(W, sigma, s):
            log_pz = InterventionalLinearGaussian(W, sigma, t, v, tau).log_prob(z)  # tau: (B, d) scales
            log_px = dist.Normal(mean, s).to_event(1).log_prob(x)
            return logsumexp(log_px + log_pz - log_q, axis=0) - jnp.log(num_particles)  # (B,)

        ll = jax.lax.map(lambda a: one_draw(*a), (W, sigma, s))  # (S, B)
        return ll if per_draw else logsumexp(ll, axis=0) - jnp.log(S)

    out = []
    for i in range(0, len(x), chunk):
        key, k = jax.random.split(key)
        sl = slice(i, i + chunk)
        out.append(np.asarray(rows(k, x[sl], x_std[sl], t[sl], v[sl], miss[sl], scales[sl])))
    return np.concatenate(out, axis=-1)


def pair_units(dataset):
    """``(singles (S,), pairs (P, 2))`` row indices for ``use_pairs``; in each pair, row a (column 0) is the
    one with fewer targets. The pair ids were validated by ``check_fit_inputs``."""
    units = make_units(np.zeros((dataset.N, 0)), dataset.targets, dataset.targets, dataset.pair)  # rows only
    groups = {u.rows.shape[1]: u.rows for u in units}
    singles, pairs = groups.get(1, np.zeros((0, 1), np.int64))[:, 0], groups[2]
    n_t = dataset.targets.sum(1)
    swap = n_t[pairs[:, 1]] < n_t[pairs[:, 0]]
    pairs = np.where(swap[:, None], pairs[:, ::-1], pairs)
    return singles.astype(np.int32), pairs.astype(np.int32)


def noise_guide(enc, x_std, t, v, miss, W, sigma, t_a, scale):
    """``q(u)`` of a batch of pairs: the encoder's Gaussian for row b mapped by :func:`pair_noise_guide`."""
    loc, tril = jax.vmap(enc)(x_std, t, v, miss)
    sd = jnp.sqrt(jnp.sum(tril**2, axis=-1))
    loc, sc = pair_noise_guide(loc, sd, W, sigma, t_a, t, v, scale)
    return dist.Normal(loc, sc).to_event(1)


def pair_latents(encoder, data, pairs, draws, config, key, chunk=_SAMPLED_ROWS):
    """Mean and sd (P, d) of each pair's row b under the fitted guide: per posterior draw (W, sigma),
    ``z_a ~ q(z_a)``, ``u ~ q(u | W, sigma)``, ``z_b = pair_second(z_a, u)``; moments over the draws."""
    W, sigma = jnp.asarray(draws["W"], jnp.float32), jnp.asarray(draws["noise_scale"], jnp.float32)
    latent_values = config.unknown_values == "latent"
    t, v = data["targets"], data["values"]
    miss = data["missing"] if latent_values else None
    scale = jnp.broadcast_to(intervention_scale(config.tau, t, None if miss is None else 1 - miss,
                                                config.value_scale), t.shape)

    @eqx.filter_jit
    def moments(encoder, key, a, b):
        m = lambda r: None if miss is None else miss[r]  # noqa: E731
        qa = encoder.distribution(data["x_std"][a], t[a], v[a], m(a))

        def one(k, W, sigma):
            k1, k2 = jax.random.split(k)
            q_u = noise_guide(encoder, data["x_std"][b], t[b], v[b], m(b), W, sigma, t[a], scale[b])
            return pair_second(qa.sample(k1), q_u.sample(k2), W, sigma, t[a], t[b], v[b], scale[b])

        z = jax.vmap(one)(jax.random.split(key, len(W)), W, sigma)  # (S, B, d)
        return z.mean(0), z.std(0)

    means, sds = [], []
    for i in range(0, len(pairs), chunk):
        key, k = jax.random.split(key)
        mean, sd = moments(encoder, k, jnp.asarray(pairs[i:i + chunk, 0]), jnp.asarray(pairs[i:i + chunk, 1]))
        means.append(np.asarray(mean))
        sds.append(np.asarray(sd))
    return np.concatenate(means), np.concatenate(sds)

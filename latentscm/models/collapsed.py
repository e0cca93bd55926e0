"""The collapsed model for linear decoders: ``z`` integrated out exactly.

Per row, ``x_n = z_n A + b + s * noise`` with ``z_n ~ N(mu_n, C^T S C)`` (see ``scm``), so
``x_n ~ N(v_n G + b, U U^T + s^2 I_D)`` with ``G = diag(m) C A`` and ``U^T = S^{1/2} C A`` (d, D):
low rank plus diagonal, handled by Woodbury and the determinant lemma. Rows sharing a target mask
share ``C`` and ``S``; the regime's summed log-density depends on the data only through sufficient
statistics (counts, first and second moments of ``x`` and ``v`` and their cross moments), computed
once. The second moments of ``x`` are kept as a factor ``F`` with ``F^T F = sum_n x_n x_n^T`` per
regime (the rows themselves while a regime has at most D of them, else the triangular factor of a QR
decomposition), so ``D x D`` matrices are never formed and one evaluation costs
``O(M D d + R D d^2)`` with ``M = sum_r min(n_r, D)`` factor rows: ``O(R D^2 d)`` at most, ``O(N D d)``
when regimes have fewer rows than pixels (images: D = 2500).

Model sample sites (public API): ``edge_weight`` (d(d-1)/2,) free entries of the position-space
lower-triangular ``L``; ``P`` (d, d) permutation (``P[p, i] = 1``: node i at position p);
``noise_scale`` (d,); ``decoder_weight`` (d, D); ``decoder_bias`` (D,); ``obs_scale`` ();
deterministic ``W`` (d, d); factor ``x`` (the collapsed log-likelihood). Horseshoe priors add
``edge_weight_global_scale`` and ``edge_weight_local_scale``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro

from .factors import unit_factors
from .precision_form import projected_moments, single_row_log_likelihood
from .target_sets import target_log_likelihood
from .scm import LOG_2PI, sample_graph

_BLOCK_ROWS = 128  # rows per block of the second-moment factor


class Units(NamedTuple):
    """Rows arranged in units of k rows that share their exogenous noise (k = 1: single rows,
    k = 2: pairs). x (U, k, D); targets, values, known (U, k, d); rows (U, k) original row indices.
    ``values`` is 0 where not targeted or unknown; ``known`` is 1 where a targeted value is observed."""

    x: np.ndarray
    targets: np.ndarray
    values: np.ndarray
    known: np.ndarray
    rows: np.ndarray


def make_units(x, targets, values, pair=None):
    """Split rows into units: pairs (rows with equal ``pair`` id) and singles. Returns a tuple of
    :class:`Units` (singles first), omitting empty ones. NaN values where targeted are unknown."""
    x = np.asarray(x, np.float64)
    t = np.asarray(targets, np.int8)
    v = np.asarray(values, np.float64)
    known = ((t > 0) & np.isfinite(v)).astype(np.int8)
    v = np.where(known > 0, v, 0.0)
    groups = [np.arange(len(x))[:, None]]
    if pair is not None:
        ids, inverse, counts = np.unique(np.asarray(pair), return_inverse=True, return_counts=True)
        if counts.max() > 2:
            raise ValueError(f"pair ids must group at most two rows; id {ids[counts.argmax()]} has "
                             f"{counts.max()} rows. Fix the pair array or fit with use_pairs = false")
        order = np.argsort(inverse, kind="stable")
        first = np.searchsorted(inverse[order], np.arange(len(ids)))
        singles = order[first[counts == 1]]
        pairs = np.stack([order[first[counts == 2]], order[first[counts == 2] + 1]], axis=1)
        groups = [g for g in (singles[:, None], pairs) if len(g)]
    return tuple(Units(x[g], t[g], v[g], known[g], g) for g in groups)


class SufficientStats(NamedTuple):
    """Sufficient statistics of units grouped by pattern; R patterns of k rows.

    masks, known (R, k, d); n (R,); sx (R, kD); fx (M, B, kD) and fg (M,): a factor of the second
    moments in M blocks of B rows (zero rows pad each pattern's last block), ``sum_n x_n x_n^T`` of
    pattern r equals ``sum_{m: fg_m = r} fx_m^T fx_m``; sv (R, kd);
    svv (R, kd, kd); sxv (R, kD, kd); tr_sxx (R,) (kept separately for accuracy). Unit rows are
    concatenated.
    """

    masks: np.ndarray
    known: np.ndarray
    n: np.ndarray
    sx: np.ndarray
    fx: np.ndarray
    fg: np.ndarray
    sv: np.ndarray
    svv: np.ndarray
    sxv: np.ndarray
    tr_sxx: np.ndarray

    @property
    def d(self):
        return self.masks.shape[-1]

    @property
    def k(self):
        return self.masks.shape[-2]

    @property
    def D(self):
        return self.sx.shape[-1] // self.masks.shape[-2]


def group_rows(targets):
    """Distinct target masks (R, d) and each row's group index (N,)."""
    masks, index = np.unique(np.asarray(targets, dtype=np.int8), axis=0, return_inverse=True)
    return masks, index.reshape(-1)


def group_block(group, most):
    """Rows per block for the groups of :func:`group_rows`' index ``group``: the power of two that holds the median
    group (8 to ``most``, a power of two), so that every group's rows go in blocks of one size (one compiled shape)
    and a typical group fills one block without being padded far beyond it."""
    median = max(1.0, float(np.median(np.bincount(group))))
    return 1 << int(np.clip(np.ceil(np.log2(median)), 3, np.log2(most)))


def unit_stats(units: Units, dtype=np.float64, group=None):
    """Sufficient statistics of units grouped by their (targets, known) pattern (float64, numpy), or by
    ``group`` (U,) (e.g. regime ids; each group's pattern is that of its first unit)."""
    U, k, D = units.x.shape
    d = units.targets.shape[-1]
    pattern = np.concatenate([units.targets.reshape(U, -1), units.known.reshape(U, -1)], axis=1)
    if group is None:
        patterns, g = group_rows(pattern)
    else:
        ids, first, g = np.unique(np.asarray(group), return_index=True, return_inverse=True)
        patterns, g = pattern[first], g.reshape(-1)
    R = len(patterns)
    X, V = units.x.reshape(U, k * D), units.values.reshape(U, k * d)
    rows_of = [np.flatnonzero(g == r) for r in range(R)]
    factors = []
    for rows in rows_of:  # F_r^T F_r = X_r^T X_r with at most kD rows
        factors.append(X[rows] if len(rows) <= k * D else np.linalg.qr(X[rows], mode="r"))
    # blocks of B rows, one pattern per block: the likelihood forms one (kd, kd) product per block,
    # never an (M, r, kd) array
    B = max(1, min(max(len(f) for f in factors), _BLOCK_ROWS))
    blocks, fg = [], []
    for r, f in enumerate(factors):
        nb = max(1, -(-len(f) // B))
        padded = np.zeros((nb * B, k * D))
        padded[: len(f)] = f
        blocks.append(padded.reshape(nb, B, k * D))
        fg += [r] * nb
    sv = np.stack([V[rows].sum(0) for rows in rows_of])
    svv = np.stack([V[rows].T @ V[rows] for rows in rows_of])
    sxv = np.stack([X[rows].T @ V[rows] for rows in rows_of])
    return SufficientStats(
        *(np.asarray(a, dtype) for a in (patterns[:, : k * d].reshape(R, k, d), patterns[:, k * d:].reshape(R, k, d),
                                         np.array([len(rows) for rows in rows_of]),
                                         np.stack([X[rows].sum(0) for rows in rows_of]), np.concatenate(blocks))),
        np.asarray(fg, np.int64),
        *(np.asarray(a, dtype) for a in (sv, svv, sxv, np.array([(X[rows] ** 2).sum() for rows in rows_of]))),
    )


class CenteredStats(NamedTuple):
    """Statistics for the float32 likelihood (:func:`centered_log_likelihood`); R patterns of k rows.

    masks, known (R, k, d); n (R,); xbar (R, kD) and vbar (R, kd): each pattern's mean unit; fx (M, B, kD),
    fv (M, B, kd), fg (M,): a factor of the *centred* units ``[X - xbar, V - vbar]`` of pattern ``fg_m`` in
    blocks of B rows (at most kD + kd rows per pattern: the centred rows, or a QR factor). Computed in
    float64 on the host; the step sees only residual-sized numbers, so it runs in float32.
    """

    masks: np.ndarray
    known: np.ndarray
    n: np.ndarray
    xbar: np.ndarray
    vbar: np.ndarray
    fx: np.ndarray
    fv: np.ndarray
    fg: np.ndarray

    @property
    def d(self):
        return self.masks.shape[-1]

    @property
    def k(self):
        return self.masks.shape[-2]

    @property
    def D(self):
        return self.xbar.shape[-1] // self.masks.shape[-2]


def centered_stats(units: Units, dtype=np.float32):
    """:class:`CenteredStats` of units grouped by their (targets, known) pattern (float64 on the host,
    returned as ``dtype``)."""
    U, k, D = units.x.shape
    d = units.targets.shape[-1]
    pattern = np.concatenate([units.targets.reshape(U, -1), units.known.reshape(U, -1)], axis=1)
    patterns, g = group_rows(pattern)
    R = len(patterns)
    Y = np.concatenate([units.x.reshape(U, k * D), units.values.reshape(U, k * d)], axis=1).astype(np.float64)
    rows_of = [np.flatnonzero(g == r) for r in range(R)]
    means = np.stack([Y[rows].mean(0) for rows in rows_of])
    factors = []
    for r, rows in enumerate(rows_of):  # F^T F = sum of the centred rows' outer products
        Yc = Y[rows] - means[r]
        factors.append(Yc if len(rows) <= Y.shape[1] else np.linalg.qr(Yc, mode="r"))
    B = max(1, min(max(len(f) for f in factors), _BLOCK_ROWS))
    blocks, fg = [], []
    for r, f in enumerate(factors):
        nb = max(1, -(-len(f) // B))
        padded = np.zeros((nb * B, Y.shape[1]))
        padded[: len(f)] = f
        blocks.append(padded.reshape(nb, B, -1))
        fg += [r] * nb
    F = np.concatenate(blocks)
    cast = lambda a: np.asarray(a, dtype)  # noqa: E731
    return CenteredStats(cast(patterns[:, : k * d].reshape(R, k, d)), cast(patterns[:, k * d:].reshape(R, k, d)),
                         cast([len(rows) for rows in rows_of]), cast(means[:, : k * D]), cast(means[:, k * D:]),
                         cast(F[..., : k * D]), cast(F[..., k * D:]), np.asarray(fg, np.int32))


def _residual_quad(X, V, A, gam, gzm, L, s2):
    """``sum_rows e Sigma^-1 e^T`` of the residuals ``e = X - V G`` (rows X (..., n, k, D), V (..., n, kd)),
    ``Sigma = U U^T + s2 I`` with ``U^T = gam A`` and ``G = gzm A`` (A acting on each of the k rows),
    ``chol(s2 I + U^T U) = L``.

    As ``|w|^2 + |y|^2 / s2`` with ``w = e U K^-1`` and ``y = e - w U^T = X - (V gzm + w gam) A``: sums of
    squares of residual-sized numbers (``U^T y = s2 w``), never the difference ``|e|^2 - |L^-1 U^T e|^2`` of
    two large ones, which float32 does not resolve when the latent variance is ~1e4 x s2. Every product
    with the data goes through A's d rows: O(n k D d) per call."""
    k = X.shape[-2]
    AAt = A @ A.T
    c = V @ gzm  # (..., n, kd): the mean's latent coordinates
    EA = (jnp.einsum("...kD,dD->...kd", X, A) - jnp.einsum("...kd,de->...ke", c.reshape(c.shape[:-1] + (k, -1)), AAt))
    UE = jnp.swapaxes(EA.reshape(EA.shape[:-2] + (-1,)) @ jnp.swapaxes(gam, -1, -2), -1, -2)  # (..., r, n)
    half = jax.scipy.linalg.solve_triangular(L, UE, lower=True)
    w = jnp.swapaxes(jax.scipy.linalg.solve_triangular(jnp.swapaxes(L, -1, -2), half, lower=False), -1, -2)
    c = c + w @ gam
    y = X - jnp.einsum("...kd,dD->...kD", c.reshape(c.shape[:-1] + (k, -1)), A)
    return jnp.sum(w * w) + jnp.sum(y * y) / s2


def centered_log_likelihood(stats, W, sigma, A, b, obs_scale, tau, value_scale=1.0):
    """:func:`collapsed_log_likelihood` from :class:`CenteredStats`, in a form that float32 resolves.

    Per pattern, the units' residuals split into the centred part (factor rows ``F_x - F_v G``) and the
    mean part ``sqrt(n) (xbar - b - vbar G)``; each quadratic form is a sum of squared triangular-solve
    outputs and residuals (:func:`_residual_quad`), the log-determinant comes from a Cholesky factor.
    """
    gamma, gz = unit_factors(W, sigma, tau, value_scale, stats.masks, stats.known)
    R, r, k, d = gamma.shape
    kD = k * A.shape[-1]
    gam, gzm = gamma.reshape(R, r, k * d), gz.reshape(R, k * d, k * d)
    s2 = obs_scale**2
    n = stats.n
    AAt = A @ A.T
    K = s2 * jnp.eye(r, dtype=A.dtype) + jnp.einsum("rpkd,de,rqke->rpq", gamma, AAt, gamma)
    L = jnp.linalg.cholesky(K)
    root = jnp.sqrt(n)[:, None]
    xm = (root * (stats.xbar - jnp.tile(b, k))).reshape(R, 1, k, -1)
    quad = _residual_quad(xm, (root * stats.vbar)[:, None], A, gam, gzm, L, s2)
    M, B = stats.fx.shape[:2]
    fg = stats.fg
    quad = quad + _residual_quad(stats.fx.reshape(M, B, k, -1), stats.fv, A, gam[fg], gzm[fg], L[fg], s2)
    logdet = (kD - r) * jnp.log(s2) + 2 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)), -1)
    return -0.5 * (jnp.sum(n * (kD * LOG_2PI + logdet)) + quad)


def collapsed_log_likelihood(stats, W, sigma, A, b, obs_scale, tau, value_scale=1.0):
    """Exact ``log p(x | targets, values, W, sigma, A, b, s)`` summed over all units (scalar).

    Per unit ``X ~ N(V G + b, U U^T + s^2 I)`` with ``U^T = Gamma A`` of rank r and ``G = Gz A`` (A acting
    on each of the k rows): Woodbury and the determinant lemma on ``K = s^2 I_r + U^T U``. Every term is
    formed in latent space: the data enter only through their sufficient statistics projected by A
    (``A S A^T`` from the factor blocks, ``A sx``, ``A sxv``), so no (R, r, kD) array exists and one
    evaluation costs ``O(M B kD d + R kD (kd)^2)`` plus ``O(R r^3)``. Single rows (``k = 1``) are scored by
    :func:`~latentscm.models.precision_form.single_row_log_likelihood` (``W`` a DAG): the same density and
    gradient without the inverse of ``I - W``.
    """
    score = single_row_log_likelihood if stats.masks.shape[-2] == 1 else factor_log_likelihood
    return score(stats, W, sigma, A, b, obs_scale, tau, value_scale)


def factor_log_likelihood(stats, W, sigma, A, b, obs_scale, tau, value_scale=1.0):
    """:func:`collapsed_log_likelihood` in factor form, for units of any number of rows."""
    gamma, gz = unit_factors(W, sigma, tau, value_scale, stats.masks, stats.known)
    R, r, k, d = gamma.shape
    D, kd = A.shape[-1], k * d
    s2, n = obs_scale**2, stats.n
    gam, gzm = gamma.reshape(R, r, kd), gz.reshape(R, kd, kd)  # noise -> latents, known values -> latents
    AAk = jnp.kron(jnp.eye(k, dtype=A.dtype), A @ A.T)  # (kd, kd): A A^T on each of the k rows
    Qb, tr_xx = projected_moments(stats, A, b)
    Ab = jnp.tile(A @ b, k)
    Axv = (jnp.einsum("rkDq,dD->rkdq", stats.sxv.reshape(R, k, D, kd), A).reshape(R, kd, kd)
           - Ab[None, :, None] * stats.sv[:, None, :])  # A (sxv - b sv^T)
    # E = sum_n e_n^T e_n with e_n = X_n - b - V_n G: its trace, and A E A^T
    GA = gzm @ AAk  # G A^T (values, latents)
    trE = tr_xx - 2 * jnp.einsum("rql,rlq->r", gzm, Axv) + jnp.einsum("rql,rlm,rqm->r", stats.svv, GA, gzm)
    cross = Axv @ GA
    AEA = Qb - cross - jnp.swapaxes(cross, -1, -2) + jnp.swapaxes(GA, -1, -2) @ stats.svv @ GA
    K = s2 * jnp.eye(r, dtype=A.dtype) + gam @ AAk @ jnp.swapaxes(gam, -1, -2)
    L = jnp.linalg.cholesky(K)
    LG = jax.scipy.linalg.solve_triangular(L, gam, lower=True)  # tr(K^-1 U^T E U) = tr(LG^T LG A E A^T)
    quad = (trE - jnp.einsum("rpq,rql,rpl->r", LG, AEA, LG)) / s2
    logdet = (k * D - r) * jnp.log(s2) + 2 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)), -1)
    return jnp.sum(-0.5 * (n * k * D * LOG_2PI + n * logdet + quad))


def _unit_terms(units, W, sigma, A, b, obs_scale, tau, value_scale):
    """Per-unit factors and residuals shared by the per-unit likelihood and the latent posterior.

    Returns gamma, gz, ``U^T e`` (U, r), ``e^T e`` (U,), K (U, r, r), V (U, kd) for the residual
    ``e = X - b - V G``; per-unit ``U^T`` (U, r, kD) is never formed (memory O(U kD), not O(U r kD)).
    """
    gamma, gz = unit_factors(W, sigma, tau, value_scale, units.targets, units.known)
    U, k, D = units.x.shape
    V = units.values.reshape(U, -1)
    e = units.x - b - jnp.einsum("nq,nqkd,dD->nkD", V, gz, A)
    Ue = jnp.einsum("nrkd,dD,nkD->nr", gamma, A, e)
    K = obs_scale**2 * jnp.eye(gamma.shape[1]) + jnp.einsum("nrkd,de,nske->nrs", gamma, A @ A.T, gamma)
    return gamma, gz, Ue, jnp.sum(e * e, (-2, -1)), K, V


def unit_log_likelihood(units, W, sigma, A, b, obs_scale, tau, value_scale=1.0):
    """Per-unit ``log p(X_u | ...)`` (U,): the density of :func:`collapsed_log_likelihood`, unit by unit."""
    gamma, _, Ue, ee, K, _ = _unit_terms(units, W, sigma, A, b, obs_scale, tau, value_scale)
    s2 = obs_scale**2
    quad = (ee - jnp.einsum("nr,nr->n", Ue, jnp.linalg.solve(K, Ue[..., None])[..., 0])) / s2
    r, kD = gamma.shape[1], units.x.shape[1] * units.x.shape[2]
    return -0.5 * (kD * LOG_2PI + (kD - r) * jnp.log(s2) + jnp.linalg.slogdet(K)[1] + quad)


def unit_latent_posterior(units, W, sigma, A, b, obs_scale, tau, value_scale=1.0):
    """Exact Gaussian ``p(Z_u | X_u, ...)`` of each unit's latents: mean (U, k, d), covariance (U, k, d, k, d).

    Through the noise coordinates: ``xi | X ~ N(e U K^{-1}, s^2 K^{-1})``, then ``Z = xi Gamma + V Gz``.
    """
    gamma, gz, Ue, _, K, V = _unit_terms(units, W, sigma, A, b, obs_scale, tau, value_scale)
    U, k, d = units.targets.shape
    gam = gamma.reshape(U, -1, k * d)
    Kinv = jnp.linalg.inv(K)
    xi = jnp.einsum("nr,nrs->ns", Ue, Kinv)
    mean = jnp.einsum("nr,nrq->nq", xi, gam) + jnp.einsum("nq,nqp->np", V, gz.reshape(U, -1, k * d))
    cov = obs_scale**2 * jnp.einsum("nrq,nrs,nsp->nqp", gam, Kinv, gam)
    return mean.reshape(U, k, d), cov.reshape(U, k, d, k, d)


def _singles(x, targets, values):
    """Rows as single-row units (jax-friendly: no numpy conversion)."""
    m = jnp.asarray(targets)
    known = (m > 0) & jnp.isfinite(values)
    v = jnp.where(known, values, 0.0)
    return Units(x[:, None], m[:, None], v[:, None], known.astype(m.dtype)[:, None], None)


def sufficient_stats(x, targets, values, pair=None, dtype=np.float64):
    """Sufficient statistics of a data set: one SufficientStats of single rows, or, with ``pair``,
    a tuple (singles, pairs) of those present."""
    stats = tuple(unit_stats(u, dtype) for u in make_units(x, targets, values, pair))
    return stats[0] if pair is None else stats


def row_log_likelihood(x, targets, values, W, sigma, A, b, obs_scale, tau, value_scale=1.0):
    """Per-row ``log p(x_n | ...)`` (N,) of rows taken as independent (held-out data, minibatches)."""
    return unit_log_likelihood(_singles(x, targets, values), W, sigma, A, b, obs_scale, tau, value_scale)


def latent_posterior(x, targets, values, W, sigma, A, b, obs_scale, tau, value_scale=1.0):
    """Exact Gaussian ``p(z_n | x_n, ...)`` of rows taken as independent: mean (N, d), cov (N, d, d)."""
    mean, cov = unit_latent_posterior(_singles(x, targets, values), W, sigma, A, b, obs_scale, tau, value_scale)
    return mean[:, 0], cov[:, 0, :, 0, :]


def collapsed_model(stats, *, priors, tau=0.1, value_scale=1.0, order=None, unknown=None):
    """NumPyro model of the collapsed latent SCM (see the module docstring for site names).

    stats: a SufficientStats or CenteredStats (float32 form), or a tuple of them (single rows, pairs; may be
    empty when ``unknown`` holds every row); priors: PriorSpec; tau: intervention noise scale;
    value_scale: prior scale of unknown intervention values; order: optional known node order (d,), which
    replaces the ``P`` site by a constant; unknown: optional :class:`TargetStats` of the regimes whose
    targets are inferred (their target sets summed out exactly, :func:`target_log_likelihood`).
    """
    stats = stats if isinstance(stats, tuple) and not isinstance(stats, (SufficientStats, CenteredStats)) else (stats,)
    first = stats[0] if stats else unknown.stats
    d, D = first.d, first.D
    W, sigma, _ = sample_graph(d, priors["edge_weight"], priors["noise_scale"], order)
    A = priors["decoder_weight"].sample("decoder_weight", (d, D))
    b = priors["decoder_bias"].sample("decoder_bias", (D,))
    s = priors["obs_scale"].sample("obs_scale", ())
    ll = sum((centered_log_likelihood if isinstance(st, CenteredStats) else collapsed_log_likelihood)(
        st, W, sigma, A, b, s, tau, value_scale) for st in stats)
    if unknown is not None:
        ll = ll + target_log_likelihood(unknown, W, sigma, A, b, s, tau, value_scale)
    numpyro.factor("x", ll)


"""Model criticism of a fit on its training data: PSIS-LOO and posterior predictive checks per regime.

Two checks, both on the data the model was fitted to:

* **LOO** (:func:`loo_metrics`): ArviZ's Pareto-smoothed importance-sampling leave-one-out estimate of
  the expected log predictive density, ``elpd_loo`` (higher is better; a sum over units), from the
  ``log_likelihood`` group of :meth:`Posterior.to_arviz(dataset) <latentscm.inference.Posterior.to_arviz>`
  (per pair when the data have pair ids, else per row). Its standard error and the largest Pareto shape
  ``k`` come with it; ``k > 0.7`` (:data:`LOO_K_MAX`) means the importance weights are unreliable for
  some units and so is the estimate.
* **Regime moments** (:func:`regime_check`): for each regime (``dataset.regime``), the mean and the
  covariance of x in a fixed q-dimensional basis (the q = min(d, 20) leading principal components of the
  training x; for an identity decoder the nodes themselves) are compared with their posterior
  predictive distribution: replicated data sets drawn with the rows' own targets and values, one per
  posterior draw (a draw picked at random, ``num_draws`` of them; unknown values from their
  N(0, value_scale^2) prior, inferred targets from each draw's target probabilities). Two discrepancies
  per regime, against the replicates' average mean ``m`` and covariance ``M``:
  ``T_mean = n (ybar - m)^T M^-1 (ybar - m)`` and ``T_cov = n [tr(M^-1 S) - log det(M^-1 S) - q]``
  (``S`` the regime's own covariance; ``T / 2n`` is a misfit in nats per row, a KL divergence). The
  posterior predictive p-value ``P(T_rep >= T_obs)`` is read off a scaled chi-square matched to the
  replicates' mean and variance of T (so that p-values far below 1 / num_draws are resolved). A regime
  fails when a p-value is below ``PPC_ALPHA / (2 R)`` (Bonferroni over the R regimes and both
  statistics) and its misfit exceeds ``PPC_KL`` nats per row. Replicated rows are drawn independently:
  paired rows share their noise, which leaves each regime's expected moments as they are.

:func:`criticise` runs both and returns a :class:`Criticism` with the ArviZ tree (log-likelihood
included), the metrics (``loo``, ``loo_se``, ``loo_p``, ``loo_k_max``, ``loo_k_over``, ``loo_units``,
``ppc_min_p``, ``ppc_failed``)
and the problems found as sentences; :func:`latentscm.runs.write_run` writes ``ppc.png`` (see
:func:`latentscm.plots_checks.plot_regime_check`) and ``ppc.json`` from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import chi2

from .inference.diagnostics import MOMENT_KL, pattern_moments
from .models.collapsed import group_rows

__all__ = ["LOO_K_MAX", "PPC_ALPHA", "PPC_KL", "Criticism", "RegimeCheck", "criticise", "loo_metrics",
           "regime_check"]

#: largest Pareto shape k at which PSIS-LOO is trusted (Vehtari et al. 2024)
LOO_K_MAX = 0.7
#: family-wise level of the regime check (Bonferroni over regimes and the two statistics)
PPC_ALPHA = 0.01
PPC_COMPONENTS = 20  # at most this many principal components: the covariance test needs n > 2q rows per
# regime, and its cost grows as q^3 per regime and replicate
#: ... and the misfit (nats per row) a failing regime must exceed: with many rows tiny misfits are significant
PPC_KL = MOMENT_KL
_LOO_MIN_DRAWS = 25  # PSIS fits a tail of min(S / 5, 3 sqrt(S)) >= 5 draws
_NAN_LOO = {"loo": float("nan"), "loo_se": float("nan"), "loo_p": float("nan"), "loo_k_max": float("nan"),
            "loo_k_over": 0, "loo_units": 0}


def loo_metrics(tree) -> dict:
    """``loo`` (elpd_loo, summed over units), ``loo_se``, ``loo_p`` (effective number of parameters),
    ``loo_k_max`` (largest Pareto k), ``loo_k_over`` (units with k > :data:`LOO_K_MAX`) and ``loo_units``
    as ``az.loo(tree)`` computes them (:func:`latentscm.inference.psis.loo`: ArviZ's algorithm vectorised over
    the units, checked against it in the tests; ArviZ's relative efficiency ``r_eff`` from several chains);
    NaN (and 0 units) when ``tree`` has no ``log_likelihood`` group or PSIS cannot fit a tail (fewer than 25
    draws, or all draws alike)."""
    from .inference.psis import loo

    if "log_likelihood" not in tree.children:
        return dict(_NAN_LOO)
    ll = tree["log_likelihood"]["x"]
    samples = ll.sizes["chain"] * ll.sizes["draw"]
    if samples < _LOO_MIN_DRAWS:
        return dict(_NAN_LOO)
    r_eff = 1.0
    if ll.sizes["chain"] > 1:  # as ArviZ: the mean relative ESS of the posterior's variables
        from arviz_stats import ess as arviz_ess

        ess = arviz_ess(tree, group="posterior", method="mean")
        r_eff = float(np.mean(np.hstack([np.ravel(ess[v].values) for v in ess.data_vars]))) / samples
    values = np.asarray(ll.transpose("chain", "draw", ...).values, np.float64).reshape(samples, -1)
    try:
        elpd, se, p, k = loo(values, r_eff)
    except ValueError:  # e.g. identical draws: PSIS has no tail to fit
        return dict(_NAN_LOO)
    return {"loo": elpd, "loo_se": se, "loo_p": p,
            "loo_k_max": float(np.nanmax(k)), "loo_k_over": int((k > LOO_K_MAX).sum()), "loo_units": int(k.size)}


@dataclass(frozen=True, eq=False)
class RegimeCheck:
    """The posterior predictive check of each regime's moments (see the module docstring).

    regimes (R,) ids; rows (R,) rows per regime; basis: what the q coordinates are; mean (R, q) and
    cov (R, q, q): the data's; mean_rep (K, R, q) and cov_rep (K, R, q, q): the replicates'; t_mean,
    t_cov, p_mean, p_cov, kl_mean, kl_cov (R,): discrepancies, p-values and misfits (nats per row), NaN
    for regimes with too few rows (at most 2q) to check; threshold: the p-value below which a regime fails;
    kl_rep (R,): the replicates' average of ``kl_mean + kl_cov``, the misfit that n rows drawn from the model
    itself show (sampling noise: about q (q + 3) / (4 n) nats per row).
    """

    regimes: np.ndarray
    rows: np.ndarray
    basis: str
    mean: np.ndarray
    cov: np.ndarray
    mean_rep: np.ndarray
    cov_rep: np.ndarray
    t_mean: np.ndarray
    t_cov: np.ndarray
    p_mean: np.ndarray
    p_cov: np.ndarray
    kl_mean: np.ndarray
    kl_cov: np.ndarray
    threshold: float
    kl_rep: np.ndarray | None = None

    def excess_misfit(self) -> float:
        """Nats per row by which the data's regime moments miss the model's beyond what data the model generated
        miss them: ``kl_mean + kl_cov - kl_rep`` (the KL divergence of the model's Gaussian from the regime's,
        less its sampling-noise level), averaged over the rows of the checked regimes. The statistic of the
        ``auto`` method's decision (:mod:`latentscm.inference.auto`); NaN when no regime was checked."""
        ok = np.isfinite(self.kl_mean) & np.isfinite(self.kl_cov)
        if not ok.any() or self.kl_rep is None:
            return float("nan")
        excess = self.kl_mean[ok] + self.kl_cov[ok] - self.kl_rep[ok]
        return float(np.sum(self.rows[ok] * excess) / np.sum(self.rows[ok]))

    @property
    def failed(self):
        """(R,) bool: the regimes whose mean or covariance the model misses."""
        with np.errstate(invalid="ignore"):
            return (((self.p_mean < self.threshold) & (self.kl_mean > PPC_KL))
                    | ((self.p_cov < self.threshold) & (self.kl_cov > PPC_KL)))

    def metrics(self) -> dict:
        """``ppc_min_p`` (smallest p-value over regimes and both statistics) and ``ppc_failed`` (count)."""
        p = np.concatenate([self.p_mean, self.p_cov])
        return {"ppc_min_p": float(np.nanmin(p)) if np.isfinite(p).any() else float("nan"),
                "ppc_failed": int(self.failed.sum())}

    def problems(self) -> list[str]:
        """One sentence when some regime fails, naming the worst; empty otherwise."""
        bad = np.flatnonzero(self.failed)
        if not len(bad):
            return []
        w = bad[np.argmax(np.fmax(self.kl_mean[bad], self.kl_cov[bad]))]
        return [f"posterior predictive check: the replicated data miss the mean or covariance of {len(bad)} of "
                f"{len(self.regimes)} regimes (worst: regime {self.regimes[w]}, {self.rows[w]} rows, mean misfit "
                f"{self.kl_mean[w]:.2f} nats per row (p = {self.p_mean[w]:.1e}), covariance misfit "
                f"{self.kl_cov[w]:.2f} (p = {self.p_cov[w]:.1e})); see ppc.png"]

    def to_json(self) -> dict:
        """Per-regime numbers for ``ppc.json``."""
        keys = ("t_mean", "t_cov", "p_mean", "p_cov", "kl_mean", "kl_cov") + (("kl_rep",) if self.kl_rep is not None
                                                                                else ())
        return {"basis": self.basis, "num_draws": len(self.mean_rep), "threshold": self.threshold,
                "kl_threshold": PPC_KL, "excess_misfit": self.excess_misfit(), **self.metrics(),
                "regimes": [{"regime": int(r), "rows": int(n), **{k: float(getattr(self, k)[i]) for k in keys},
                             "failed": bool(self.failed[i])} for i, (r, n) in enumerate(zip(self.regimes, self.rows))]}


@dataclass(frozen=True, eq=False)
class Criticism:
    """What :func:`criticise` found: ``tree`` (ArviZ, with ``log_likelihood`` when there is a density),
    ``metrics`` (flat), ``check`` (:class:`RegimeCheck` or None), ``problems`` (sentences: the model misses
    the data) and ``notes`` (sentences about the criticism itself, e.g. that LOO is unreliable here)."""

    tree: object
    metrics: dict
    check: RegimeCheck | None
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def criticise(posterior, dataset, *, num_draws=100, seed=0) -> Criticism:
    """LOO and the regime check of ``posterior`` on its training ``dataset`` (see the module docstring).

    A check the posterior cannot support (no density, e.g. ``biols`` with an MLP decoder; no decoder
    function; unknown targets for LOO) is left out: its metrics are NaN and it says nothing.
    """
    try:
        tree = posterior.to_arviz(dataset)
    except (ValueError, NotImplementedError):
        tree = posterior.to_arviz()
    metrics = loo_metrics(tree)
    notes = []  # LOO's reliability: a statement about the estimate, not a misfit of the model
    if metrics["loo_k_over"]:
        unit = tree["log_likelihood"].attrs["unit"]
        notes.append(f"LOO: Pareto k > {LOO_K_MAX} for {metrics['loo_k_over']} of {metrics['loo_units']} "
                        f"{unit}s (largest {metrics['loo_k_max']:.2f}; p_loo {metrics['loo_p']:.0f}): the "
                        "leave-one-out estimate `loo` is unreliable (draws far wider than the posterior, as "
                        "variational draws can be, or influential rows; docs/criticism.md)")
    try:
        check = regime_check(posterior, dataset, num_draws=num_draws, seed=seed)
    except (ValueError, NotImplementedError):
        check = None
    metrics |= check.metrics() if check is not None else {"ppc_min_p": float("nan"), "ppc_failed": 0}
    problems = check.problems() if check is not None else []
    return Criticism(tree, metrics, check, problems, notes)


def regime_check(posterior, dataset, *, num_draws=100, seed=0) -> RegimeCheck:
    """The posterior predictive check of each regime's mean and covariance (see the module docstring).

    ValueError when the posterior cannot replicate x (a nonlinear decoder without ``decode``).
    """
    identity = posterior.decoder.kind == "identity"
    if posterior.decoder.kind == "network" and posterior.decoder.decode is None:
        raise ValueError(f"regime_check: method {posterior.method!r} gives no decoder function to replicate x")
    if identity and dataset.D != posterior.d:
        raise ValueError(f"regime_check: identity decoder (D = {posterior.d}) but the dataset has D = {dataset.D}")
    rng = np.random.default_rng(seed)
    x = np.asarray(dataset.x, np.float64)
    if identity:
        center, basis, label = np.zeros(dataset.D), np.eye(dataset.D), "nodes (identity decoder: x is z)"
    else:
        q = min(posterior.d, PPC_COMPONENTS)
        center, basis = x.mean(0), _principal_basis(x - x.mean(0), q, rng)
        label = f"the {q} leading principal components of the training x"
    ids, index = np.unique(dataset.regime, return_inverse=True)
    y = (x - center) @ basis
    draws = rng.integers(posterior.num_draws, size=num_draws)
    fixed = None if posterior.target_draws is not None and dataset.target_unknown is not None else _patterns(
        dataset.targets.astype(bool), np.asarray(dataset.values, np.float64))  # the same for every draw
    reps = [_regime_moments(*_replicate(posterior, dataset, s, rng, center, basis, fixed), index, len(ids))
            for s in draws]
    rows, mean, cov = _regime_moments(y, None, index, len(ids))
    mean_rep, cov_rep = np.stack([r[1] for r in reps]), np.stack([r[2] for r in reps])
    ref_mean, ref_cov = mean_rep.mean(0), cov_rep.mean(0)
    t_mean, t_cov = _discrepancies(rows, mean, cov, ref_mean, ref_cov)
    t_rep = [_discrepancies(rows, mean_rep[k], cov_rep[k], ref_mean, ref_cov) for k in range(num_draws)]
    p_mean = _tail(t_mean, np.stack([t[0] for t in t_rep]))
    p_cov = _tail(t_cov, np.stack([t[1] for t in t_rep]))
    checked = np.isfinite(t_mean).sum()
    kl_rep = np.mean([(t[0] + t[1]) / (2 * rows) for t in t_rep], axis=0)
    return RegimeCheck(ids, rows, label, mean, cov, mean_rep, cov_rep, t_mean, t_cov, p_mean, p_cov,
                       t_mean / (2 * rows), t_cov / (2 * rows), PPC_ALPHA / max(2 * checked, 1), kl_rep)


def _principal_basis(xc, q, rng, iterations=4):
    """(D, q) orthonormal basis of the q leading principal directions of the centred rows ``xc`` (N, D):
    randomised subspace iteration (Halko et al. 2011), exact enough for a fixed basis and O(N D q)."""
    q = min(q, *xc.shape)
    if xc.shape[1] <= 4 * q:
        return np.linalg.svd(xc, full_matrices=False)[2][:q].T
    Y = xc.T @ (xc @ rng.standard_normal((xc.shape[1], q + 10)))
    for _ in range(iterations):
        Y = xc.T @ (xc @ np.linalg.qr(Y)[0])
    Q = np.linalg.qr(Y)[0]
    _, _, vt = np.linalg.svd(xc @ Q, full_matrices=False)
    return Q @ vt[:q].T


def _patterns(targets, values):
    """The rows' (targets, known values) patterns (P, 2d) and each row's pattern index (N,)."""
    return group_rows(np.concatenate([targets, targets & np.isfinite(values)], 1))


def _replicate(posterior, dataset, s, rng, center, basis, patterns=None):
    """One replicated data set (N, q) in the basis, from posterior draw ``s`` and the rows' interventions, its rows
    grouped by pattern, and the order of the rows it holds (N,); ``patterns``: :func:`_patterns` of the rows when
    their targets are known (else drawn per draw)."""
    targets, values = dataset.targets.astype(bool), np.asarray(dataset.values, np.float64)
    if posterior.target_draws is not None and dataset.target_unknown is not None:
        probs = posterior.target_draws[s][np.searchsorted(posterior.regimes, dataset.regime)]
        targets = np.where(dataset.target_unknown, rng.random(probs.shape) < probs, targets)
        values = np.where(dataset.target_unknown, np.nan, values)
    known = targets & np.isfinite(values)
    value_scale = float(posterior.info.get("config", {}).get("value_scale", 1.0))
    W, sigma = np.asarray(posterior.W[s], np.float64), np.asarray(posterior.noise_scales[s], np.float64)
    patterns, g = _patterns(targets, values) if patterns is None else patterns
    d = targets.shape[1]
    C, omega = pattern_moments(W, sigma, patterns[:, :d], patterns[:, d:], tau=posterior.tau, value_scale=value_scale)
    order = np.argsort(g, kind="stable")  # each pattern's rows contiguous: one product per pattern on a slice
    bounds = np.concatenate([[0], np.cumsum(np.bincount(g, minlength=len(patterns)))])
    e = (np.where(known, values, 0.0)[order]
         + np.sqrt(omega[g[order]]) * rng.standard_normal(targets.shape))  # the exogenous terms, in that order
    z = np.empty(targets.shape)
    for p, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        z[a:b] = e[a:b] @ C[p]
    if posterior.decoder.kind == "identity":
        return (z - center) @ basis, order
    scale = float(np.asarray(posterior.decoder["obs_scale"])[s])
    noise = scale * rng.standard_normal((len(z), basis.shape[1]))  # projected N(0, s^2 I_D): N(0, s^2 I_q)
    if posterior.decoder.kind == "linear":  # projected without forming the (N, D) mean
        A, b = np.asarray(posterior.decoder["A"][s], np.float64), np.asarray(posterior.decoder["b"][s], np.float64)
        return z @ (A @ basis) + (b - center) @ basis + noise, order
    mean = np.asarray(posterior.decoder.mean(z[None].astype(np.float32), np.array([s])), np.float64)[0]
    return (mean - center) @ basis + noise, order


def _regime_moments(y, order, index, R):
    """Rows (R,), means (R, q) and covariances (R, q, q) (divisor n) of the rows of each regime; ``y`` holds the
    rows ``order`` (None: all, in order) of the regime ids ``index``."""
    index = index if order is None else index[order]
    rows = np.bincount(index, minlength=R)
    mean = np.stack([np.bincount(index, weights=col, minlength=R) for col in y.T], 1) / np.maximum(rows, 1)[:, None]
    r = y - mean[index]
    order = np.argsort(index, kind="stable")  # each regime's rows contiguous: one product per regime,
    bounds = np.concatenate([[0], np.cumsum(rows)])  # never an (N, q, q) array
    cov = np.stack([r[order[a:b]].T @ r[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:])])
    return rows, mean, cov / np.maximum(rows, 1)[:, None, None]


def _discrepancies(n, mean, cov, ref_mean, ref_cov):
    """``T_mean``, ``T_cov`` (R,) of regime moments against the reference; NaN where n <= 2q."""
    q = mean.shape[-1]
    ok = n > 2 * q
    t_mean, t_cov = np.full(len(n), np.nan), np.full(len(n), np.nan)
    delta = mean[ok] - ref_mean[ok]
    t_mean[ok] = n[ok] * np.einsum("rq,rq->r", delta, np.linalg.solve(ref_cov[ok], delta[..., None])[..., 0])
    MS = np.linalg.solve(ref_cov[ok], cov[ok])
    t_cov[ok] = n[ok] * (np.trace(MS, axis1=-2, axis2=-1) - np.linalg.slogdet(MS)[1] - q)
    return t_mean, t_cov


def _tail(t_obs, t_rep):
    """``P(T_rep >= t_obs)`` (R,) under a scaled chi-square ``a chi2(b)`` matched to the mean and variance of
    the replicates ``t_rep`` (K, R)."""
    m, v = t_rep.mean(0), t_rep.var(0, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        a, b = v / (2 * m), 2 * m**2 / v
        return np.where(np.isfinite(t_obs), chi2.sf(t_obs / a, b), np.nan)

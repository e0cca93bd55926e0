"""Checks of a fit against its own evidence: do the optimisation restarts agree?

``collapsed`` runs ``num_restarts`` optimisations and keeps the one with the best final ELBO. The
others are free evidence: when a restart ends on a different graph at an ELBO within the
optimisation's own noise, the data do not decide between the graphs; when a random start beats the
data-driven start on another graph, the identification missed the optimum. :func:`restart_problems`
turns that into human-readable sentences; the fit stores them as ``Posterior.diagnostics`` and emits each as a
:class:`FitDiagnosticWarning` (a ``UserWarning``).
"""

from __future__ import annotations

import numpy as np

from ..models.collapsed import group_rows

__all__ = ["FitDiagnosticWarning", "restart_problems", "elbo_noise", "moment_problems", "pattern_moments",
           "posterior_moment_problems"]

#: an edge belongs to a restart's graph when its posterior probability exceeds this
EDGE_PROB = 0.5
#: how many standard errors of the difference of two tail medians count as noise (plus one step's robust scale)
NOISE_SE = 3.0


class FitDiagnosticWarning(UserWarning):
    """A fit's own evidence disagrees with its result (e.g. its restarts disagree)."""


def elbo_noise(a, b, *, se_factor: float = NOISE_SE) -> float:
    """Noise level of the difference of the medians of two ELBO tails ``a`` and ``b`` (1-d arrays).

    Robust throughout (ELBO estimates can be heavy-tailed): each tail's scale is 1.4826 x its median
    absolute deviation; the level is ``se_factor`` standard errors of the difference of the two medians
    (1.2533 scale / sqrt(n) each, steps taken as independent) plus the root-mean-square of the two
    scales: a difference below it is as large as one step's fluctuation, or not significant.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    sa, sb = (1.4826 * np.median(np.abs(t - np.median(t))) for t in (a, b))
    se = 1.2533 * np.sqrt(sa**2 / a.size + sb**2 / b.size)
    return float(se_factor * se + np.sqrt((sa**2 + sb**2) / 2))


def _edges(edges):
    return ", ".join(f"{i}->{j}" for i, j in edges)


def restart_problems(tail_elbo, edge_probs, *, best: int | None = None, anchor: int | None = None,
                     threshold: float = EDGE_PROB, se_factor: float = NOISE_SE, max_listed: int = 6,
                     weighed: bool = False) -> list[str]:
    """Disagreements between optimisation restarts that put the result in doubt, as sentences.

    A restart from a random start that stops at a worse optimum is expected and is not a problem. These
    are: a restart whose ELBO is not finite; a restart whose graph differs from the kept one's while
    their ELBOs are within noise (two graphs explain the data equally well, and the guide shows one);
    and, when ``anchor`` names the restart that started from the data-driven identification, another
    restart that beat it beyond noise on a different graph (the identification did not find the optimum).

    Parameters
    ----------
    tail_elbo : array (T, R)
        Each restart's ELBO over the last steps of its optimisation (e.g. the last 10%); higher is better;
        compared by their medians.
    edge_probs : array (R, d, d)
        Each restart's edge probabilities ``P(|W_ij| > 0.3)`` (``[i, j]``: edge i -> j); a 0/1
        adjacency (a graph) works too.
    best : int, optional
        The restart that was kept; by default the one with the highest finite tail-median ELBO.
    anchor : int, optional
        The restart that started from the data-driven start (``collapsed``: restart 0), if any.
    threshold : float
        An edge is in a restart's graph when its probability exceeds this.
    se_factor : float
        Standard errors in the noise level (see :func:`elbo_noise`).
    max_listed : int
        At most this many differing edges are named per restart.
    weighed : bool
        The posterior weighs the orders itself (``collapsed``'s order mixture, seeded with every restart's orders).

    Returns
    -------
    list of str
        One sentence per problem; empty when the restarts raise no doubt (always with one restart,
        unless its ELBO is not finite).
    """
    elbo = np.asarray(tail_elbo, np.float64)
    if elbo.ndim == 1:
        elbo = elbo[:, None]
    probs = np.asarray(edge_probs, np.float64)
    if elbo.ndim != 2 or probs.ndim != 3 or probs.shape[0] != elbo.shape[1] or probs.shape[1] != probs.shape[2]:
        raise ValueError(f"restart_problems: tail_elbo must be (T, R) and edge_probs (R, d, d); got "
                         f"{elbo.shape} and {probs.shape}")
    R = elbo.shape[1]
    finite = np.isfinite(elbo).all(0)
    means = np.where(finite, np.median(elbo, 0), -np.inf)  # medians: robust to heavy-tailed estimates
    problems = [f"restart {r} ended with a non-finite ELBO (the optimisation diverged)"
                for r in range(R) if not finite[r]]
    if best is None:
        best = int(np.argmax(means))
    if R == 1 or not finite[best]:
        return problems
    off = ~np.eye(probs.shape[1], dtype=bool)
    graphs = (probs > threshold) & off
    for r in range(R):
        if r == best or not finite[r]:
            continue
        diff = means[best] - means[r]
        noise = elbo_noise(elbo[:, best], elbo[:, r], se_factor=se_factor)
        extra = list(zip(*np.nonzero(graphs[r] & ~graphs[best])))
        missing = list(zip(*np.nonzero(graphs[best] & ~graphs[r])))
        n = len(extra) + len(missing)
        if not n:
            continue
        parts = "; ".join(f"{label} {_edges(e[:max_listed])}{' ...' if len(e) > max_listed else ''}"
                          for label, e in (("has", extra), ("lacks", missing)) if e)
        differs = (f"restart {r} differs from the kept restart {best} in {n} edge{'s' if n != 1 else ''} "
                   f"(edge probability > {threshold:g}): it {parts}")
        if abs(diff) <= noise:  # when the orders are weighed, both graphs are in the posterior: no problem
            problems += [] if weighed else [
                f"restarts disagree on the graph with ELBOs within noise ({means[best]:.1f} and {means[r]:.1f}, noise "
                f"{noise:.1f}): {differs}; the data do not decide between the graphs and the posterior shows only one"]
        elif r == anchor:
            problems.append(f"the data-driven start (restart {r}) ended {diff:.1f} below restart {best} (noise "
                            f"{noise:.1f}) on another graph: {differs}; the identification missed the optimum or "
                            "its optimisation went astray, and the kept graph comes from a random start")
    return problems


#: a pattern fails the moment check when its p-value is below this (before Bonferroni over patterns)
MOMENT_ALPHA = 1e-3
#: ... and its misfit exceeds this many nats per row (KL of the fitted Gaussian from the empirical one):
#: with thousands of rows, tiny misfits are significant but harmless
MOMENT_KL = 0.05


def pattern_moments(W, sigma, mask, known, *, tau, value_scale):
    """Propagator ``C = (I - W diag(1 - m))^-1`` (d, d) and exogenous variances ``omega`` (d,) of one
    (targets ``mask``, known-values ``known``) pattern: ``z = e C`` with independent ``e_j`` of mean
    ``m_j k_j v_j`` and variance ``omega_j``: ``sigma_j^2`` when free, ``tau^2`` when intervened with a
    known value, ``tau^2 + value_scale^2`` when the value is unknown (its prior N(0, value_scale^2)).
    ``mask`` and ``known`` (P, d): P patterns at once, C (P, d, d) and omega (P, d)."""
    m, k = np.asarray(mask, np.float64), np.asarray(known, np.float64)
    C = np.linalg.inv(np.eye(m.shape[-1]) - np.asarray(W) * (1 - m)[..., None, :])
    return C, (1 - m) * np.asarray(sigma) ** 2 + m * (tau**2 + (1 - k) * value_scale**2)


def moment_problems(x, targets, values, draws, *, tau, value_scale, max_draws=20):
    """Posterior predictive check of each target pattern's second moments, as sentences (empty: none).

    For a posterior draw (W, sigma, decoder A, b, s; an empty decoder means x is z) the rows of one
    (targets, known-values) pattern project to ``u = (x - b) A^+`` with ``A^+ = A^T (A A^T)^-1``, and the
    model says ``u - v_known C ~ N(0, M)``, ``M = C^T diag(omega) C + s^2 (A A^T)^-1`` (``C`` the
    pattern's propagator, ``omega`` the noise, intervention and unknown-value variances). The statistic
    ``n [tr(M^-1 S) - log det(M^-1 S) - d]`` (S: the rows' second moments about the model mean) is the
    likelihood-ratio test of that Gaussian against the rows' own, chi-square with d(d + 1)/2 degrees of
    freedom under the model. A pattern fails when, at the median over up to ``max_draws`` draws, its
    p-value is below ``MOMENT_ALPHA`` / (number of patterns) and its misfit exceeds ``MOMENT_KL`` nats
    per row.

    draws: dict with ``W`` (S, d, d), ``noise_scales`` (S, d) and, for a linear decoder, ``A`` (S, d, D),
    ``b`` (S, D), ``obs_scale`` (S,).
    """
    from scipy.stats import chi2

    x = np.asarray(x, np.float64)
    t = np.asarray(targets) > 0
    v = np.asarray(values, np.float64)
    known = t & np.isfinite(v)
    v = np.where(known, v, 0.0)
    d = t.shape[1]
    patterns, g = group_rows(np.concatenate([t, known], 1))
    use = [p for p in range(len(patterns)) if (g == p).sum() > 2 * d]
    if not use:
        return []
    rows_of = [g == p for p in use]
    n = np.array([rows.sum() for rows in rows_of])
    S = len(draws["W"])
    picks = np.unique(np.linspace(0, S - 1, min(S, max_draws)).round().astype(int))
    stat = np.zeros((len(picks), len(use)))
    for a, s in enumerate(picks):
        W, sigma = np.asarray(draws["W"][s]), np.asarray(draws["noise_scales"][s])
        if draws.get("A") is None:
            u, noise = x, np.zeros((d, d))
        else:
            A, b, s_obs = np.asarray(draws["A"][s]), np.asarray(draws["b"][s]), float(draws["obs_scale"][s])
            AAt_inv = np.linalg.inv(A @ A.T)
            u, noise = (x - b) @ A.T @ AAt_inv, s_obs**2 * AAt_inv
        for c, (p, rows) in enumerate(zip(use, rows_of)):
            m, k = patterns[p, :d].astype(float), patterns[p, d:].astype(float)
            C, omega = pattern_moments(W, sigma, m, k, tau=tau, value_scale=value_scale)
            M = C.T @ (omega[:, None] * C) + noise
            r = u[rows] - (v[rows] * m * k) @ C
            MS = np.linalg.solve(M, r.T @ r / n[c])
            stat[a, c] = n[c] * (np.trace(MS) - np.linalg.slogdet(MS)[1] - d)
    stat = np.median(stat, 0)
    pval = chi2.sf(stat, d * (d + 1) // 2)
    kl = stat / (2 * n)
    bad = np.flatnonzero((pval < MOMENT_ALPHA / len(use)) & (kl > MOMENT_KL))
    if not len(bad):
        return []
    worst = bad[np.argmax(kl[bad])]
    p = use[worst]
    nodes = [j for j in range(d) if patterns[p, j]]
    return [f"posterior predictive check: the fitted model misses the second moments of {len(bad)} of {len(use)} "
            f"target patterns (worst: targets {nodes or 'none'}, {n[worst]} rows, misfit {kl[worst]:.2f} nats per "
            f"row, p = {pval[worst]:.1e}); the graph, the decoder (e.g. an image renderer that saturates) or the "
            "latents may be wrong, or the optimisation stopped short of the posterior (try more steps)"]


def posterior_moment_problems(dataset, posterior):
    """:func:`moment_problems` of ``posterior``'s draws on ``dataset`` (where targets were inferred, at the
    targets of probability > 1/2, their values unknown); None where the check does not apply (a decoder other
    than linear, or the identity where x is not z)."""
    kind = posterior.decoder.kind
    if kind not in ("linear", "identity") or (kind == "identity" and dataset.D != dataset.d):
        return None
    targets, values = dataset.targets, dataset.values
    if posterior.target_draws is not None:
        inferred = (posterior.target_probs > 0.5).astype(np.int8)[np.searchsorted(posterior.regimes, dataset.regime)]
        targets = np.where(dataset.target_unknown, inferred, dataset.targets)
        values = np.where(targets > dataset.targets, np.nan, values)
    value_scale = posterior.info.get("config", {}).get("value_scale", 1.0)  # the fit's own (auto: the kept fit's)
    return moment_problems(dataset.x, targets, values,
                           {"W": posterior.W, "noise_scales": posterior.noise_scales, **posterior.decoder},
                           tau=posterior.tau, value_scale=value_scale)

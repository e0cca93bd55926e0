import numpy as np
import pytest

from latentscm.data import DataError, random_dag, random_noise_scales, random_weights, sample_latents
from latentscm.data.scm import topological_order


def sample_latents_ancestral(weights, targets, values, eps, eta):
    """Naive reference: loop over nodes in topological order, row by row semantics."""
    z = np.zeros_like(eps)
    for j in topological_order(weights):
        m = targets[:, j] == 1
        z[:, j] = np.where(m, values[:, j] + eta[:, j], z @ weights[:, j] + eps[:, j])
    return z


def _scm(d, seed):
    w = random_weights(random_dag(d, edges_per_node=2.0, seed=seed), seed=seed + 1)
    return w, random_noise_scales(d, seed=seed + 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_equals_ancestral(seed):
    d, n, tau = 6, 300, 0.1
    w, sigma = _scm(d, seed)
    rng = np.random.default_rng(seed)
    masks = np.array([np.zeros(d), np.eye(d)[0], np.eye(d)[d - 1], (np.arange(d) % 2 == 0), np.ones(d)], dtype=np.int8)
    targets = masks[rng.integers(len(masks), size=n)]
    values = rng.normal(size=(n, d)) * 2
    eps = rng.normal(size=(n, d)) * sigma
    z = sample_latents(np.random.default_rng(99), w, sigma, targets, values, tau=tau, eps=eps)
    eta = tau * np.random.default_rng(99).normal(size=(n, d))  # same stream as the sampler's eta draw
    np.testing.assert_allclose(z, sample_latents_ancestral(w, targets, values, eps, eta), atol=1e-5)


def test_structural_equations_hold():
    d, n = 5, 200
    w, sigma = _scm(d, 5)
    rng = np.random.default_rng(0)
    targets = (rng.random((n, d)) < 0.3).astype(np.int8)
    values = rng.normal(size=(n, d))
    z = sample_latents(rng, w, sigma, targets, values, tau=0.0)
    np.testing.assert_allclose(z[targets == 1], values[targets == 1], atol=1e-12)


def test_moments_match_closed_form():
    d, n, tau = 4, 200_000, 0.1
    w, sigma = _scm(d, 7)
    m = np.array([0, 1, 0, 0])
    v = np.array([0.0, 1.5, 0.0, 0.0])
    z = sample_latents(np.random.default_rng(1), w, sigma, np.tile(m, (n, 1)), np.tile(v, (n, 1)), tau=tau)
    c = np.linalg.inv(np.eye(d) - np.diag(1 - m) @ w.T)
    s = np.diag((1 - m) * sigma**2 + m * tau**2)
    cov, mean = c @ s @ c.T, c @ (m * v)
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    assert np.all(np.abs(np.cov(z.T) - cov) < 5 * se_cov)
    assert np.all(np.abs(z.mean(0) - mean) < 5 * np.sqrt(np.diag(cov) / n))


def test_cycle_rejected():
    w = np.array([[0, 1.0], [1.0, 0]])
    with pytest.raises(DataError, match="cycle"):
        sample_latents(0, w, np.ones(2), np.zeros((3, 2)), np.zeros((3, 2)))


def test_topological_order_is_networkx_order_and_names_a_cycle():
    """The numpy topological order equals networkx's topological_sort on random DAGs (so simulated data did not
    change when networkx left the path); a graph with a cycle raises DataError naming a real cycle."""
    import networkx as nx

    rng = np.random.default_rng(0)
    for _ in range(100):
        d = int(rng.integers(1, 25))
        perm = rng.permutation(d)
        adj = np.tril(rng.random((d, d)) < rng.random(), -1)[np.ix_(perm, perm)]
        g = nx.from_numpy_array(adj.astype(int), create_using=nx.DiGraph)
        assert list(topological_order(adj)) == list(nx.topological_sort(g))
        if adj.any():
            i, j = np.argwhere(adj)[0]
            adj[j, i] = True  # a back edge closes a cycle through i -> j
            with pytest.raises(DataError, match="cycle") as err:
                topological_order(adj)
            cycle = eval(str(err.value).split("cycle ")[1].split(";")[0])
            assert all(adj[cycle[k], cycle[(k + 1) % len(cycle)]] for k in range(len(cycle)))
    with pytest.raises(DataError, match=r"cycle \[1\]"):
        topological_order(np.diag([0.0, 1.0, 0.0]))  # a self-loop

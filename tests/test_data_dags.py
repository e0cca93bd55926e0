import networkx as nx
import numpy as np
import pytest

from latentscm.data import random_dag, random_noise_scales, random_weights


@pytest.mark.parametrize("graph", ["er", "sf"])
def test_random_dag_is_acyclic_01(graph):
    for seed in range(20):
        a = random_dag(8, graph=graph, edges_per_node=2.0, seed=seed)
        assert a.shape == (8, 8) and set(np.unique(a)) <= {0, 1}
        assert nx.is_directed_acyclic_graph(nx.from_numpy_array(a, create_using=nx.DiGraph))


def test_er_expected_edge_count():
    d, seeds = 10, 400
    counts = [random_dag(d, edges_per_node=1.0, seed=s).sum() for s in range(seeds)]
    # edges ~ Binomial(45, 2/9): mean 10, sd 2.8; standard error of the mean over 400 seeds is 0.14
    assert abs(np.mean(counts) - d) < 0.6


def test_sf_edge_count():
    # Barabasi-Albert with m edges per new node: m * (d - m) edges
    assert random_dag(12, graph="sf", edges_per_node=2, seed=0).sum() == 2 * 10


def test_random_order_not_always_upper_triangular():
    upper = [np.all(np.tril(random_dag(6, edges_per_node=2.0, seed=s)) == 0) for s in range(20)]
    lower = [np.all(np.triu(random_dag(6, edges_per_node=2.0, seed=s)) == 0) for s in range(20)]
    assert not all(upper) and not all(lower)


def test_seed_reproducible_and_generator_accepted():
    assert np.array_equal(random_dag(7, seed=3), random_dag(7, seed=3))
    random_dag(7, seed=np.random.default_rng(0))


def test_weights_range_and_sign():
    a = random_dag(10, edges_per_node=3.0, seed=0)
    w = random_weights(a, weight_range=(0.5, 2.0), seed=1)
    assert np.array_equal(w != 0, a != 0)
    mag = np.abs(w[a != 0])
    assert mag.min() >= 0.5 and mag.max() <= 2.0
    assert (w > 0).any() and (w < 0).any()


def test_noise_scales_range():
    s = random_noise_scales(1000, seed=0)
    assert s.shape == (1000,) and s.min() >= 1.0 and s.max() <= 2.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="graph must be"):
        random_dag(3, graph="xx", seed=0)
    with pytest.raises(ValueError, match="d must be"):
        random_dag(0, seed=0)
    with pytest.raises(ValueError, match="weight_range"):
        random_weights(np.eye(2), weight_range=(2, 1), seed=0)

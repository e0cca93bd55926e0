"""Fits warn when their own evidence disagrees: restarts that end on different graphs or ELBOs."""

import json
import warnings

import numpy as np
import pytest

from latentscm.inference.decoders import LinearDecoder
from latentscm.inference.diagnostics import FitDiagnosticWarning, elbo_noise, restart_problems

GRAPH = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0]], float)  # 0 -> 1 -> 2


def tails(means, sd=1.0, T=50, seed=0):
    """(T, R) ELBO tails with exactly the medians ``means`` and per-step noise of sd about ``sd``."""
    noise = np.random.default_rng(seed).normal(size=(T, len(means)))
    return np.asarray(means, float)[None, :] + sd * (noise - np.median(noise, 0))


def test_agreeing_restarts_give_no_problems():
    probs = np.stack([0.9 * GRAPH, 0.8 * GRAPH + 0.1])  # same edge set at P > 0.5
    assert restart_problems(tails([-1000.0, -1000.3]), probs) == []


def test_single_restart_has_nothing_to_compare():
    assert restart_problems(tails([-1000.0]), GRAPH[None]) == []
    assert restart_problems(np.full(10, -5.0), GRAPH[None]) == []  # a 1-d tail is one restart


def test_graph_disagreement_within_noise_is_reported():
    other = np.array([[0, 0, 1], [1, 0, 1], [0, 0, 0]], float)  # has 0->2, 1->0; lacks 0->1
    (problem,) = restart_problems(tails([-1000.0, -1000.2]), np.stack([GRAPH, other]))
    assert problem.startswith("restarts disagree on the graph with ELBOs within noise (-1000.0 and -1000.2")
    assert "restart 1 differs from the kept restart 0 in 3 edges (edge probability > 0.5)" in problem
    assert "has 0->2, 1->0" in problem and "lacks 0->1" in problem
    assert problem.endswith("the data do not decide between the graphs and the posterior shows only one")
    # when the posterior weighs the orders (both restarts' orders seed it), that is no problem, even for the anchor
    assert restart_problems(tails([-1000.0, -1000.2]), np.stack([GRAPH, other]), anchor=1, weighed=True) == []


def test_a_random_start_stuck_lower_is_not_a_problem_but_a_beaten_anchor_is():
    elbo = tails([-1234.5, -1300.2], sd=2.0)
    noise = elbo_noise(elbo[:, 0], elbo[:, 1])
    assert 2.0 < noise < 5.0  # one step's sd plus 3 standard errors of the difference
    empty = np.stack([GRAPH, np.zeros((3, 3))])
    assert restart_problems(elbo, np.stack([GRAPH, GRAPH])) == []  # same graph: nothing in doubt
    assert restart_problems(elbo, empty) == []  # restart 1 (a random start) stopped lower: expected
    assert restart_problems(elbo, empty, anchor=0) == []  # the data-driven start won
    (problem,) = restart_problems(elbo, empty, anchor=1)  # a random start beat the data-driven one
    assert problem.startswith(f"the data-driven start (restart 1) ended 65.7 below restart 0 (noise {noise:.1f})")
    assert "lacks 0->1, 1->2" in problem and problem.endswith("the kept graph comes from a random start")
    # one catastrophic estimate in the winner's tail moves neither the medians nor the noise level much
    spiky = elbo.copy()
    spiky[3, 0] = -1e7
    assert restart_problems(spiky, empty, anchor=0) == []
    # the same gap in much noisier traces is within noise: then it is an undecided graph
    (undecided,) = restart_problems(tails([-1234.5, -1300.2], sd=80.0), empty, anchor=1)
    assert undecided.startswith("restarts disagree on the graph with ELBOs within noise")


def test_best_defaults_to_highest_elbo_and_diverged_restarts_are_reported():
    elbo = tails([-1300.0, -1000.0, -1000.1], sd=0.01)
    elbo[-1, 2] = np.nan
    problems = restart_problems(elbo, np.stack([np.zeros((3, 3)), GRAPH, np.zeros((3, 3))]), anchor=0)
    assert problems[0] == "restart 2 ended with a non-finite ELBO (the optimisation diverged)"
    assert len(problems) == 2 and problems[1].startswith("the data-driven start (restart 0) ended 300.0 below "
                                                          "restart 1")


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"tail_elbo must be \(T, R\)"):
        restart_problems(tails([0.0, 0.0]), GRAPH[None])


def test_fit_warns_and_the_run_folder_keeps_the_diagnostics(tmp_path, monkeypatch):
    """A real (tiny, observed-variable) fit: its restarts are compared (each restart's edge probabilities
    kept), a good fit raises nothing, and what the check finds is warned, stored and written."""
    import xarray as xr

    import latentscm.inference.collapsed as collapsed
    from latentscm.data import Dataset, SimulationConfig, simulate
    from latentscm.inference import fit
    from latentscm.runs import run_metrics, write_run

    train, _ = simulate(SimulationConfig(d=3, D=5, n_pairs=40, n_regimes=4, rows_per_regime=10), 0)
    data = Dataset.from_arrays(train.z, train.targets, train.values)
    config = {"decoder": "identity", "steps": 40, "learning_rate": 1e-3, "num_draws": 20, "num_particles": 1,
              "chunk": 40, "num_restarts": 2}
    seen = {}
    check = collapsed.restart_problems

    def spy(tail_elbo, edge_probs, **kwargs):
        seen["found"] = check(tail_elbo, edge_probs, **kwargs)
        seen["anchor"] = kwargs["anchor"]
        return ["restarts disagree on the graph with ELBOs within noise (test)"]

    monkeypatch.setattr(collapsed, "restart_problems", spy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        post = fit(data, config=config, seed=0, progress=False)
    assert seen["found"] == [] and seen["anchor"] == 0  # the data-driven restart 0 won: nothing in doubt
    assert post.diagnostics == ["restarts disagree on the graph with ELBOs within noise (test)"]
    emitted = [str(w.message) for w in caught if issubclass(w.category, FitDiagnosticWarning)]
    assert emitted == [f"collapsed: {p}" for p in post.diagnostics]
    assert np.shape(post.info["restart_edge_probs"]) == (2, 3, 3)

    out = write_run(tmp_path / "run", post, run_metrics(post, data), data, save_dataset=False)
    assert json.loads((out / "metrics.json").read_text())["diagnostics"] == post.diagnostics
    tree = xr.open_datatree(out / "posterior.nc", engine="h5netcdf")
    assert json.loads(tree.attrs["diagnostics"]) == post.diagnostics


def test_cli_prints_the_diagnostics_after_the_metrics(tmp_path, capsys, monkeypatch):
    import dataclasses

    import latentscm.inference
    from latentscm.cli import main
    from latentscm.data import SimulationConfig, simulate
    from latentscm.inference import Posterior

    train, _ = simulate(SimulationConfig(d=3, D=5, n_pairs=20, n_regimes=2, rows_per_regime=10), 0)
    S, d, D = 4, train.d, train.D
    post = Posterior(method="collapsed", W=np.tile(train.weights, (S, 1, 1)), noise_scales=np.ones((S, d)),
                     orders=np.tile(np.arange(d), (S, 1)),
                     decoder=LinearDecoder(np.tile(train.projection, (S, 1, 1)), np.zeros((S, D)), np.ones(S)),
                     latent_mean=train.z, latent_scale=np.ones_like(train.z), elbo=np.zeros(0), seconds=1.0,
                     info={"refits": [{"steps": 1000, "misfit": "posterior predictive check: stand-in", "elbo": 1.0,
                                       "refit_elbo": 0.5, "kept": "first"}]})
    problems = ["restarts disagree on the graph: restart 1 differs from the best (restart 0) in 1 edge"]

    def fake_fit(dataset, method="collapsed", **kwargs):
        warnings.warn(f"collapsed: {problems[0]}", FitDiagnosticWarning)  # the CLI prints it itself instead
        return dataclasses.replace(post, diagnostics=problems)

    monkeypatch.setattr(latentscm.inference, "fit", fake_fit)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FitDiagnosticWarning)  # would fail if the CLI let it through
        assert main(["fit", "--data", str(train.save(tmp_path / "t.npz")), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[out.index(f"warning: {problems[0]}") - 1].startswith("ppc_failed")  # right after the metrics
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["diagnostics"][:1] == problems  # then the model criticism's own (this posterior misses regime 0)
    # a refit: counted in the metrics, said in a note, recorded in run.json
    assert ("note: refitted with 2000 steps, kept the first fit: the 1000-step fit failed its posterior predictive "
            "check: stand-in") in out
    assert written["refits"] == 1
    assert json.loads((tmp_path / "run" / "run.json").read_text())["refits"] == post.info["refits"]


def test_moment_check_passes_the_truth_and_fails_a_wrong_graph():
    """The posterior predictive check of each pattern's second moments: silent at the generating SCM
    (known and hidden values, iid and paired rows), loud for an empty or reversed graph."""
    from latentscm.data import SimulationConfig, simulate
    from latentscm.inference.diagnostics import moment_problems

    for design in ("iid", "paired"):
        train, _ = simulate(SimulationConfig(d=4, D=30, design=design, n_rows=2000, n_pairs=1000, n_regimes=10,
                                             rows_per_regime=100), 0)
        truth = {"W": train.weights[None], "noise_scales": train.noise_scales[None], "A": train.projection[None],
                 "b": np.zeros((1, 30)), "obs_scale": np.array([0.1])}
        hidden = np.where(train.targets > 0, np.nan, 0.0)
        assert moment_problems(train.x, train.targets, train.values, truth, tau=0.1, value_scale=2.0) == []
        assert moment_problems(train.x, train.targets, hidden, truth, tau=0.1, value_scale=2.0) == []
        for W in (np.zeros((1, 4, 4)), train.weights.T[None]):
            (problem,) = moment_problems(train.x, train.targets, train.values, truth | {"W": W}, tau=0.1,
                                         value_scale=2.0)
            assert problem.startswith("posterior predictive check: the fitted model misses the second moments of")
    # identity decoder (x is z): no decoder entries
    z_truth = {"W": train.weights[None], "noise_scales": train.noise_scales[None]}
    assert moment_problems(train.z, train.targets, train.values, z_truth, tau=0.1, value_scale=2.0) == []

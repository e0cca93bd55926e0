"""``auto``: the decoder chosen by the evidence (check the linear fit, refine with the MLP decoder, compare
held out)."""

import dataclasses
import warnings

import numpy as np
import pytest

from latentscm.criticism import regime_check
from latentscm.data import SimulationConfig, image_config, simulate
from latentscm.data.images import chemistry_projection, clipped_fraction
from latentscm.inference import Posterior, fit
from latentscm.inference.api import check_fit_inputs
from latentscm.inference.auto import (AUTO_KL, AutoConfig, describe_choice, linear_misfit, prefer_network,
                                      split_units)
from latentscm.inference.decoders import LinearDecoder
from latentscm.inference.diagnostics import FitDiagnosticWarning


def _near_truth(ds, A, b, scale, value_scale, S=10):
    """A linear-decoder posterior at the simulator's SCM with decoder (A, b)."""
    return Posterior(method="collapsed", W=np.tile(ds.weights, (S, 1, 1)),
                     noise_scales=np.tile(ds.noise_scales, (S, 1)),
                     orders=np.tile(np.arange(ds.d), (S, 1)),
                     decoder=LinearDecoder(np.tile(A, (S, 1, 1)), np.tile(b, (S, 1)), np.full(S, scale)),
                     latent_mean=ds.z, latent_scale=np.full(ds.z.shape, 0.01), elbo=np.zeros(1), seconds=1.0,
                     info={"config": {"value_scale": value_scale}})


def _small_images(scale, seed):
    cfg = image_config("chemistry", scale=scale, d=3, n_pairs=400, n_regimes=4, rows_per_regime=100, n_test_regimes=1)
    return simulate(cfg, seed)[0], cfg


def test_saturating_scale_clips_often_and_default_rarely():
    sat, cfg = _small_images("saturating", 1)
    assert cfg.value_scale == 1.0 and cfg.weight_range == (1.0, 3.0)
    assert clipped_fraction(sat.z).max() > 0.2
    default, _ = _small_images("default", 0)
    assert clipped_fraction(default.z).max() < 0.05
    with pytest.raises(ValueError, match="scale must be one of"):
        image_config("chemistry", scale="hot")
    np.testing.assert_array_equal(clipped_fraction([[9.0, 0.0], [-8.5, 8.0]]), [1.0, 0.0])


@pytest.mark.parametrize("case,refine", [("linear-images", False), ("linear-vectors", False),
                                         ("saturating-images", True)])
def test_check_statistic_separates_linear_from_clipped_renderers(case, refine):
    """The decision's statistic on posteriors at the truth: where the linear decoder is exact (chemistry at
    its default scale, where few rows clip; a linear projection) it stays below AUTO_KL; on saturating
    images, where a quarter of a node's rows clip, it is far above."""
    if case == "linear-vectors":
        cfg = SimulationConfig(d=3, D=30, n_pairs=400, n_regimes=4, rows_per_regime=100, n_test_regimes=1)
        ds = simulate(cfg, 0)[0]
        post = _near_truth(ds, ds.projection, np.zeros(30), cfg.obs_noise, cfg.value_scale)
    else:
        ds, cfg = _small_images("saturating" if refine else "default", 1 if refine else 0)
        post = _near_truth(ds, *chemistry_projection(3), cfg.obs_noise, cfg.value_scale)
    misfit = linear_misfit(regime_check(post, ds, num_draws=50, seed=0))
    assert (misfit > AUTO_KL) == refine, misfit
    assert misfit > 2 * AUTO_KL if refine else misfit < AUTO_KL / 5


def test_excess_misfit_subtracts_sampling_noise_and_weights_rows():
    from latentscm.criticism import RegimeCheck

    n = np.array([300, 100, 5])  # the last regime too small to check (NaN)
    check = RegimeCheck(np.arange(3), n, "", *[None] * 4, *[np.zeros(3)] * 2, *[np.zeros(3)] * 2,
                        kl_mean=np.array([0.1, 0.0, np.nan]), kl_cov=np.array([0.2, 1.0, np.nan]), threshold=0.01,
                        kl_rep=np.array([0.1, 0.2, 0.3]))
    assert check.excess_misfit() == pytest.approx((300 * 0.2 + 100 * 0.8) / 400)
    assert linear_misfit(check) == check.excess_misfit()
    empty = dataclasses.replace(check, kl_mean=np.full(3, np.nan), kl_cov=np.full(3, np.nan))
    assert np.isnan(empty.excess_misfit())


def test_prefer_network_needs_a_clear_win():
    assert prefer_network(1.2, 0.1, 0.25)  # the MLP removes most of the misfit
    assert not prefer_network(1.2, 1.0, 0.25)  # within the threshold
    assert not prefer_network(0.1, 0.5, 0.25)  # worse
    assert not prefer_network(1.2, np.nan, 0.25) and not prefer_network(np.nan, 0.0, 0.25)  # nothing checkable


def test_split_units_keeps_pairs_together():
    ds, _ = _small_images("default", 0)
    train, held = split_units(ds, 0.2, seed=3)
    assert len(np.intersect1d(train, held)) == 0 and len(train) + len(held) == ds.N
    assert not set(ds.pair[train]) & set(ds.pair[held])
    assert len(np.unique(ds.pair[held])) == round(0.2 * len(np.unique(ds.pair)))
    np.testing.assert_array_equal(split_units(ds, 0.2, seed=3)[1], held)
    single = dataclasses.replace(ds, pair=None)
    assert len(split_units(single, 0.25, seed=0)[1]) == round(0.25 * ds.N)


def test_bad_settings_fail_before_work():
    ds, _ = _small_images("default", 0)
    with pytest.raises(ValueError, match="unknown setting\\(s\\) \\['stepz'\\] for method 'collapsed'"):
        AutoConfig(linear={"stepz": 10})
    with pytest.raises(ValueError, match="mlp.decoder must be 'mlp'"):
        AutoConfig(mlp={"decoder": "linear"})
    with pytest.raises(ValueError, match="refine must be one of"):
        AutoConfig(refine="sometimes")
    with pytest.raises(ValueError, match="holdout must be"):
        AutoConfig(holdout=1.0)
    with pytest.raises(ValueError, match="linear must be a table"):
        AutoConfig(linear=3)
    with pytest.raises(ValueError, match="the MLP refinement \\(amortized\\) cannot take this dataset"):
        check_fit_inputs(ds, "auto", {"mlp": {"known_order": (0, 1)}})
    check_fit_inputs(ds, "auto", {"refine": "never", "mlp": {"known_order": (0, 1)}})  # no MLP fit: not checked
    with pytest.raises(ValueError, match="stepz"):
        fit(ds, "auto", config={"mlp": {"stepz": 1}})


class _Fake:
    """Stand-ins for the two fits, the check and the held-out NLL: records what ran. ``misfit``: the linear
    fit's statistic on the training rows; ``heldout``: each method's on the held-out rows."""

    def __init__(self, ds, misfit, heldout):
        self.ds, self.misfit, self.heldout, self.calls = ds, misfit, heldout, []

    def install(self, monkeypatch):
        import latentscm.criticism
        import latentscm.inference.amortized
        import latentscm.inference.auto
        import latentscm.inference.collapsed

        A, b = chemistry_projection(self.ds.d)

        def fitter(method):
            def fit_method(dataset, *, config, priors, seed, progress, latents_for=None):
                self.calls.append((method, dataset.N, None if latents_for is None else latents_for.N))
                post = _near_truth(self.ds, A, b, 0.05, 2.0)
                return dataclasses.replace(post, method=method, info={"config": dataclasses.asdict(config)})
            return fit_method

        def check(post, dataset, **kwargs):
            return self.misfit if dataset.N == self.ds.N else self.heldout[post.method]

        monkeypatch.setattr(latentscm.inference.collapsed, "fit_collapsed", fitter("collapsed"))
        monkeypatch.setattr(latentscm.inference.amortized, "fit_amortized", fitter("amortized"))
        monkeypatch.setattr(latentscm.criticism, "regime_check", check)
        monkeypatch.setattr(latentscm.inference.auto, "linear_misfit", lambda misfit: misfit)
        monkeypatch.setattr(latentscm.inference.auto, "heldout_nll",
                            lambda post, held: ({"collapsed": -10.0, "amortized": -9.0}[post.method], 0.5))


@pytest.mark.parametrize("misfit,heldout_mlp,refine,kept", [
    (0.1, 0.0, "check", "collapsed"),  # the check passes: no MLP fit
    (1.2, 0.1, "check", "amortized"),  # fails, and the MLP removes the misfit held out
    (1.2, 1.0, "check", "collapsed"),  # fails, but the MLP does not do clearly better held out
    (0.1, 0.1, "always", "amortized"),
    (1.2, 0.1, "never", "collapsed"),
])
def test_fit_auto_decides_on_the_evidence(monkeypatch, misfit, heldout_mlp, refine, kept):
    ds, _ = _small_images("default", 0)
    fake = _Fake(ds, misfit, {"collapsed": 1.2, "amortized": heldout_mlp})
    fake.install(monkeypatch)
    with warnings.catch_warnings():  # the fit's own moment check may warn about the stand-in posterior
        warnings.simplefilter("ignore", FitDiagnosticWarning)
        post = fit(ds, "auto", config={"refine": refine}, seed=1, progress=False)
    choice = post.info["decoder_choice"]
    assert post.method == kept and choice["method"] == kept
    assert choice["decoder"] == {"collapsed": "linear", "amortized": "mlp"}[kept]
    refined = refine == "always" or (refine == "check" and misfit > AUTO_KL)
    assert [c[0] for c in fake.calls] == ["collapsed"] + ["amortized"] * refined
    if refined:  # the MLP fit: 80 % of the pairs, latents for every row
        _, n_train, n_latents = fake.calls[1]
        held = 2 * round(0.2 * ds.N / 2)
        assert n_train == ds.N - held and n_latents == ds.N and choice["heldout_rows"] == held
        assert choice["heldout_linear"] == 1.2 and choice["heldout_mlp"] == heldout_mlp
        assert choice["nll_linear"] == -10.0 and choice["nll_mlp"] == -9.0 and choice["unit"] == "pair"
    else:
        assert choice["heldout_linear"] is None
    assert choice["misfit"] == misfit and choice["reason"] == describe_choice(choice)
    assert choice["reason"].startswith(f"{choice['decoder']} ({kept}): the linear fit's regime check misfit")


@pytest.mark.slow  # two real fits (collapsed, amortized) on a small vector problem: about a minute and a half
def test_fit_auto_real_fits_through_the_refinement():
    """The whole path with real fits (refine = "always"): the MLP fit on 80 % of the pairs, both judged on the
    rest, latents for every row. (On this small MLP projection the check alone gives 0.17 nats per row,
    below AUTO_KL: a mild nonlinearity the linear fit absorbs at d = 3, D = 30.)"""
    cfg = SimulationConfig(d=3, D=30, projection="mlp", n_pairs=400, n_regimes=4, rows_per_regime=100,
                           n_test_regimes=1)
    ds = simulate(cfg, 0)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitDiagnosticWarning)
        post = fit(ds, "auto", config={"refine": "always", "linear": {"steps": 300},
                                       "mlp": {"steps": 300, "pretrain_steps": 300}}, seed=0, progress=False)
    choice = post.info["decoder_choice"]
    assert np.isfinite([choice["misfit"], choice["heldout_linear"], choice["heldout_mlp"], choice["nll_linear"],
                        choice["nll_mlp"]]).all()
    assert choice["heldout_rows"] == 2 * round(0.2 * 400) and post.latent_mean.shape == (ds.N, 3)
    assert (post.method == "amortized") == (choice["heldout_linear"] - choice["heldout_mlp"] > AUTO_KL)

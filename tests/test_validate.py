"""Settings validation: bounds declared once per field, one checking function for every config class."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from latentscm._validate import check_fields, integer, setting
from latentscm.data import SimulationConfig
from latentscm.inference.amortized import AmortizedConfig
from latentscm.inference.api import METHODS, make_config
from latentscm.inference.biols import BiolsConfig
from latentscm.inference.collapsed import CollapsedConfig
from latentscm.inference.mcmc import MCMCConfig

CONFIGS = [CollapsedConfig, MCMCConfig, BiolsConfig, AmortizedConfig, SimulationConfig]
# per class: an integer setting (with its lower bound) and a setting with a fixed set of choices
FIELDS = {
    CollapsedConfig: ("num_restarts", 1, "order_init"),
    MCMCConfig: ("num_chains", 1, "chain_method"),
    BiolsConfig: ("steps", 1, "decoder"),
    AmortizedConfig: ("batch_size", 1, "encoder_covariance"),
    SimulationConfig: ("n_rows", 1, "graph"),
}
CASES = [(cls, name, value, says) for cls, (name, low, choice) in FIELDS.items() for value, says in (
    (True, f"{name} must be an integer >= {low}; got True (True and False are not integers"),
    (5.0, f"{name} must be an integer >= {low}; got 5.0 (write 5, without the decimal point)"),
    (-3, f"{name} must be an integer >= {low}; got -3"),
)] + [(cls, choice, "nope", f"{choice} must be") for cls, (_, _, choice) in FIELDS.items()]


@pytest.mark.parametrize("cls, name, value, says", CASES,
                         ids=[f"{c.__name__}-{n}-{v!r}" for c, n, v, _ in CASES])
def test_configs_refuse_bools_floats_negatives_and_unknown_choices(cls, name, value, says):
    with pytest.raises(ValueError) as err:
        cls(**{name: value})
    assert says in str(err.value)


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_setting_declares_its_rule_and_the_defaults_pass_it(cls):
    cfg = cls()  # check_fields refuses a field declared without a rule
    assert all(f.metadata for f in dataclasses.fields(cfg))


def test_simulation_config_names_the_fix():
    with pytest.raises(ValueError, match=r"SimulationConfig: d must be an integer >= 2 \(interventions target"):
        SimulationConfig(d=True)
    with pytest.raises(ValueError, match=r"n_test_regimes must be an integer >= 0; got 2.5"):
        SimulationConfig(n_test_regimes=2.5)
    with pytest.raises(ValueError, match=r"weight_range must be \(lo, hi\) with 0 <= lo <= hi"):
        SimulationConfig(weight_range=(-1.0, 1.0))
    with pytest.raises(ValueError, match="edges_per_node must be a finite number >= 0; got inf"):
        SimulationConfig(edges_per_node=float("inf"))
    assert SimulationConfig(n_rows=np.int64(4000)).n_rows == 4000  # numpy integers are integers


def test_a_field_without_a_rule_is_a_programming_error():
    @dataclasses.dataclass(frozen=True)
    class Partial:
        a: int = setting(1, integer(0))
        b: int = 2

    with pytest.raises(TypeError, match=r"Partial.b declares no rule"):
        check_fields(Partial(), "partial")


def test_make_config_normalises_toml_and_json_values():
    cfg = make_config("collapsed", {"temperature": [1.0, 0.5], "known_order": np.array([2, 0, 1]),
                                    "steps": np.int64(10), "use_pairs": np.True_})
    assert cfg.temperature == (1.0, 0.5) and cfg.known_order == (2, 0, 1)
    assert type(cfg.steps) is int and type(cfg.known_order[0]) is int and cfg.use_pairs is True
    assert make_config("biols", {"decoder_hidden": [8, 8]}).decoder_hidden == (8, 8)
    assert make_config("mcmc", {"fixed_noise_scales": [1, 2.0]}).fixed_noise_scales == (1, 2.0)
    # __post_init__ only checks: a config built directly keeps what it was given
    assert CollapsedConfig(known_order=[1, 0]).known_order == [1, 0]
    with pytest.raises(ValueError, match="known_order must be a tuple of node indices"):
        CollapsedConfig(known_order="01")


def test_collapsed_rules_between_and_beyond_fields():
    with pytest.raises(ValueError, match=r"logit_scale must be a finite number > 0, or None"):
        CollapsedConfig(logit_scale=float("nan"))
    with pytest.raises(ValueError, match=r"lr_final_fraction must be a number in \(0, 1\]; got 0"):
        CollapsedConfig(lr_final_fraction=0)
    with pytest.raises(ValueError, match="max_targets must be an integer >= 1, or None"):
        CollapsedConfig(max_targets=0)
    with pytest.raises(ValueError, match=r"temperature must be a pair \(start, end\)"):
        CollapsedConfig(temperature=(1.0, True))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_config_checks_itself_against_a_dataset(name):
    assert callable(getattr(METHODS[name].config, "check_dataset", None))


def test_the_data_layer_validates_without_the_inference_package():
    probe = ("import sys, latentscm.data as d; d.SimulationConfig(); "
             "assert 'latentscm.inference' not in sys.modules and 'jax' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

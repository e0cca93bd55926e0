"""programs.program: traced programs kept across processes (jax.export) give jax.jit's numbers and skip tracing."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latentscm.inference import programs


class State(NamedTuple):
    x: jax.Array
    key: jax.Array


def _fun(calls):
    def f(state, data, n):
        calls.append(1)  # runs only while tracing

        def body(s, _):
            k, sub = jax.random.split(s.key)
            return State(s.x * data["a"] + jax.random.normal(sub, s.x.shape), k), jnp.sum(s.x)

        state, sums = jax.lax.scan(body, state, None, length=n)
        return state, {"sums": sums, "last": state.x[-1]}

    return f


def _args():
    return State(jnp.arange(4.0), jax.random.key(3)), {"a": jnp.asarray(0.5)}


def _same(a, b):
    def leaf(x):
        return np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)

    return all(np.array_equal(leaf(x), leaf(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setattr(programs, "folder", lambda: tmp_path)
    monkeypatch.setattr(programs, "_COMPILED", {})  # this test's programs start as in a new process
    return tmp_path


def _new_process():
    """What a new process has not: the programs compiled in this one."""
    programs._COMPILED.clear()


def test_without_a_folder_it_is_jax_jit(monkeypatch):
    monkeypatch.setattr(programs, "folder", lambda: None)
    prog = programs.program(_fun([]), "f", static_argnums=2)
    assert not isinstance(prog, programs._Program)
    state, data = _args()
    assert _same(prog(state, data, 3), jax.jit(_fun([]), static_argnums=2)(state, data, 3))


def test_a_second_process_loads_the_program_and_gets_the_same_numbers(folder):
    state, data = _args()
    expected = jax.jit(_fun([]), static_argnums=2)(state, data, 3)
    calls = []
    first = programs.program(_fun(calls), "f", static_argnums=2)
    assert _same(first(state, data, 3), expected)
    assert len(calls) == 1 and len(list(folder.glob("*.jaxexport"))) == 1
    # a new process reads it from the folder and never traces it
    _new_process()
    again = []
    second = programs.program(_fun(again), "f", static_argnums=(2,))
    assert _same(second.lower(state, data, 3).compile()(state, data), expected)
    assert again == []
    # other steps, shapes or identity: programs of their own
    second(state, data, 4)
    programs.program(_fun(again), "g", static_argnums=2)(state, data, 3)
    programs.program(_fun(again), "f", static_argnums=2)(State(jnp.arange(5.0), state.key), data, 3)
    assert len(again) == 3 and len(list(folder.glob("*.jaxexport"))) == 4


def test_a_damaged_file_is_exported_again(folder):
    state, data = _args()
    programs.program(_fun([]), "f", static_argnums=2)(state, data, 3)
    (path,) = folder.glob("*.jaxexport")
    path.write_bytes(b"not a program")
    _new_process()
    calls = []
    out = programs.program(_fun(calls), "f", static_argnums=2)(state, data, 3)
    assert len(calls) == 1 and _same(out, jax.jit(_fun([]), static_argnums=2)(state, data, 3))
    assert path.read_bytes() != b"not a program"


def test_a_later_program_of_the_same_process_reuses_the_compiled_one(folder):
    """Another program object with the same key (a later fit in the same process) neither traces nor reads the
    folder: it runs what the first compiled."""
    state, data = _args()
    expected = programs.program(_fun([]), "f", static_argnums=2)(state, data, 3)
    for path in folder.glob("*.jaxexport"):
        path.unlink()
    calls = []
    out = programs.program(_fun(calls), "f", static_argnums=2)(state, data, 3)
    assert calls == [] and list(folder.glob("*.jaxexport")) == [] and _same(out, expected)


def test_a_program_export_cannot_take_runs_as_jax_jit_traced_once(folder, monkeypatch):
    def refuse(*args, **kwargs):
        raise ValueError("not exportable")

    monkeypatch.setattr(programs._Program, "_export", refuse)
    state, data = _args()
    calls = []
    prog = programs.program(_fun(calls), "f", static_argnums=2)
    outs = [prog(state, data, 3), prog(state, data, 3)]
    assert len(calls) == 1 and list(folder.glob("*.jaxexport")) == []
    for out in outs:
        assert _same(out, jax.jit(_fun([]), static_argnums=2)(state, data, 3))


@pytest.mark.slow  # three fits' compilations (37 s); the CLI's repeated fit runs by default (tests/test_cli.py)
def test_the_collapsed_fit_is_the_same_with_kept_programs_and_traces_them_once(folder, monkeypatch):
    from latentscm.data import SimulationConfig, simulate
    from latentscm.inference import fit

    train, _ = simulate(SimulationConfig(d=3, D=8, n_pairs=150, n_regimes=3, rows_per_regime=50), 0)
    config = {"steps": 10, "num_restarts": 1, "num_particles": 1, "num_draws": 10, "chunk": 10, "mixture_draws": 32,
              "mixture_orders": 4}
    first = fit(train, "collapsed", config=config, progress=False)
    names = sorted(p.name for p in folder.glob("*.jaxexport"))
    assert len(names) == 3  # the SVI step, the guide's draws, the order weighing

    def no_tracing(*args, **kwargs):
        raise AssertionError("a kept program was traced again")

    monkeypatch.setattr(programs._Program, "_export", no_tracing)
    _new_process()  # the second fit loads the three programs from the folder
    second = fit(train, "collapsed", config=config, progress=False)
    monkeypatch.setattr(programs, "folder", lambda: None)
    plain = fit(train, "collapsed", config=config, progress=False)
    for post in (second, plain):
        for field in ("W", "noise_scales", "orders", "latent_mean", "elbo"):
            np.testing.assert_array_equal(getattr(post, field), getattr(first, field), err_msg=field)
    assert sorted(p.name for p in folder.glob("*.jaxexport")) == names

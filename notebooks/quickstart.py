# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # latentscm quickstart: a latent SCM from interventional data
#
# Simulate the paper's default problem (or a small one when `LATENTSCM_QUICK` is set, as in CI),
# infer the posterior over the latent SCM with the `collapsed` method (node order learned), score it
# against the truth and inspect it with ArviZ.

# %%
import os

import arviz as az
import matplotlib.pyplot as plt

from latentscm.data import SimulationConfig, simulate
from latentscm.inference import fit
from latentscm.metrics import structure_metrics
from latentscm.plots import plot_edge_probabilities, plot_elbo, plot_latents

QUICK = bool(os.environ.get("LATENTSCM_QUICK"))
sim = SimulationConfig(d=3, D=10, n_pairs=400, n_regimes=8, rows_per_regime=50) if QUICK else SimulationConfig()
train, test = simulate(sim, seed=0)
train.to_dataframe().head()

# %%
posterior = fit(train, "collapsed", config={"steps": 300 if QUICK else 1000}, seed=0)
metrics = structure_metrics(posterior.W, train.weights, z_pred=posterior.latent_mean, z_true=train.z)
metrics["heldout_nll"] = posterior.heldout_nll(test)
metrics

# %% [markdown]
# Posterior edge probabilities beside the true graph, the ELBO trace, and the inferred latents.

# %%
plot_edge_probabilities(posterior.edge_probs(), train.weights)
plot_elbo(posterior.elbo)
plot_latents(posterior.latent_mean, train.z)
plt.show()

# %% [markdown]
# The posterior as an ArviZ DataTree: named dims `parent`, `child`, `node`; 89% equal-tailed intervals.

# %%
idata = posterior.to_arviz()
az.summary(idata, var_names=["noise_scale"])

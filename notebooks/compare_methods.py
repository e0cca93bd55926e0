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
# # Comparing inference methods on one latent-SCM problem
#
# The same simulated data (the paper's default problem, or a small one when `LATENTSCM_QUICK` is set,
# as in CI) fitted by every method in `latentscm.inference.METHODS`; then the posteriors inspected
# with ArviZ: summaries, MCMC diagnostics, rank and trace plots, a forest plot of the edge weights.

# %%
import os

import arviz as az
import matplotlib.pyplot as plt
import pandas as pd

from latentscm.data import SimulationConfig, simulate
from latentscm.inference import fit
from latentscm.runs import run_metrics

QUICK = bool(os.environ.get("LATENTSCM_QUICK"))
sim = SimulationConfig(d=3, D=10, n_pairs=400, n_regimes=8, rows_per_regime=50) if QUICK else SimulationConfig()
train, test = simulate(sim, seed=0)
settings = {
    "collapsed": {"steps": 300 if QUICK else 1000},
    "biols": {"steps": 300 if QUICK else 2000, "known_order": None},
    "amortized": {"steps": 300 if QUICK else 2000, "pretrain_steps": 300 if QUICK else 1500, "decoder": "linear"},
    "mcmc": {"num_warmup": 100 if QUICK else 500, "num_samples": 100 if QUICK else 500, "num_chains": 2 if QUICK else 4},
}

# %%
posteriors = {m: fit(train, m, config=cfg, seed=0, progress=False) for m, cfg in settings.items()}
table = pd.DataFrame([run_metrics(p, train, test) for p in posteriors.values()]).set_index("method")
table[["e_shd", "auroc", "auprc", "mcc", "edge_rmse", "heldout_nll", "seconds"]].round(3)

# %% [markdown]
# ## ArviZ: every method converts to a DataTree with named dims (`parent`, `child`, `node`)
#
# The summary uses ArviZ's default 89% equal-tailed intervals. For `mcmc` the R-hat and ESS columns
# are diagnostics of several chains; the variational methods have one "chain" of independent draws.

# %%
idata = {m: p.to_arviz() for m, p in posteriors.items()}
az.summary(idata["mcmc"], var_names=["noise_scale"])

# %%
print("divergences:", posteriors["mcmc"].info.get("divergences"), " max R-hat of W:",
      posteriors["mcmc"].info.get("max_rhat_W"))
az.plot_rank(idata["mcmc"], var_names=["noise_scale"])
az.plot_trace(idata["mcmc"], var_names=["noise_scale"])
plt.show()

# %% [markdown]
# Forest plot of the edge weights of two methods side by side.

# %%
az.plot_forest({"collapsed": idata["collapsed"], "mcmc": idata["mcmc"]}, var_names=["W"], combined=True)
plt.show()

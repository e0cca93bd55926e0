"""``python -m latentscm``: the command line (see :mod:`latentscm.cli`)."""

from latentscm.cli import entry

if __name__ == "__main__":  # not in the figure pool's spawned process (latentscm.runs.figure_pool)
    entry()

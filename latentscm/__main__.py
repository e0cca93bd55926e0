"""``python -m latentscm``: the command line (see :mod:`latentscm.cli`)."""

from latentscm.cli import entry

if __name__ == "__main__":  # not when imported (e.g. by a spawned multiprocessing child)
    entry()

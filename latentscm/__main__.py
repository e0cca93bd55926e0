"""``python -m latentscm``: the command line (see :mod:`latentscm.cli`)."""

from latentscm.cli import entry

entry()

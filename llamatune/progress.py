"""Progress bars that show where a user looks: in a terminal and in a notebook kernel, not in a CI log."""

from __future__ import annotations

import sys


def in_notebook() -> bool:
    """True inside a Jupyter/Colab kernel (an IPython shell with a kernel), False in a terminal or a script."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return getattr(shell, "kernel", None) is not None


def tqdm_disable() -> bool | None:
    """tqdm's ``disable=`` for the package's progress bars: ``False`` in a notebook kernel (its stderr is not a
    TTY, so tqdm's ``None`` would hide the bar there; Jupyter and Colab render the ``\\r`` updates in place),
    ``None`` elsewhere: a bar on a terminal, none when stderr is a file or a CI log."""
    return False if in_notebook() else None

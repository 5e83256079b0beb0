"""The one command-line entry: ``banditflow --help`` lists every command.

Command modules add their commands to ``app``. They import Feast, Ax, Prefect and MLflow
inside the commands, never at module level, so ``--help`` stays well under a second.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="banditflow",
    help="Optimize models with Prefect + Hyperopt/Ax, register them in MLflow, "
    "and roll them out with a bandit.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

# Each import below registers a group of commands on `app` (kept in this order in --help).
from banditflow.commands import data as _data  # noqa: E402,F401
from banditflow.commands import environment as _environment  # noqa: E402,F401
from banditflow.commands import evaluate as _evaluate  # noqa: E402,F401
from banditflow.commands import loop as _loop  # noqa: E402,F401
from banditflow.commands import ops as _ops  # noqa: E402,F401
from banditflow.commands import optimize as _optimize  # noqa: E402,F401
from banditflow.commands import registry as _registry  # noqa: E402,F401
from banditflow.commands import serve as _serve  # noqa: E402,F401

"""thinkaloud: post-train language models to think out loud.

Each forward pass is made only as deep as the next token needs (early exit = freeze of the residual
stream), so reasoning moves into the visible chain of thought. ``docs/method.md`` in the repository
describes the method with its formulas and where thinkaloud departs from the paper; ``thinkaloud
--help`` (or ``python -m thinkaloud --help``) lists the command's verbs.
"""

from pathlib import Path

from thinkaloud.config import ExitConfig
from thinkaloud.hub import register_builder
from thinkaloud.model.early_exit import EarlyExitModel
from thinkaloud.model.exit_run import ExitForwardOutput
from thinkaloud.model.exits import exit_log_distribution, exit_targets
from thinkaloud.version import __version__


def _organism() -> Path:
    """The model organism of the default recipe (``thinkaloud.experiments.organism``), built when missing."""
    from thinkaloud.experiments.organism.pretrain import ensure_organism

    return ensure_organism()


register_builder("organism", _organism)

__all__ = ["__version__", "EarlyExitModel", "ExitConfig", "ExitForwardOutput", "exit_log_distribution", "exit_targets"]

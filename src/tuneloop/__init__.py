"""tuneloop: data-efficient fine-tuning of language models, and keeping them good after shipping.

Importing tuneloop changes nothing process-wide. The `tuneloop` command sets OpenMP's wait
policy to PASSIVE before torch loads (see `tuneloop.cli.main`); a library user who wants the
same behaviour on a busy CPU sets `OMP_WAIT_POLICY=PASSIVE` in the environment before
importing torch.
"""

from tuneloop.errors import TuneloopError

__version__ = "0.1.0"
__all__ = ["TuneloopError", "__version__"]

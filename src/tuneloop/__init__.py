"""tuneloop: data-efficient fine-tuning of language models, and keeping them good after shipping."""

from tuneloop.errors import TuneloopError

__version__ = "0.1.0"
__all__ = ["TuneloopError", "__version__"]

"""tuneloop: data-efficient fine-tuning of language models, and keeping them good after shipping."""

import os

# Before torch loads OpenMP: idle threads sleep instead of spinning. On a busy or shared CPU
# spinning threads starve the working ones (label scoring measured 9x slower, 90 s vs 11 s);
# on a quiet machine the cost is small. An explicit setting by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tuneloop.errors import TuneloopError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["TuneloopError", "__version__"]

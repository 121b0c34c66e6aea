"""The one exception type a user can cause: bad config, bad data, missing model."""


class TuneloopError(Exception):
    """A problem the user can fix; the CLI prints it without a traceback and exits 2."""

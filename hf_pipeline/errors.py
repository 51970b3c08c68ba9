"""The one exception type the CLI turns into a one-sentence message (traceback only with --debug)."""


class PipelineError(Exception):
    """A problem the user can fix: bad input, bad config, a missing repo or revision."""

"""One exception type for every problem a user can fix: the CLI prints it as one line and exits 2."""


class SiloError(Exception):
    """A user-facing error: bad input, bad config, missing file, mismatched checkpoint."""

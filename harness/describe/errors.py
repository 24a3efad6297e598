"""The error every part of `describe` raises for bad input or an unusable endpoint."""


class DescribeError(ValueError):
    """Bad configuration, unusable dataset folder or endpoint; the message names the file or URL."""

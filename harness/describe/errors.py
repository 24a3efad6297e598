"""The error every part of `describe` raises for bad input or an unusable endpoint."""
from harness.errors import HarnessError


class DescribeError(HarnessError, ValueError):
    """Bad configuration, unusable dataset folder or endpoint; the message names the file or URL."""

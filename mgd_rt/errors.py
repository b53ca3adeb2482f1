"""The one error type for mistakes a user can fix (bad file, bad flag, bad size).

The CLI prints it as a single line and exits non-zero; every other exception is a bug
and keeps its traceback.
"""


class MgdRtError(Exception):
    """A user error: the message names the file or option and says how to fix it."""

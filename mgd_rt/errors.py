"""The one error type for mistakes a user can fix (bad file, bad flag, bad size).

The CLI prints it as a single line and exits non-zero; every other exception is a bug
and keeps its traceback.
"""


class MgdRtError(Exception):
    """A user error: the message names the file or option and says how to fix it."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type name when it has none): what a one-line report quotes
    of a third-party error (protobuf, ONNX Runtime, tritonclient) whose full text runs to many lines."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

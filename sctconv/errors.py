"""The one exception type that reaches the user as a one-line message."""


class SctconvError(Exception):
    """A problem with the user's input, model or options, reported without a traceback."""

"""The one exception type that means "the user asked for something wrong" (printed as one line)."""


class UserError(Exception):
    """A bad flag, file or dataset: the CLI prints str(err) on one line and exits non-zero.

    The message must name the problem and the fix; no traceback is shown for these.
    """

    exit_code = 2

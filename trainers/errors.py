"""The one exception type that means "the user asked for something wrong" (printed as one line)."""


class UserError(Exception):
    """A bad flag, file or dataset: the CLI prints str(err) on one line and exits non-zero.

    The message must name the problem and the fix; no traceback is shown for these.
    """

    exit_code = 2


class CheckpointError(UserError):
    """A checkpoint that cannot be read: damaged, or not an onorm checkpoint. `reason` is
    the short cause ("UnpicklingError: ...") without the advice."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)   # one argument: it pickles (Ray ships it from workers)
        self.reason = reason

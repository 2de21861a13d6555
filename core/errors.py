"""The one base class of the errors a user can act on.

Every error that a bad setting, a missing file or a stopped budget raises derives from UserError, and
its message says what to do. The command line prints such an error as one line (exit status 2), the app
as one sentence; anything else is a bug and keeps its traceback in the log.
"""


class UserError(Exception):
    """A problem in what the user gave (a setting, a path, a file, a budget), not in the code."""

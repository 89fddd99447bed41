"""The two kinds of error a user can cause, and the exit code each one gets.

The CLI prints these as one line (no traceback) and exits with `exit_code`. Anything else that
escapes is a bug in glassgpt and keeps its traceback.
"""


class GlassError(Exception):
    """A problem the user can fix (missing run, corrupt checkpoint, no network...). Exit code 1."""

    exit_code = 1


class UsageError(GlassError):
    """A bad command line or config value. Exit code 2, like argparse."""

    exit_code = 2

"""Errors gos_tvm raises for the user to act on (importing this module imports nothing heavy)."""
from __future__ import annotations


class UserError(ValueError):
    """A mistake in what was passed to a run (an argument, a file, the data, the work directory):
    the message names the bad value and says what to do.  The command line prints it as one line
    on stderr and exits with status 2."""


__all__ = ["UserError"]

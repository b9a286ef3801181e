"""The one exception type for a user's mistakes (a bad config value, a missing file, an unknown name).

The ``jaxfold`` command catches :class:`UserError` alone and prints its message as one line (exit code 2); every
other exception is a bug or an unexpected condition and keeps its traceback. It subclasses ``ValueError`` so code
that caught the ``ValueError`` these errors used to be still does; :class:`MissingFile` is also a
``FileNotFoundError``, for the same reason. Ground floor: imports nothing from jaxfold.
"""

from __future__ import annotations


class UserError(ValueError):
    """What the user asked for cannot be done as asked; the message says what to change."""


class MissingFile(UserError, FileNotFoundError):
    """A file or directory the user named (or a command should have produced) is not there."""

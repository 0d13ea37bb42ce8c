"""The one exception type a user can cause.

The CLI catches `CircuitlabError`, prints its message on one line and exits with status 2,
so the message must say what was wrong and what to do about it. Programming errors stay
ordinary exceptions and keep their tracebacks.
"""

from __future__ import annotations


class CircuitlabError(Exception):
    """A problem with the user's input, config or files, explained in the message."""

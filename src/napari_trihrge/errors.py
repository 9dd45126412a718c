"""Errors a user can act on.

Every problem with user input is raised as :class:`TrihrgeInputError`: its message says what is
wrong and ``hint`` says how to fix it. The CLI prints both on one line and exits non-zero; the
napari widgets turn them into notifications. Never let a low-level traceback reach a user for bad
input: catch it where the input is read and re-raise as this error.
"""

from __future__ import annotations


class TrihrgeError(Exception):
    """Base class of all napari-trihrge errors."""


class TrihrgeInputError(TrihrgeError, ValueError):
    """Bad user input (files, parameters, data). ``str(err)`` is 'problem. hint'."""

    def __init__(self, problem: str, hint: str = ""):
        self.problem = problem.rstrip(".")
        self.hint = hint.strip()
        super().__init__(f"{self.problem}. {self.hint}".strip() if self.hint else self.problem)


class EncoderAccessError(TrihrgeError, RuntimeError):
    """An encoder's weights cannot be obtained (gated model, offline, missing file)."""


class Cancelled(TrihrgeError):
    """Raised inside long-running engine work when the user asked to cancel."""

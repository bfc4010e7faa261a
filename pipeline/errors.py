"""Errors a user can act on.

Anything raised as ``FilmstyleError`` is printed by the CLI as one line
(``filmstyle: error: <message>``) with exit code 2, never as a traceback.
Messages name the file and the problem.
"""
from __future__ import annotations


class FilmstyleError(Exception):
    """A problem with the user's input or environment, reported in one line."""

    exit_code = 2


class InputError(FilmstyleError):
    """The input video (or style, or checkpoint) is missing, unreadable or unusable."""


class OutputError(FilmstyleError):
    """The output location cannot be written."""


class ClusterError(FilmstyleError):
    """The Ray cluster named by --ray-address / $RAY_ADDRESS cannot be joined."""

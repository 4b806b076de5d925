"""The one exception type that means "the user asked for something we can't do"."""

from __future__ import annotations

import difflib
from typing import Iterable


class UserError(Exception):
    """Bad input: the CLI prints the message as one line and exits with code 2."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ' (did you mean X?)' suffix for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""

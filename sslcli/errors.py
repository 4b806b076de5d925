"""The one exception type that means "the user asked for something we can't do"."""

from __future__ import annotations

import contextlib
import difflib
from typing import Iterable, Iterator


class UserError(Exception):
    """Bad input: the CLI prints the message as one line and exits with code 2."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ' (did you mean X?)' suffix for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (at most `limit` characters), else its type's name."""
    return (str(exc).splitlines() or [""])[0][:limit] or type(exc).__name__


def last_line(exc: BaseException) -> str:
    """The last line of an exception's message (where Python and torch put the cause), at most 300 characters."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:300].rstrip(".")


@contextlib.contextmanager
def plugin_guard(name: str, during: str) -> Iterator[None]:
    """Turn anything a method plugin raises `during` a step into one line naming it; our own
    refusals and running out of memory pass through as they are."""
    try:
        yield
    except (UserError, MemoryError):
        raise
    except Exception as exc:
        raise plugin_fault(name, during, exc) from exc


def plugin_fault(name: str, during: str, exc: BaseException) -> UserError:
    """A plugin's unexpected exception as one line naming the method (the traceback with --debug)."""
    return UserError(f"method '{name}' failed in {during} ({type(exc).__name__}: {last_line(exc)}); this is a fault "
                     f"of the method plugin or of its recipe keys: check method.* (see `sslcli methods`), or rerun "
                     f"with --debug for the traceback")

"""Did-you-mean for names a user types: inputs, files, models, adapters."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

# difflib's ratio above which a name counts as a typo of another ("strenght" ~ "strength" 0.875).
_CLOSE_ENOUGH = 0.6


def closest(name: str, choices: Iterable[Any]) -> str | None:
    """The choice ``name`` is most likely a typo of, or None."""
    texts = [c for c in choices if isinstance(c, str)]
    found = difflib.get_close_matches(str(name), texts, n=1, cutoff=_CLOSE_ENOUGH)
    if not found:  # a different case or a missing folder prefix: "Outline" for "outline"
        lowered = {c.lower(): c for c in texts}
        hit = lowered.get(str(name).lower()) or next(
            (c for c in texts if c.rsplit("/", 1)[-1].lower() == str(name).rsplit("/", 1)[-1].lower()), None)
        return hit
    return found[0]


def did_you_mean(name: str, choices: Iterable[Any]) -> str:
    """``"; did you mean 'strength'?"`` or ``""``."""
    hit = closest(name, choices)
    return f"; did you mean {hit!r}?" if hit is not None and hit != name else ""

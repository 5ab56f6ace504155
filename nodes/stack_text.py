"""The text of LoRAStack's `loras` and PromptLoRAs' `text`, parsed into stack lines.

`loras`: one LoRA per line, `lora_name[:strength[:text_encoder_strength]]`; a line starting with `#`
is off, a blank line is skipped. `text`: A1111's `<lora:NAME:W>` / `<lora:NAME:W:TE_W>` tags
(`<lyco:...>` alike), NAME a path under loras/ without its extension or a bare stem. Both give the
same `StackLine`s, so a prompt's tags are exactly a stack (docs/CONTRACT.md, "LoRAStack and
PromptLoRAs"). Errors are `NodeInputError`s naming the input and the line or tag.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Sequence

from ..base.errors import NodeInputError

# How many close file names an error suggests.
_SUGGESTIONS = 3


@dataclasses.dataclass(frozen=True)
class StackLine:
    """One enabled LoRA of a stack: a file of loras/, its strength and text-encoder strength."""

    lora_name: str
    strength: float
    text_encoder_strength: float
    where: str  # "line 3" / "tag 2 (<lora:ink:0.8>)": for error messages


def _number(text: str, what: str, input_name: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise NodeInputError(input_name, f"{where}: {what} {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise NodeInputError(input_name, f"{where}: {what} must be a finite number")
    return value


def closest(name: str, candidates: Sequence[str]) -> str:
    """`; closest: a, b` (or why there is none), for an unknown LoRA name."""
    found = difflib.get_close_matches(name, list(candidates), n=_SUGGESTIONS, cutoff=0.4)
    if not found:
        return f"; the loras folder holds {len(candidates)} file(s), none close"
    return "; closest: " + ", ".join(found)


def parse_stack(text: str, files: Sequence[str], input_name: str = "loras") -> list[StackLine]:
    """The enabled lines of `loras`, each checked against `files` (the loras folder's listing)."""
    known = set(files)
    out: list[StackLine] = []
    for number, raw in enumerate((text or "").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"line {number} ({line[:80]!r})"
        parts = line.split(":")
        if len(parts) > 3:
            raise NodeInputError(input_name,
                                 f"{where}: expected lora_name[:strength[:text_encoder_strength]]")
        name = parts[0].strip()
        strength = _number(parts[1], "strength", input_name, where) if len(parts) > 1 else 1.0
        te = _number(parts[2], "text_encoder_strength", input_name, where) if len(parts) > 2 else strength
        if name not in known:
            raise NodeInputError(input_name, f"{where}: {name!r} is not a file of the loras folder"
                                 + closest(name, files))
        out.append(StackLine(name, strength, te, f"line {number}"))
    return out


# <lora:NAME:W>, <lora:NAME:W:TE_W> and <lora:NAME> (1.0, as A1111); <lyco:...> alike.
_TAG = r"<(?:lora|lyco):([^<>:]+)((?::[^<>:]*){0,2})>"
_TAG_RE = re.compile(_TAG, re.IGNORECASE)
# A run of tags with the whitespace around and between them: replaced by one space as a whole.
_RUN_RE = re.compile(rf"\s*{_TAG}(?:\s*{_TAG})*\s*", re.IGNORECASE)


def strip_tags(text: str) -> str:
    """The text without its tags; the whitespace around a removed tag is collapsed to one space
    (none at the very start or end of the text)."""

    def space(m: re.Match[str]) -> str:
        return "" if m.start() == 0 or m.end() == len(text) else " "

    return _RUN_RE.sub(space, text)


def _without_suffix(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name.rsplit("/", 1)[-1] else name


def resolve_tag_name(name: str, files: Sequence[str], input_name: str, where: str) -> str:
    """A tag's NAME to a file of loras/: a path without extension (or with it), else a bare stem found
    anywhere; two files that fit is an error naming both."""
    name = name.strip().replace("\\", "/")
    exact = [f for f in files if f == name] or [f for f in files if _without_suffix(f) == name]
    if not exact and "/" not in name:
        exact = [f for f in files if _without_suffix(f).rsplit("/", 1)[-1] == name]
    if len(exact) == 1:
        return exact[0]
    if len(exact) > 1:
        example = _without_suffix(exact[0])
        raise NodeInputError(input_name, f"{where}: {name!r} fits {len(exact)} files: {', '.join(exact)}; "
                             f"write the path, e.g. <lora:{example}:1>")
    # the closest file names, found by their paths and stems without the extension
    by_key: dict[str, str] = {}
    for f in files:
        by_key.setdefault(_without_suffix(f), f)
        by_key.setdefault(_without_suffix(f).rsplit("/", 1)[-1], f)
    near = difflib.get_close_matches(name, list(by_key), n=_SUGGESTIONS * 2, cutoff=0.4)
    found = list(dict.fromkeys(by_key[k] for k in near))[:_SUGGESTIONS]
    hint = "; closest: " + ", ".join(found) if found else closest(name, files)
    raise NodeInputError(input_name, f"{where}: no LoRA named {name!r} in the loras folder" + hint)


def parse_tags(text: str, files: Sequence[str], input_name: str = "text") -> list[StackLine]:
    """The tags of a prompt, in order, as stack lines."""
    out: list[StackLine] = []
    for number, m in enumerate(_TAG_RE.finditer(text or ""), 1):
        where = f"tag {number} ({m.group(0)[:80]})"
        numbers = [p for p in m.group(2).split(":")[1:]]
        strength = _number(numbers[0], "weight", input_name, where) if numbers else 1.0
        te = _number(numbers[1], "text-encoder weight", input_name, where) if len(numbers) > 1 else strength
        out.append(StackLine(resolve_tag_name(m.group(1), files, input_name, where), strength, te, where))
    return out

"""A LoRA's trigger words: the words that activate it, from its own metadata or a sidecar file.

Order of preference (docs/CONTRACT.md, "Trigger words"): the file's `modelspec.trigger_phrase`, else
the `trainedWords` of a sidecar `NAME.civitai.info` / `NAME.info` JSON beside the file (what civitai
helpers write), else the ten most frequent tags of kohya's `ss_tag_frequency`; deduplicated.

Everything read here comes from files someone downloaded: a value or sidecar too large, JSON that
does not parse, a sidecar that is a link out of the LoRA's folder, is ignored with a warning and the
next source is tried. Nothing here raises on bad input.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..base import limits

logger = logging.getLogger(__name__)

# How many tags of ss_tag_frequency count as trigger words.
TOP_TAGS = 10
# A metadata value longer than this is not parsed: kohya's ss_tag_frequency of a large data set is
# a few hundred kB, 4 MB is ten times that; a 50 MB value would take seconds and memory for nothing.
MAX_METADATA_CHARS = 4_000_000
# A trigger phrase is a few words; 10,000 characters is a paragraph of them.
MAX_PHRASE_CHARS = 10_000
# A civitai.info holds the model card and image list, tens of kB; 4 MB is far above any real one.
MAX_SIDECAR_BYTES = 4_000_000
# One trigger word longer than this is no word: it is dropped.
MAX_WORD_CHARS = 300
SIDECAR_SUFFIXES = (".civitai.info", ".info")


def _words(items: Any) -> list[str]:
    out: list[str] = []
    for item in items:
        if isinstance(item, str):
            out += [w.strip() for w in item.split(",") if w.strip() and len(w.strip()) <= MAX_WORD_CHARS]
    return list(dict.fromkeys(out))


def tag_frequency(raw: str | None, shown: str = "") -> list[tuple[str, int]]:
    """kohya's ss_tag_frequency ({dataset dir: {tag: count}}) merged, most frequent first."""
    if not raw:
        return []
    if len(raw) > MAX_METADATA_CHARS:
        logger.warning("%s: ss_tag_frequency is %d characters long (at most %d are read); ignored",
                       shown, len(raw), MAX_METADATA_CHARS)
        return []
    try:
        data = limits.loads(raw)
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError and JSONLimitError are ValueErrors
        logger.warning("%s: ss_tag_frequency is not valid JSON; ignored", shown)
        return []
    counts: collections.Counter[str] = collections.Counter()
    for per_dir in data.values() if isinstance(data, dict) else []:
        if not isinstance(per_dir, dict):
            continue
        for tag, n in per_dir.items():
            tag = str(tag).strip()
            # a count of NaN or 1e999 (inf) is skipped: int() of it would raise
            if (tag and len(tag) <= MAX_WORD_CHARS and isinstance(n, (int, float)) and not isinstance(n, bool)
                    and 0 <= n < 2**63):
                counts[tag] += int(n)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def sidecar_path(lora_path: str | os.PathLike) -> Path | None:
    """The first sidecar beside the file that may be read: a regular file whose real path lies in the
    LoRA file's own folder (a link leading elsewhere is refused with a warning)."""
    path = Path(lora_path)
    stem = path.name.rsplit(".", 1)[0] if "." in path.name else path.name
    folder = os.path.realpath(path.parent)
    for suffix in SIDECAR_SUFFIXES:
        candidate = path.with_name(stem + suffix)
        if not os.path.lexists(candidate):
            continue
        real = os.path.realpath(candidate)
        if os.path.dirname(real) != folder or not os.path.isfile(real):
            logger.warning("%s: not a file beside the LoRA (it leads to %s); ignored", candidate, real)
            continue
        return candidate
    return None


def sidecar_words(lora_path: str | os.PathLike) -> list[str]:
    """`trainedWords` of the sidecar JSON, [] when there is none or it cannot be used."""
    candidate = sidecar_path(lora_path)
    if candidate is None:
        return []
    try:
        size = candidate.stat().st_size
        if size > MAX_SIDECAR_BYTES:
            logger.warning("%s is %d bytes (at most %d are read); ignored", candidate, size,
                           MAX_SIDECAR_BYTES)
            return []
        with open(candidate, "rb") as f:
            data = limits.loads(f.read(MAX_SIDECAR_BYTES + 1))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        logger.warning("%s: not a readable JSON sidecar (%s); ignored", candidate, e)
        return []
    words = data.get("trainedWords") if isinstance(data, dict) else None
    if not isinstance(words, list):
        return []
    return _words(words)


def trigger_words(lora_path: str | os.PathLike, metadata: Mapping[str, str]) -> list[str]:
    """The pinned order: trigger phrase, else sidecar trainedWords, else the top tags."""
    shown = str(lora_path)
    phrase = metadata.get("modelspec.trigger_phrase") or ""
    if len(phrase) > MAX_PHRASE_CHARS:
        logger.warning("%s: modelspec.trigger_phrase is %d characters long (at most %d); ignored",
                       shown, len(phrase), MAX_PHRASE_CHARS)
        phrase = ""
    if words := _words([phrase]):
        return words
    if words := sidecar_words(lora_path):
        return words
    return _words([t for t, _ in tag_frequency(metadata.get("ss_tag_frequency"), shown)[:TOP_TAGS]])


__all__ = ["TOP_TAGS", "sidecar_path", "sidecar_words", "tag_frequency", "trigger_words"]

"""Reading the workflow out of a PNG written by SaveImage (ours or ComfyUI's).

ComfyUI's SaveImage stores two text chunks: ``prompt`` (the API-format prompt that ran) and
``workflow`` (the editor's JSON, when the run came from the editor). Re-running a PNG uses the
``prompt`` chunk when there is one, else converts the ``workflow`` chunk.

The chunks are read with a small PNG chunk walker instead of PIL: it never decodes the pixels, it
checks every chunk's CRC, and it can say exactly what is wrong with a file that is not a PNG, is
truncated or is damaged, instead of PIL's generic "cannot identify image file".
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from pathlib import Path
from typing import Any

from ..base import limits
from .errors import WorkflowError

logger = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_CHUNK_TYPES = (b"tEXt", b"zTXt", b"iTXt")
# All text chunks of one PNG together, inflated, may hold at most this many bytes; inflating stops
# there (zip-bomb guard). SaveImage writes a prompt and a workflow, each at most the server's 10 MiB
# JSON cap, so 32 MiB is room for both; a 57 KB file of zTXt chunks inflated to 2.9 GB before.
MAX_PNG_TEXT_BYTES = 32 * 1024 * 1024


def read_png_text(path: str | Path) -> dict[str, str]:
    """Return the PNG's text chunks (tEXt, zTXt, iTXt) as ``{keyword: text}``.

    Raises WorkflowError naming the file for a missing or unreadable file, a file that is not a
    PNG, a truncated file, and a damaged chunk (bad CRC, bad compression).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as ex:
        raise WorkflowError(f"{path}: no such workflow file") from ex
    except OSError as ex:
        raise WorkflowError(f"{path}: cannot read the file: {ex}") from ex
    if not data.startswith(PNG_SIGNATURE):
        if PNG_SIGNATURE.startswith(data):
            raise WorkflowError(f"{path}: the PNG file is truncated ({len(data)} bytes)")
        raise WorkflowError(f"{path}: not a PNG file (it does not start with the PNG signature)")

    texts: dict[str, str] = {}
    budget = [MAX_PNG_TEXT_BYTES]  # text bytes left to keep, inflated or not
    pos = len(PNG_SIGNATURE)
    while True:
        if pos + 8 > len(data):
            raise WorkflowError(f"{path}: the PNG file is truncated (it ends before its IEND chunk)")
        length, chunk_type = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 8 + length + 4
        if end > len(data):
            raise WorkflowError(
                f"{path}: the PNG file is truncated (chunk {chunk_type!r} at byte {pos} needs {length} "
                f"bytes, the file ends first)"
            )
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[end - 4:end])
        if zlib.crc32(chunk_type + body) & 0xFFFFFFFF != crc:
            raise WorkflowError(f"{path}: the PNG file is damaged "
                                f"(bad CRC in chunk {chunk_type!r} at byte {pos})")
        if chunk_type in TEXT_CHUNK_TYPES:
            keyword, text = _decode_text_chunk(path, chunk_type, body, budget)
            texts.setdefault(keyword, text)
        if chunk_type == b"IEND":
            return texts
        pos = end


def _over_budget(path: Path) -> WorkflowError:
    return WorkflowError(f"{path}: the PNG's text chunks hold more than {MAX_PNG_TEXT_BYTES} bytes "
                         "(inflated); a workflow is far smaller")


def _inflate(path: Path, chunk_type: bytes, compressed: bytes, budget: list[int]) -> bytes:
    """Inflate at most the bytes left in ``budget`` (never more), and take them from it."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(compressed, budget[0] + 1)
    except zlib.error as ex:
        raise WorkflowError(f"{path}: the PNG file is damaged "
                            f"(bad compressed text in a {chunk_type!r} chunk)") from ex
    if len(out) > budget[0] or inflater.unconsumed_tail:
        raise _over_budget(path)
    budget[0] -= len(out)
    return out


def _decode_text_chunk(path: Path, chunk_type: bytes, body: bytes, budget: list[int]) -> tuple[str, str]:
    keyword, sep, rest = body.partition(b"\0")
    if not sep:
        raise WorkflowError(f"{path}: the PNG file is damaged (a {chunk_type!r} chunk has no keyword)")
    name = keyword.decode("latin-1")
    if chunk_type == b"tEXt":
        if len(rest) > budget[0]:
            raise _over_budget(path)
        budget[0] -= len(rest)
        return name, rest.decode("latin-1")
    if chunk_type == b"zTXt":
        return name, _inflate(path, chunk_type, rest[1:], budget).decode("latin-1")
    # iTXt: compression flag, method, language tag \0, translated keyword \0, UTF-8 text.
    if len(rest) < 2:
        raise WorkflowError(f"{path}: the PNG file is damaged (a short iTXt chunk)")
    compressed = rest[0] == 1
    _lang, _, rest = rest[2:].partition(b"\0")
    _translated, _, text = rest.partition(b"\0")
    if compressed:
        text = _inflate(path, chunk_type, text, budget)
    elif len(text) > budget[0]:
        raise _over_budget(path)
    else:
        budget[0] -= len(text)
    try:
        return name, text.decode("utf-8")
    except UnicodeDecodeError as ex:
        raise WorkflowError(f"{path}: the PNG's {name!r} text is not valid UTF-8") from ex


def parse_json_chunk(path: str | Path, name: str, text: str) -> Any:
    """The JSON in text chunk ``name``, or WorkflowError naming the file, the chunk and the problem."""
    try:
        value = limits.loads(text)
    except json.JSONDecodeError as ex:
        raise WorkflowError(
            f"{path}: the PNG's {name!r} chunk is not valid JSON "
            f"(line {ex.lineno}, column {ex.colno}: {ex.msg})"
        ) from ex
    except limits.JSONLimitError as ex:
        raise WorkflowError(f"{path}: the PNG's {name!r} chunk is not valid JSON ({ex})") from ex
    if not isinstance(value, dict):
        raise WorkflowError(f"{path}: the PNG's {name!r} chunk holds {type(value).__name__}, "
                            "not a JSON object")
    return value


def png_workflow_chunks(path: str | Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``(prompt, workflow)`` from a SaveImage PNG: the parsed ``prompt`` and ``workflow`` chunks.

    The chunk that will be run must parse: the ``prompt`` chunk when there is one, else the
    ``workflow`` chunk. A broken ``workflow`` chunk next to a good ``prompt`` is only logged (it is
    not needed to run; it is just not carried into the images this run writes). A PNG with neither
    chunk is an error that lists the chunks it does have.
    """
    texts = read_png_text(path)
    if "prompt" not in texts and "workflow" not in texts:
        found = ", ".join(repr(k) for k in texts) or "none"
        raise WorkflowError(
            f"{path}: this PNG holds no workflow: no 'prompt' or 'workflow' text chunk "
            f"(text chunks: {found}). "
            "Only images saved by SaveImage (here or in ComfyUI) carry their workflow."
        )
    prompt = parse_json_chunk(path, "prompt", texts["prompt"]) if "prompt" in texts else None
    workflow = None
    if "workflow" in texts:
        try:
            workflow = parse_json_chunk(path, "workflow", texts["workflow"])
        except WorkflowError:
            if prompt is None:
                raise
            logger.warning("%s: ignoring its broken 'workflow' chunk; running its 'prompt' chunk", path)
    return prompt, workflow

"""Limits checked before work starts: JSON documents, prompt length, sampling memory, scheduler steps.

Each refusal is the usual invalid-input error of its caller (a WorkflowError, a JSON 400, a
NodeInputError naming the input), raised before anything is allocated or run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from typing import Any

logger = logging.getLogger(__name__)

# The deepest document ComfyUI's editor writes is about 10 levels (extra_pnginfo.workflow.nodes[i]
# .inputs[j].widget); 100 leaves ten times that and keeps every recursive reader (json.dumps of the
# history, validation) far below Python's recursion limit of 1000.
MAX_JSON_DEPTH = 100
# Arrays and objects in one document, counted before it is parsed: a 5,000-node workflow in the
# editor's format holds about 75,000; 500,000 leaves room for six of those and parses in ~0.1 s,
# where 3 million empty lists (a 10 MB body of `[],`) took 4 s and 200 MB to build and walk.
MAX_JSON_CONTAINERS = 500_000
# The text encoders read 77 tokens (CLIP) or 512 (T5), a few thousand characters at most. 100,000
# characters is 30x that and tokenizes in well under a second; a 50 MB prompt made the tokenizer
# allocate 2.5 GB before truncating it.
MAX_PROMPT_CHARS = 100_000
# Sampling is refused when the estimate below needs more than this share of the free memory: the
# estimate is a floor (the denoiser, the text encoders and the allocator need more), so a floor
# above 80% cannot fit.
MEMORY_MARGIN = 0.8


class JSONLimitError(ValueError):
    """A JSON document refused: not finite numbers, or nested too deep."""


def _finite_constant(name: str) -> float:
    raise JSONLimitError(f"{name} is not a JSON number (only finite numbers are accepted)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONLimitError(f"{text[:40]} is out of range for a number (it reads as {value})")
    return value


def loads(text: str | bytes) -> Any:
    """``json.loads`` for documents from outside: refuses NaN, Infinity, numbers that overflow to
    infinity, nesting deeper than MAX_JSON_DEPTH and more than MAX_JSON_CONTAINERS arrays and
    objects, with JSONLimitError (a ValueError); the last two before parsing (``check_shape``).

    ``json.JSONDecodeError`` passes through unchanged for callers that report its line and column.
    """
    check_shape(text)
    try:
        value = json.loads(text, parse_constant=_finite_constant, parse_float=_finite_float)
    except RecursionError:
        raise JSONLimitError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError:
        raise
    except ValueError as ex:  # int(): more digits than Python converts (sys.get_int_max_str_digits)
        if isinstance(ex, JSONLimitError):
            raise
        raise JSONLimitError(f"a number is too long ({str(ex).partition(';')[0]})") from None
    check_depth(value)
    return value


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPEN_RUN = re.compile(rb"[\[{]{%d}" % (MAX_JSON_DEPTH + 1))


def check_shape(text: str | bytes, depth: int = MAX_JSON_DEPTH,
                containers: int = MAX_JSON_CONTAINERS) -> None:
    """Raise JSONLimitError when a document (not yet parsed) nests deeper than ``depth`` or holds
    more than ``containers`` arrays and objects.

    Strings are blanked first, so brackets inside them do not count; what is left is reduced to its
    brackets and peeled one level per pass. Every step is a C-speed scan of the bytes: a 10 MB
    body is checked in well under a second and nothing is built from it. A malformed skeleton is
    left for the parser to report.
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    skeleton = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    count = skeleton.count(b"[") + skeleton.count(b"{")
    if count > containers:
        raise JSONLimitError(f"holds {count} arrays and objects; at most {containers} are accepted")
    if depth == MAX_JSON_DEPTH and _OPEN_RUN.search(skeleton):
        raise JSONLimitError(f"nested deeper than {depth} levels")
    for _ in range(depth):
        if not skeleton:
            return
        peeled = skeleton.replace(b"[]", b"").replace(b"{}", b"")
        if len(peeled) == len(skeleton):
            return  # unbalanced: not JSON, and the parser says where
        skeleton = peeled
    if skeleton:
        raise JSONLimitError(f"nested deeper than {depth} levels")


def check_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> None:
    """Raise JSONLimitError when lists/dicts nest deeper than ``limit`` (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            raise JSONLimitError(f"nested deeper than {limit} levels")
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))


def check_prompt_length(text: Any, input_name: str) -> str | None:
    """Why a prompt text is refused (too long), or None."""
    if isinstance(text, str) and len(text) > MAX_PROMPT_CHARS:
        return (f"{input_name} is {len(text)} characters long; at most {MAX_PROMPT_CHARS} are accepted "
                "(the text encoder reads only the first few hundred)")
    return None


# -- memory -------------------------------------------------------------------------------------


def sampling_bytes(pipe: Any, width: int, height: int, batch_size: int) -> int:
    """A floor of the memory sampling ``batch_size`` images of ``width`` x ``height`` needs.

    The rule (docs/server.md, "Limits before work starts"): the VAE decodes every image of the batch
    at full resolution at once, holding at least three activations of its first block's width (input,
    normalized copy, conv output) per pixel, in the VAE's dtype; the result is then copied twice as
    float32 RGB (the pipeline's numpy array and the IMAGE tensor). VAE slicing decodes one image at a
    time, tiling one 512x512 tile at a time.
    """
    import torch

    vae = getattr(pipe, "vae", None)
    channels = 128
    dtype_bytes = 4
    if vae is not None:
        out_channels = getattr(getattr(vae, "config", None), "block_out_channels", None)
        if out_channels:
            channels = int(out_channels[0])
        with contextlib.suppress(AttributeError, TypeError):
            dtype_bytes = torch.tensor([], dtype=vae.dtype).element_size()
    pixels = width * height
    decoded = batch_size
    if vae is not None and getattr(vae, "use_slicing", False):
        decoded = 1
    tiled = vae is not None and getattr(vae, "use_tiling", False)
    decode_pixels = min(pixels, 512 * 512) if tiled else pixels
    vae_bytes = decoded * decode_pixels * 3 * channels * dtype_bytes
    output_bytes = batch_size * pixels * 3 * 4 * 2
    return vae_bytes + output_bytes


def free_memory(device: Any) -> int | None:
    """Bytes free for new tensors on ``device`` (a torch device), or None when unknown."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        # Memory torch holds in its cache but does not use is free for it too.
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "cpu":
        try:
            import psutil

            return int(psutil.virtual_memory().available)
        except ImportError:
            return _meminfo_available()
    return None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_refusal(pipe: Any, width: int, height: int, batch_size: int) -> tuple[str, str] | None:
    """(input name, message) when sampling cannot fit the device's free memory; None when it may."""
    device = getattr(pipe, "device", "cpu")
    free = free_memory(device)
    if free is None:
        return None
    need = sampling_bytes(pipe, width, height, batch_size)
    if need <= free * MEMORY_MARGIN:
        return None
    one = sampling_bytes(pipe, width, height, 1)
    name = "batch_size" if batch_size > 1 and one <= free * MEMORY_MARGIN else "width"
    return name, (
        f"width {width} x height {height} x batch_size {batch_size} needs at least {_gib(need)} on "
        f"{device}, which has {_gib(free)} free (sampling is refused above {MEMORY_MARGIN:.0%} of it): "
        "lower width, height or batch_size"
    )


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


# -- scheduler steps ----------------------------------------------------------------------------


def steps_refusal(scheduler: Any, steps: int) -> str | None:
    """Why ``scheduler`` cannot run ``steps`` steps, or None: its timesteps must index its training
    schedule (DDIM and PNDM with ``steps_offset=1`` ask for timestep 1000 of 1000 at 1000 steps)."""
    train = getattr(getattr(scheduler, "config", None), "num_train_timesteps", None)
    if not train or not hasattr(scheduler, "alphas_cumprod"):  # flow matching: timesteps are not indices
        return None
    trial = type(scheduler).from_config(scheduler.config)
    try:
        trial.set_timesteps(steps)
    except (ValueError, IndexError) as ex:
        return f"{type(scheduler).__name__} cannot run {steps} steps: {ex}"
    timesteps = getattr(trial, "timesteps", None)
    if timesteps is not None and len(timesteps) and float(timesteps.max()) >= train:
        return (f"{type(scheduler).__name__} cannot run {steps} steps on a model trained with {train} "
                f"timesteps (its step {steps} would be timestep {int(timesteps.max())}); use fewer steps")
    return None

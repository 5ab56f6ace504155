"""Which LoRAs made an image: recorded by the Sampler, written into the PNG by SaveImage.

SaveImage only receives the IMAGE, and the IMAGE must stay a plain float tensor (CONTRACT: ComfyUI's
convention, so the pack's images feed ComfyUI's image nodes and back). So the credits travel on a
side channel keyed by the tensor object itself:

- the Sampler calls ``register(images, credits_for(handle, ...))`` on the tensor it returns;
- SaveImage / PreviewImage call ``lookup(images)`` on the tensor they receive and, when it is one
  the Sampler made, add the chunks of ``png_chunks`` next to ComfyUI's ``prompt`` / ``workflow``.

Entries are keyed by ``id(tensor)`` and hold a weak reference to it: an entry goes away with its
tensor (``weakref.finalize``), and a new tensor that happens to reuse a freed id is never mistaken
for the old one. The executor hands a node's output object to its consumers as it is, and its
cache keeps that same object, so a cached Sampler output still finds its credits on a re-run. An
image that went through any other node (a crop, a blend, ComfyUI's own nodes) is a new tensor and
gets no LoRA credits: the pack cannot know what the other node did with them.

The PNG gets two chunks:

- ``loras``: JSON list of ``{"name", "file", "adapter", "weight", "sha256", "short_hash",
  "fused"}`` (and ``"schedule"`` for a scheduled adapter), one per LoRA that acted on the image
  (active, or fused into the weights);
- ``parameters``: A1111's infotext (prompt, ``Negative prompt:``, then ``Steps: ..., Seed: ...,
  Lora hashes: "name: hash, ..."``), which A1111, Forge and Civitai read to link the LoRAs used.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraCredit:
    name: str  # A1111's alias: the file name without extension (what <lora:NAME:w> would say)
    file: str  # the path relative to the loras folder, "/"-separated (the LoadLoRA lora_name)
    adapter: str  # the adapter name on the pipeline
    weight: Any  # the active weight: a number, or a per-component / per-block dict
    sha256: str  # the full file's sha256, as loaded
    short_hash: str | None  # A1111's 12-digit "Lora hashes" value (LoraFile.short_hash)
    fused: bool = False  # fused into the weights (then ``weight`` is the weight it was fused at)
    # ScheduleAdapterWeights: {"keyframes", "interpolation"}; the denoiser's weight followed it per step
    schedule: dict[str, str] | None = None


@dataclass(frozen=True)
class ImageCredits:
    """What a Sampler call rendered with: its base model, LoRAs and sampling parameters."""

    model: str
    loras: tuple[LoraCredit, ...]
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    cfg: float
    width: int
    height: int
    scheduler: str = "default"


_lock = threading.Lock()
_entries: dict[int, tuple[weakref.ref, ImageCredits]] = {}


def register(images: Any, credits: ImageCredits) -> None:
    """Remember ``credits`` for the tensor ``images`` for as long as that tensor lives."""
    key = id(images)
    try:
        ref = weakref.ref(images)
    except TypeError:  # not weak-referenceable: nothing to attach to
        return
    with _lock:
        _entries[key] = (ref, credits)
    weakref.finalize(images, _forget, key, ref)


def _forget(key: int, ref: weakref.ref) -> None:
    with _lock:
        entry = _entries.get(key)
        if entry is not None and entry[0] is ref:
            del _entries[key]


def lookup(images: Any) -> ImageCredits | None:
    """The credits registered for exactly this tensor object, or None."""
    with _lock:
        entry = _entries.get(id(images))
    if entry is None or entry[0]() is not images:
        return None
    return entry[1]


def _relative_lora_name(path: str) -> str:
    from .. import host

    resolved = Path(path)
    for root in host.folder_roots("loras"):
        try:
            return resolved.relative_to(root.resolve()).as_posix()
        except ValueError:
            continue
    return resolved.name


def _short_hash(path: str, sha256: str) -> str | None:
    from ..loaders.lora_file import LoraFileError
    from ..loaders.store import read_lora

    try:
        lora = read_lora(path)  # cached by content: no second parse of a loaded file
    except (LoraFileError, OSError) as ex:
        logger.warning("no short hash for %s: %s", path, ex)
        return None
    if lora.sha256 != sha256:
        logger.warning("%s changed on disk since it was loaded; its short hash is not recorded", path)
        return None
    return lora.short_hash


def lora_credits(handle: Any) -> tuple[LoraCredit, ...]:
    """The LoRAs that act on images sampled from the PIPELINE ``handle``: active or fused ones."""
    from ..loaders.weight_schedule import active_schedules, sampling_state

    schedules = {s.adapter: s for s in active_schedules(handle.state)}
    # what the Sampler ran: scheduled ones unfused
    state = sampling_state(handle.state, handle.source.denoisers)
    active = state.active.as_dict()
    fused_weight: dict[str, Any] = {}
    for op in state.fused:
        weights = op.active.as_dict()
        for name in op.adapter_names:
            fused_weight.setdefault(name, weights.get(name))
    credits = []
    for spec in state.adapters:
        if spec.name not in active and spec.name not in fused_weight:
            continue  # loaded but switched off by SetAdapterWeights: it did not touch the image
        file = _relative_lora_name(spec.path)
        stem = file.rsplit("/", 1)[-1]
        stem = stem.rsplit(".", 1)[0] if "." in stem else stem
        credits.append(LoraCredit(
            name=stem,
            file=file,
            adapter=spec.name,
            weight=active[spec.name] if spec.name in active else fused_weight[spec.name],
            sha256=spec.sha256,
            short_hash=_short_hash(spec.path, spec.sha256),
            fused=spec.name in fused_weight,
            schedule=({"keyframes": schedules[spec.name].text(),
                       "interpolation": schedules[spec.name].interpolation}
                      if spec.name in schedules else None),
        ))
    return tuple(credits)


def credits_for(handle: Any, prompt: str, negative_prompt: str, seed: int, steps: int, cfg: float,
                width: int, height: int, scheduler: str = "default") -> ImageCredits:
    """The credits of one Sampler call on ``handle`` (a PipelineHandle)."""
    return ImageCredits(handle.source.model, lora_credits(handle), prompt, negative_prompt, int(seed),
                        int(steps), float(cfg), int(width), int(height), scheduler)


def _quote(value: str) -> str:
    """A1111's ``infotext_utils.quote``: JSON-quote a value holding ',', ':' or a newline."""
    if "," not in value and "\n" not in value and ":" not in value:
        return value
    return json.dumps(value, ensure_ascii=False)


def lora_hashes(credits: ImageCredits) -> str:
    """A1111's "Lora hashes" value: ``name: hash, ...`` (':' and ',' removed from names)."""
    parts = []
    for lora in credits.loras:
        if lora.short_hash:
            alias = lora.name.replace(":", "").replace(",", "")
            parts.append(f"{alias}: {lora.short_hash}")
    return ", ".join(parts)


def infotext(credits: ImageCredits) -> str:
    """An A1111-style ``parameters`` text for the image."""
    lines = [credits.prompt]
    if credits.negative_prompt:
        lines.append(f"Negative prompt: {credits.negative_prompt}")
    fields: dict[str, Any] = {
        "Steps": credits.steps,
        "CFG scale": f"{credits.cfg:g}",
        "Seed": credits.seed,
        "Size": f"{credits.width}x{credits.height}",
        "Model": credits.model,
    }
    if credits.scheduler != "default":
        fields["Sampler"] = credits.scheduler
    hashes = lora_hashes(credits)
    if hashes:
        fields["Lora hashes"] = hashes
    fields["Version"] = "loragraph"
    lines.append(", ".join(f"{k}: {_quote(str(v))}" for k, v in fields.items()))
    return "\n".join(lines)


def png_chunks(credits: ImageCredits) -> dict[str, str]:
    """The text chunks SaveImage adds for these credits: ``loras`` (JSON) and ``parameters``."""
    return {
        # "schedule" only where there is one: files without schedules read as before
        "loras": json.dumps([{k: v for k, v in asdict(lora).items() if k != "schedule" or v is not None}
                             for lora in credits.loras]),
        "parameters": infotext(credits),
    }

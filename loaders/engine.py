"""The engine the nodes call: pipelines, LoRA files, realize, sample, inspect, save.

One `Engine` per process holds the live pipelines (an LRU keyed by source) and the state each one
is in. Nodes build new `PipelineHandle` values with the transitions in state.py and ask the engine
to `realize` them when real weights are needed.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..base import disk, limits
from ..base.errors import NodeInputError
from . import fence, quantized, store
from .components import PLACEMENT_KEYWORDS
from .config import EngineConfig, get_config
from .formats import family
from .live import LivePipeline
from .lora_file import LoraFileError
from .noise_schedulers import SCHEDULERS
from .pipelines import PipelineCache, build_pipeline, make_source, param_bytes
from .reconcile import realize
from .state import AdapterSpec, PipelineHandle, PipelineSource
from .trigger_words import trigger_words

logger = logging.getLogger(__name__)


def _alpha_in_file(path: str) -> bool | None:
    """Whether the adapter's file stores its alpha (else peft used alpha = rank); None if unreadable now."""
    try:
        return store.read_lora(path).summary()["alpha_in_file"]
    except (LoraFileError, OSError):
        return None


def _cache_key(source: PipelineSource) -> PipelineSource:
    return replace(source, model="", components=())


@functools.cache
def call_parameters(pipeline_class: type) -> frozenset[str]:
    """The names a pipeline class's `__call__` takes, read once per class.

    Only named parameters count: a `**kwargs` catch-all is no promise that an argument is used.
    """
    parameters = inspect.signature(pipeline_class.__call__).parameters.values()
    return frozenset(p.name for p in parameters
                     if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self")


def first_image_as_pil(images: torch.Tensor) -> Any:
    """The first image of an IMAGE batch ([batch, H, W, 3], 0..1) as the PIL image pipelines take.

    Quantized as SaveImage writes it, so a saved-and-reloaded image conditions the same way.
    """
    import numpy as np
    from PIL import Image

    array = np.clip(255.0 * images[0].detach().cpu().float().numpy(), 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def check_input_image(images: torch.Tensor) -> None:
    """Refuse what is not an IMAGE batch before anything runs (its first image is the one used)."""
    if images.ndim != 4 or images.shape[0] < 1:
        raise NodeInputError("image", f"must be an IMAGE batch [batch, height, width, channels], "
                                      f"got shape {tuple(images.shape)}")


def small_image_refusal(pipe: Any, images: torch.Tensor) -> str | None:
    """Why the pipeline failed on this input image, when it is too small for it; else None.

    Flux Kontext rounds each side of its input image down to its image processor's multiple (twice
    the VAE's factor) and fails with a bare ZeroDivisionError when that leaves nothing. Asked only
    after such a failure: Qwen-Image-Edit resizes any image by its aspect ratio and takes small ones.
    """
    config = getattr(getattr(pipe, "image_processor", None), "config", None)
    multiple = getattr(config, "vae_scale_factor", None)
    height, width = int(images.shape[1]), int(images.shape[2])
    if not isinstance(multiple, int) or min(height, width) >= multiple:
        return None
    return (f"{type(pipe).__name__} cannot take a {width}x{height} input image: it rounds each side "
            f"down to a multiple of {multiple}, which leaves nothing; give it one of at least "
            f"{multiple}x{multiple}")


def output_as_image(out: Any) -> torch.Tensor:
    """A pipeline's np output as IMAGE: images as they are, videos [videos, frames, H, W, 3]
    flattened to [videos x frames, H, W, 3] with each video's frames in order."""
    images = getattr(out, "images", None)
    if images is None:
        import numpy as np

        videos = np.asarray(out.frames)
        images = videos.reshape(-1, *videos.shape[-3:])
    return torch.from_numpy(images).float().contiguous()


class Engine:
    def __init__(self, memory_budget: int | None = None, config: EngineConfig | None = None):
        """`config`: the engine's settings (default: the process configuration, read from the
        environment once). The LoRA store and the fence are process-wide: an explicit config also
        sets their cache bound and fast-path mode."""
        if config is not None:  # the process-wide parts take an explicit configuration too
            fence.configure(config.fast_paths)
            store.set_lora_cache_limit(config.lora_cache_bytes)
        self.config = config or get_config()
        budget = memory_budget if memory_budget is not None else self.config.pipeline_cache_bytes
        self.pipelines = PipelineCache(budget)
        # One lock: a live pipeline is one mutable object; two prompts must not reconcile it at once.
        self.lock = threading.RLock()

    # --- pipelines ----------------------------------------------------------------------------

    def load_pipeline(self, model: str, dtype: str = "auto", device: str = "auto",
                      denoiser: str = "(from model)", weight_dtype: str = "default") -> PipelineHandle:
        """LoadPipeline: resolve, build (or reuse) the live pipeline, return a handle with no LoRA."""
        source = make_source(model, dtype, device, denoiser, weight_dtype)
        live = self.live(source)
        source = replace(source, components=fence.loadable_components(live.pipe))
        return PipelineHandle(source)

    def live(self, source: PipelineSource) -> LivePipeline:
        key = _cache_key(source)
        with self.lock:
            live = self.pipelines.get(key)
            if live is None:
                pipe = build_pipeline(source)
                live = LivePipeline(pipe, parked_bytes=self.config.parked_bytes)
                self.pipelines.put(key, live, param_bytes(pipe))
            return live

    def unload_all(self) -> None:
        """Drop every live pipeline (ComfyUI's /free unload_models); handles rebuild them on demand."""
        with self.lock:
            self.pipelines.clear()

    def realize(self, handle: PipelineHandle) -> tuple[LivePipeline, list[str]]:
        with self.lock:
            live = self.live(handle.source)
            # schedules are the Sampler's business (loaders/weight_schedule.py), never the reconciler's
            warnings = realize(live, handle.state.without_schedules(), store.read_lora)
            return live, warnings

    def check_schedules(self, handle: PipelineHandle) -> list[str]:
        """Realize the handle and check that a Sampler can apply its schedules, so a schedule that
        cannot hold fails on the node that made it (or on the FuseLoRA after it). Returns warnings."""
        from . import weight_schedule

        with self.lock:
            live, warnings = self.realize(handle)
            weight_schedule.check_layers(live, handle.state, handle.source.denoisers)
            return warnings

    # --- LoRA files ---------------------------------------------------------------------------

    def lora_spec(
        self, handle: PipelineHandle, lora_name: str, strength: float, adapter_name: str, origin: str = "",
        target: str = "auto",
    ) -> AdapterSpec:
        """Resolve a LoadLoRA's inputs to an AdapterSpec; reads (and caches) the file. `target`:
        "auto" (where the file's keys say) or a denoising component of the pipeline."""
        from .. import host
        from .transitions import derive_adapter_name

        try:
            path = host.resolve_in("loras", lora_name)
        except (ValueError, FileNotFoundError) as e:
            raise NodeInputError("lora_name", str(e)) from None
        try:
            lf = store.read_lora(path)
            lf.check_finite()  # NaN/inf/absurd values: refused here, before the pipeline is touched
            lf.adapter_metadata  # noqa: B018 - a hostile metadata document is refused here too
        except LoraFileError as e:
            raise NodeInputError("lora_name", str(e)) from None
        denoisers = handle.source.denoisers
        if target != "auto" and target not in denoisers:
            raise NodeInputError(
                "target", f"this pipeline has no {target} (its denoising components: {', '.join(denoisers)})"
            )
        if target not in ("auto", denoisers[0]) and target not in PLACEMENT_KEYWORDS:
            raise NodeInputError("target", f"diffusers cannot place a single-expert file on {target}")
        name = adapter_name.strip() or derive_adapter_name(lora_name, handle.state.names)
        if "." in name or "/" in name:
            raise NodeInputError(
                "adapter_name", f"{name!r}: adapter names cannot hold '.' or '/' (peft keys)"
            )
        return AdapterSpec(name, str(path), lf.sha256, float(strength), None, origin, target)

    # --- sampling -----------------------------------------------------------------------------

    @staticmethod
    def size_warning(handle: PipelineHandle, width: int, height: int) -> str | None:
        """A built-in model far from the size it was made for is slow and draws what it never saw."""
        from ..builtin_models.catalog import BUILTIN_MODELS

        if handle.source.kind != "builtin" or handle.source.path not in BUILTIN_MODELS:
            return None
        native = BUILTIN_MODELS[handle.source.path][1]
        # 4x each way is 16x the pixels: past that a render is mostly wasted time on these tiny models.
        if max(width, height) <= 4 * native:
            return None
        return (f"{handle.source.model} was made for {native}x{native} images; {width}x{height} is slow "
                f"on it and will not look like its training: set width and height to {native}")

    def sample(
        self,
        handle: PipelineHandle,
        prompt: str,
        negative_prompt: str = "",
        seed: int = 0,
        steps: int = 20,
        cfg: float = 7.0,
        width: int = 512,
        height: int = 512,
        scheduler: str = "default",
        batch_size: int = 1,
        progress: Callable[[int, int], None] | None = None,
        check_interrupted: Callable[[], None] | None = None,
        true_cfg: float = 1.0,
        frames: int = 1,
        image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The Sampler: `pipe(...)` with a CPU generator; returns IMAGE [batch, H, W, 3] float32 0..1.

        A video pipeline's IMAGE is [videos x frames, H, W, 3], each video's frames in order
        (ComfyUI's convention). The call passes only the arguments the pipeline's `__call__` takes
        (docs/CONTRACT.md, Sampler), so every family gets its own defaults for the rest.
        """
        if width % 8 or height % 8:
            raise NodeInputError("width" if width % 8 else "height", "must be a multiple of 8")
        if frames < 1:
            raise NodeInputError("frames", f"must be at least 1, got {frames}")
        if scheduler not in SCHEDULERS:
            raise NodeInputError("scheduler", f"unknown scheduler {scheduler!r}")
        for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if (refusal := limits.check_prompt_length(text, name)) is not None:
                raise NodeInputError(name, refusal)
        from . import weight_schedule

        with self.lock:
            scheduled = weight_schedule.active_schedules(handle.state)
            denoisers = handle.source.denoisers
            if scheduled:  # scheduled adapters sample unfused in the denoiser; the rest stays as it is
                sampling = weight_schedule.sampling_state(handle.state, denoisers)
                live, _ = self.realize(handle.with_state(sampling))
            else:
                live, _ = self.realize(handle)
            # checks before anything changes; raises naming the ScheduleAdapterWeights node
            weights = weight_schedule.StepWeights(live, handle.state, denoisers) if scheduled else None
            pipe = live.pipe
            accepted = call_parameters(pipe.__class__)  # Any: a diffusers pipeline class
            if image is not None and "image" not in accepted:
                raise NodeInputError(
                    "image", f"{type(pipe).__name__} takes no input image: disconnect `image`"
                )
            if image is not None:
                check_input_image(image)
            original = pipe.scheduler
            scheduler_class = SCHEDULERS[scheduler]  # None: the pipeline's own
            if scheduler_class and "FlowMatch" in type(original).__name__:
                # The offered schedulers are DDPM-family: on a flow-matching model they sample garbage.
                raise NodeInputError(
                    "scheduler",
                    f"{type(pipe).__name__} samples by flow matching ({type(original).__name__}); "
                    f"{scheduler!r} is a noise-prediction scheduler and does not apply: use 'default'",
                )
            chosen = original
            if scheduler_class:
                import diffusers

                chosen = getattr(diffusers, scheduler_class).from_config(original.config)
            # Limits before any work (base/limits.py): the scheduler can do the steps, and the
            # images can fit the device's free memory.
            if (refusal := limits.steps_refusal(chosen, steps)) is not None:
                raise NodeInputError("steps", refusal)
            if (memory := limits.memory_refusal(pipe, width, height, batch_size)) is not None:
                raise NodeInputError(*memory)
            pipe.scheduler = chosen

            def on_step(_pipe, i, _t, kwargs):
                if weights is not None:
                    # diffusers calls this at the END of step i: the scales set here are step i+1's.
                    # The loop runs len(timesteps) times (= steps, bar multi-evaluation schedulers).
                    total = len(_pipe.scheduler.timesteps)
                    if i + 1 < total:
                        weights.apply(i + 1, total)
                if progress is not None:
                    progress(i + 1, steps)
                if check_interrupted is not None:
                    check_interrupted()
                return {}

            warning = self.size_warning(handle, width, height)
            if warning:
                logger.warning(warning)
            t0 = time.perf_counter()
            try:
                if weights is not None:
                    weights.apply(0, steps)  # step 0 runs at strength(0) whatever the step count
                offered: dict[str, Any] = {
                    "prompt": prompt,
                    "negative_prompt": negative_prompt,
                    "num_inference_steps": steps,
                    "guidance_scale": cfg,
                    "true_cfg_scale": true_cfg,
                    "width": width,
                    "height": height,
                    "num_frames": frames,
                    "num_images_per_prompt": batch_size,
                    "num_videos_per_prompt": batch_size,
                    "generator": torch.Generator("cpu").manual_seed(seed),
                    "output_type": "np",
                    "callback_on_step_end": on_step,
                }
                if "num_videos_per_prompt" in accepted:  # one batch size: a video pipeline's is videos
                    del offered["num_images_per_prompt"]
                if image is not None:
                    offered["image"] = first_image_as_pil(image)
                # by keyword only: Flux Kontext's first positional parameter is `image`, not `prompt`
                try:
                    out = pipe(**{k: v for k, v in offered.items() if k in accepted})
                except ZeroDivisionError as exc:
                    if image is not None and (refusal := small_image_refusal(pipe, image)) is not None:
                        raise NodeInputError("image", refusal) from exc
                    raise
            finally:
                pipe.scheduler = original
                if weights is not None:
                    _restore_static_weights(live, weights)
            logger.debug("sampled %d steps in %.2f s", steps, time.perf_counter() - t0)
            return output_as_image(out)

    # --- inspection ---------------------------------------------------------------------------

    def info(self, handle: PipelineHandle) -> dict[str, Any]:
        """LoRAInfo: what is loaded and active per component, fused state, text-encoder switch, devices."""
        with self.lock:
            live, _ = self.realize(handle)
            pipe, state = live.pipe, handle.state
            # parked adapters (loaded, in no state) are the engine's business, not the handle's
            names = set(state.names)
            in_peft = pipe.get_list_adapters() if names else {}
            listed = {c: [n for n in ns if n in names] for c, ns in in_peft.items()}
            listed = {c: ns for c, ns in listed.items() if ns}
            active = state.active.as_dict()
            fused_names: dict[str, list[str]] = {}
            for op in state.fused:
                for n in op.adapter_names:
                    fused_names.setdefault(n, [])
                    fused_names[n] += [c for c in op.components if c not in fused_names[n]]
            adapters: dict[str, dict[str, Any]] = {}
            for spec in state.adapters:
                comps = [c for c, names in listed.items() if spec.name in names]
                ranks, alphas = {}, {}
                algorithm = _algorithm_of(spec)
                for c in comps:
                    cfg = getattr(pipe, c).peft_config[spec.name]
                    ranks[c], alphas[c] = cfg.r, getattr(cfg, "lora_alpha", getattr(cfg, "alpha", None))
                if algorithm != "lora":
                    # built per module group (one peft config each): the file has the numbers
                    ranks, alphas = _file_ranks_alphas(spec, comps)
                weight = active.get(spec.name)
                adapters[spec.name] = {
                    "file": spec.path,
                    "sha256": spec.sha256,
                    "strength": spec.strength,
                    "components": comps,
                    "target": spec.target,  # LoadLoRA's: "auto", or the denoiser it was put on
                    "rank": ranks,
                    "alpha": alphas,
                    "algorithm": algorithm,
                    "alpha_in_file": _alpha_in_file(spec.path),
                    "active": spec.name in active,
                    "weights": _per_component(weight, comps),
                    "fused": fused_names.get(spec.name, []),
                    "device": spec.device or handle.source.device,
                    "trigger_words": trigger_words(spec.path, store.read_lora(spec.path).metadata),
                }
            return {
                "pipeline": handle.source.model,
                "components": list(handle.source.components),
                "adapters": adapters,
                "list_adapters": listed,
                "active_adapters": list(state.active.names),
                "active_weights": {
                    n: _per_component(w, adapters[n]["components"]) for n, w in active.items()
                },
                "fused": [
                    {
                        "components": list(op.components),
                        "adapter_names": list(op.adapter_names),
                        "lora_scale": op.lora_scale,
                        "safe_fusing": op.safe_fusing,
                    }
                    for op in state.fused
                ],
                "text_encoder_lora": {te: te not in state.te_disabled for te in handle.source.text_encoders},
                # how each denoiser's weights are stored: float32, fp8_e4m3fn, GGUF Q8_0, ...
                "storage": {c: quantized.storage(getattr(pipe, c)) for c in handle.source.denoisers
                            if getattr(pipe, c, None) is not None},
                "schedules": {
                    s.adapter: {
                        "keyframes": s.text(), "interpolation": s.interpolation, "active": s.adapter in active
                    }
                    for s in state.schedules
                },
                "warnings": list(live.warnings),
            }

    # --- saving -------------------------------------------------------------------------------

    def save_lora(
        self, handle: PipelineHandle, adapter_name: str, path: Path | Callable[[Callable[[str], None]], Path],
        fmt: str = "kohya",
    ) -> Path:
        """SaveLoRA: the adapter's own weights at strength 1, written whole (base/disk.py).

        ``path`` is the file to write, or a saver that takes the writer and returns where it saved
        (SaveLoRA's numbered names, which never overwrite a file another process just saved).
        """
        spec = handle.state.adapter(adapter_name)
        if spec is None:
            loaded = ", ".join(handle.state.names) or "none"
            raise NodeInputError(
                "adapter_name", f"no adapter named {adapter_name!r} is loaded (loaded: {loaded})"
            )
        if fmt not in ("kohya", "diffusers"):
            raise NodeInputError("format", f"unknown format {fmt!r}")
        lf = store.read_lora(spec.path)
        fam = family(lf.format)  # what the adapter is made of is its file's family's business
        refusal = fam.save_refusal(lf, adapter_name, fmt)
        if refusal is not None:
            raise NodeInputError("format", refusal)
        with self.lock:
            live, _ = self.realize(handle)
            write = fam.export(live.pipe, lf, adapter_name, fmt, handle.source.components)

        if callable(path):
            return path(write)
        return disk.write_file(path, write)


# --- what LoRAInfo says of an adapter's file --------------------------------------------------------


def _algorithm_of(spec: AdapterSpec) -> str:
    """The adapter's algorithm as its file says: lora, or loha/lokr/dora/full/locon/"mixed (...)"."""
    try:
        lf = store.read_lora(spec.path)
    except LoraFileError:
        return "lora"
    return family(lf.format).algorithm(lf)


def _file_ranks_alphas(spec: AdapterSpec, comps: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per component: the rank (the largest, as LoraConfig.r reports it) and the distinct alphas."""
    lf = store.read_lora(spec.path)
    ranks: dict[str, Any] = {}
    alphas: dict[str, Any] = {}
    for c in comps:
        mods = [m for m in lf.modules if m.component == c]
        ranks[c] = max((m.rank for m in mods), default=0)
        found = sorted({m.alpha for m in mods if m.alpha is not None})
        alphas[c] = found[0] if len(found) == 1 else found
    return ranks, alphas


def _restore_static_weights(live: LivePipeline, weights: Any) -> None:
    try:
        weights.restore()
    except BaseException:
        live.state = None  # scales unknown: the next realize resets the pipeline first
        raise
    logger.debug("schedule strengths per step: %s", weights.applied)


def _per_component(weight: Any, comps: list[str]) -> dict[str, Any]:
    if isinstance(weight, dict):
        return {c: weight.get(c, 1.0) for c in comps}
    return {c: weight for c in comps}


_engine: Engine | None = None
_engine_lock = threading.Lock()


def get_engine() -> Engine:
    """The process-wide engine (ComfyUI and the headless executor both use one)."""
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = Engine()
        return _engine

"""Single-file checkpoints (ComfyUI's and A1111's `models/checkpoints/`) read offline.

diffusers' `from_single_file` needs a diffusers config next to the weights and fetches it from the Hub
unless `config=` names a local folder. The package ships those folders for the families most
checkpoints belong to (single_file_configs/, see docs/single-files.md): the family is diffusers' own
reading of the checkpoint's keys (`infer_diffusers_model_type`), done on the file's header, so no
weight is read before the family is known.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

CONFIGS = Path(__file__).with_name("single_file_configs")
# The model types (diffusers' names) a config folder ships for, and what users call them.
FAMILIES = {
    "v1": "SD 1.x", "xl_base": "SDXL", "sd3": "SD3 Medium", "sd35_medium": "SD3.5 Medium",
    "sd35_large": "SD3.5 Large", "flux-dev": "Flux.1 dev", "flux-schnell": "Flux.1 schnell",
}
# Where each component's weights sit in the original layouts, per family group: a component whose
# prefix no key has is absent from the file. SD3's T5 is optional there (diffusers runs SD3 without it).
UNET_PREFIXES = ("model.diffusion_model.",)
DIT_PREFIXES = ("model.diffusion_model.", "joint_blocks.", "double_blocks.")
VAE_PREFIXES = ("first_stage_model.", "vae.")
PARTS: dict[str, dict[str, tuple[str, ...]]] = {
    "v1": {"unet": UNET_PREFIXES, "vae": VAE_PREFIXES, "text_encoder": ("cond_stage_model.transformer.",)},
    "xl_base": {"unet": UNET_PREFIXES, "vae": VAE_PREFIXES,
                "text_encoder": ("conditioner.embedders.0.transformer.",),
                "text_encoder_2": ("conditioner.embedders.1.model.",)},
    "sd3": {"transformer": DIT_PREFIXES, "vae": VAE_PREFIXES, "text_encoder": ("text_encoders.clip_l.",),
            "text_encoder_2": ("text_encoders.clip_g.",), "text_encoder_3": ("text_encoders.t5xxl.",)},
    "flux": {"transformer": DIT_PREFIXES, "vae": VAE_PREFIXES, "text_encoder": ("text_encoders.clip_l.",),
             "text_encoder_2": ("text_encoders.t5xxl.",)},
}
OPTIONAL = {"sd3": {"text_encoder_3": "tokenizer_3"}}
HEADER_LIMIT = 100 << 20  # safetensors' own cap on a header: a bigger one is not a checkpoint


class SingleFileError(ValueError):
    """A checkpoint that cannot load offline; the message names the file and what it needs."""


class UnreadableCheckpoint(SingleFileError):
    """The file's tensor names cannot be read (not a safetensors file, or a damaged one)."""


class TensorShape:
    """A header entry as diffusers' detection reads it: `.shape` only, no data."""

    def __init__(self, shape: list[int]):
        self.shape = torch.Size(shape)


class HeaderView(Mapping[str, TensorShape]):
    """A checkpoint's tensor names and shapes, read without reading a weight."""

    def __init__(self, shapes: dict[str, list[int]]):
        self.shapes = shapes

    def __getitem__(self, key: str) -> TensorShape:
        return TensorShape(self.shapes[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def read_header(path: Path) -> HeaderView:
    """Names and shapes: a safetensors file's JSON header, or a pickle's tensors memory-mapped (read
    with `weights_only`, so no code in it runs, and no weight is paged in for the shapes)."""
    if path.suffix.lower() == ".safetensors":
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise UnreadableCheckpoint("not a safetensors file (shorter than its 8-byte header size)")
            (n,) = struct.unpack("<Q", head)
            if n > HEADER_LIMIT:
                raise UnreadableCheckpoint(f"not a safetensors file (its header claims {n} bytes)")
            try:
                header = json.loads(f.read(n))
            except ValueError as e:
                raise UnreadableCheckpoint(f"not a safetensors file: its header is not JSON ({e})") from None
        if not isinstance(header, dict):
            raise UnreadableCheckpoint("not a safetensors file: its header is not a JSON object")
        return HeaderView({k: list(v.get("shape", [])) for k, v in header.items()
                           if k != "__metadata__" and isinstance(v, dict)})
    try:
        state = _load_pickle(path)
    except Exception as e:  # torch raises many types; its text would suggest weights_only=False
        raise UnreadableCheckpoint(f"not a readable checkpoint ({type(e).__name__}): a .ckpt loads only as "
                                   "plain tensors (torch.load with weights_only)") from None
    while isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UnreadableCheckpoint("the file holds no state dict")
    return HeaderView({k: list(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)})


def _load_pickle(path: Path):
    """Memory-mapped when the file is torch's zip format; a legacy (pre-1.6) pickle cannot be mapped
    and is read whole."""
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def detect_family(header: Mapping) -> str | None:
    """diffusers' model type for the checkpoint (`v1`, `xl_base`, `sd3`, `flux-dev`, ...), or None when
    its keys are no model diffusers knows: diffusers' detection falls back to `v1` for any file, so `v1`
    also needs SD 1.x's own marker key."""
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES, infer_diffusers_model_type

    try:
        model_type = infer_diffusers_model_type(header)
    except (KeyError, IndexError, AttributeError):  # a key one test reads is absent: not that family
        return None
    if model_type == "v1" and CHECKPOINT_KEY_NAMES["v1"] not in header:
        return None
    return model_type


def parts_group(family: str) -> str:
    return "sd3" if family.startswith("sd3") else "flux" if family.startswith("flux") else family


def missing_parts(family: str, header: Mapping) -> tuple[list[str], list[str]]:
    """(required components the file lacks, optional ones it lacks), by key prefix."""
    group = parts_group(family)
    optional = OPTIONAL.get(group, {})
    required: list[str] = []
    absent: list[str] = []
    for component, prefixes in PARTS[group].items():
        if not any(k.startswith(prefixes) for k in header):
            (absent if component in optional else required).append(component)
    return required, absent


def config_folder(family: str) -> Path:
    return CONFIGS / family


def pipeline_class_name(family: str) -> str:
    return json.loads((config_folder(family) / "model_index.json").read_text())["_class_name"]


def tokenizers(family: str, skip: tuple[str, ...] = ()) -> dict[str, object]:
    """The family's tokenizers, built from the shared files under single_file_configs/tokenizers/."""
    import transformers

    folder = config_folder(family)
    index = json.loads((folder / "model_index.json").read_text())
    out: dict[str, object] = {}
    for component, spec in json.loads((folder / "tokenizers.json").read_text()).items():
        if component in skip:
            continue
        kwargs = {k: v for k, v in spec.items() if k != "files"}
        cls = getattr(transformers, index[component][1])
        files = CONFIGS / "tokenizers" / spec["files"]
        out[component] = cls.from_pretrained(str(files), local_files_only=True, **kwargs)
    return out


def load_kwargs(family: str, header: Mapping) -> dict[str, object]:
    """What `from_single_file` gets besides the path: the shipped config folder, the tokenizers, and
    None for each optional component the file lacks (diffusers would look for its weights in the
    config folder and fail)."""
    _, absent = missing_parts(family, header)
    optional = OPTIONAL.get(parts_group(family), {})
    skipped = {c: None for c in absent} | {optional[c]: None for c in absent}
    kwargs: dict[str, object] = {"config": str(config_folder(family))}
    kwargs.update(tokenizers(family, skip=tuple(skipped)))
    kwargs.update(skipped)
    return kwargs


def own_config_advice(path: Path) -> str:
    return (f"put a diffusers folder (model_index.json and component configs, no weights) at "
            f"{path.name}.config next to it, or use the model as a diffusers folder under diffusers/; "
            "loragraph reads single files offline")


def shipped_family(path: Path, shown: str) -> tuple[str, HeaderView]:
    """The family of a checkpoint the package has a config for, and its header, read without a weight;
    anything else raises SingleFileError saying what would make it load."""
    try:
        header = read_header(path)
    except UnreadableCheckpoint as e:
        raise UnreadableCheckpoint(f"{shown}: {e}") from None
    family = detect_family(header)
    shipped = ", ".join(FAMILIES.values())
    if family is None:
        raise SingleFileError(f"{shown}: its keys are no model family diffusers knows (configs ship for "
                              f"{shipped}): {own_config_advice(path)}")
    if family not in FAMILIES:
        raise SingleFileError(f"{shown}: diffusers reads it as {family!r}, a family with no config shipped "
                              f"(those are {shipped}): {own_config_advice(path)}")
    required, _ = missing_parts(family, header)
    if required:
        raise SingleFileError(f"{shown}: a {FAMILIES[family]} checkpoint without {', '.join(required)}: "
                              f"a denoiser-only file goes in diffusion_models/, or {own_config_advice(path)}")
    return family, header


def config_problem(path: Path, shown: str) -> str | None:
    """Why the checkpoint at `path` cannot load offline, or None: for validation, which must not read
    weights. A `<file>.config/` folder or `<stem>.yaml` beside it is taken on trust (diffusers reads it)."""
    if path.with_suffix(path.suffix + ".config").is_dir() or path.with_suffix(".yaml").is_file():
        return None
    try:
        shipped_family(path, shown)
    except SingleFileError as e:
        return str(e)
    return None


def checkpoint_pipeline_class(path: Path) -> str | None:
    """The diffusers pipeline class a checkpoint will load as, read without a weight: its `.config/`
    folder's, else its shipped family's; None when neither says (a `.yaml` only, or no family). For
    checks that need the base model's family before loading (which LoRAs fit)."""
    index = path.with_suffix(path.suffix + ".config") / "model_index.json"
    if index.is_file():
        try:
            return str(json.loads(index.read_text())["_class_name"])
        except (ValueError, KeyError, TypeError):
            return None
    try:
        family, _ = shipped_family(path, path.name)
    except SingleFileError:
        return None
    return pipeline_class_name(family)

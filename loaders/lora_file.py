"""LoRA files: read once, recognise the format, describe, and check what lands on a pipeline.

A LoRA file is read, hashed and parsed once and then shared: the graph may name the same file from
many nodes and re-run every time a widget changes, and `IS_CHANGED` asks for the file's hash on
every queue. So parsed files are cached by content hash, behind a cheap (path, size, mtime) index.

Nothing here applies a LoRA. Loading is diffusers' `load_lora_weights`; this module only prepares
the keys it expects (`pipeline_state_dict`) and predicts, with diffusers' own converters, which of
the file's modules will land (`coverage`), so that a wrong-base or half-matching file is reported
before the pipeline is touched.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import threading
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from .. import limits

logger = logging.getLogger(__name__)

LoraFormat = Literal["diffusers", "peft", "diffusers-old", "kohya"]

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".bin", ".pth")
LORA_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES

# The components diffusers' LoRA loaders address by key prefix ("unet.", "text_encoder.", ...).
COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
DENOISERS = ("unet", "transformer")

# kohya-ss / A1111 / OneTrainer prefixes: lora_<component>_<module path with "_">.
KOHYA_PREFIXES = {
    "lora_unet_": "unet",
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
    "lora_te3_": "text_encoder_3",
    "lora_transformer_": "transformer",
}

# How the "down" (A) and "up" (B) matrix of a module are spelled in each family of formats. The
# module name is everything before the match; the marker says which family it is.
_DOWN_RE = re.compile(
    r"^(?P<module>.+?)(?P<marker>\.lora_A(?:\.[^.]+)?|\.lora_down|\.lora\.down|\.lora_linear_layer\.down"
    r"|_lora\.down)\.weight$"
)
_UP_MARKERS = {
    ".lora_A": ".lora_B",
    ".lora_down": ".lora_up",
    ".lora.down": ".lora.up",
    ".lora_linear_layer.down": ".lora_linear_layer.up",
    "_lora.down": "_lora.up",
}
# Key fragments that mark a tensor as belonging to some low-rank adapter (LoRA, LoHa, LoKr).
_ADAPTER_KEY_MARKERS = (
    "lora_A",
    "lora_B",
    "lora_down",
    "lora_up",
    "lora.down",
    "lora.up",
    "lora_linear_layer",
    "_lora.",
    "hada_w",
    "lokr_w",
    "lora_magnitude_vector",
    "dora_scale",
)

# The parsed-file cache is bounded by the files' total size: parsed LoRAs live in RAM as CPU
# tensors, and 2 GiB holds dozens of typical (10-300 MB) LoRAs without crowding out the models.
DEFAULT_CACHE_BYTES = 2 * 1024**3
# The (path, size, mtime) -> hash index is tiny per entry; the cap only stops unbounded growth.
_MAX_STAT_ENTRIES = 4096
# Read files in 1 MiB chunks: large enough for full disk throughput, small enough to stay flat in RAM.
_CHUNK = 1024 * 1024
# A1111's "Lora hashes" PNG field uses the first 12 hex digits of the hash (its `shorthash`).
_A1111_SHORT_HASH_LEN = 12
# How many example keys an error message shows: enough to recognise the file, short enough to read.
_EXAMPLE_KEYS = 5
# A LoRA value beyond the largest half-precision number cannot be run in fp16, where LoRAs are made
# and used; trained LoRA weights are of order 1, so such a value (1e30 in the probe) is damage.
MAX_LORA_MAGNITUDE = 65504.0
# Summary: how many tags count as trigger words, and how many tag frequencies to list.
_TRIGGER_WORDS = 5
_TOP_TAGS = 20


class LoraFileError(ValueError):
    """A LoRA file that cannot be used; the message names the file and what is wrong with it."""


@dataclasses.dataclass(frozen=True)
class LoraModule:
    """One adapted layer as the file spells it: enough to count, rank and place it without a model."""

    component: str  # "unet", "text_encoder", ... or "unknown"
    name: str  # the module path in the file's own spelling (kohya: lora_unet_..., else dotted)
    rank: int
    alpha: float | None  # None: the file carries no alpha for it (diffusers then uses alpha = rank)
    down_shape: tuple[int, ...]
    up_shape: tuple[int, ...] | None


@dataclasses.dataclass(frozen=True)
class LoraFile:
    """A parsed LoRA file. Shared through the cache: treat `state_dict` as read-only.

    `state_dict` is a read-only mapping of CPU tensors. Tensors themselves cannot be frozen, so
    anything that hands them to diffusers (which may adopt them as parameters) must go through
    `state_dict_copy()` or `pipeline_state_dict()`, never pass these tensors on directly.
    """

    path: str
    sha256: str
    size: int
    format: LoraFormat
    state_dict: Mapping[str, torch.Tensor] = dataclasses.field(compare=False, repr=False)
    metadata: Mapping[str, str] = dataclasses.field(compare=False, repr=False)
    addnet_hash: str | None = dataclasses.field(default=None, compare=False)
    modules: tuple[LoraModule, ...] = dataclasses.field(default=(), compare=False, repr=False)
    nonfinite_keys: tuple[str, ...] = dataclasses.field(default=(), compare=False, repr=False)

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def short_hash(self) -> str:
        """The hash A1111 writes into "Lora hashes" (and Civitai indexes), so images can be traced.

        A1111 takes the file's `sshs_model_hash` metadata when present, else the kohya/"addnet" hash
        (sha256 of the safetensors tensor data after the header), else the whole file's sha256; and
        keeps the first 12 hex digits.
        """
        declared = self.metadata.get("sshs_model_hash", "")
        if re.fullmatch(r"[0-9a-fA-F]{12,64}", declared or ""):
            return declared[:_A1111_SHORT_HASH_LEN].lower()
        return (self.addnet_hash or self.sha256)[:_A1111_SHORT_HASH_LEN]

    @property
    def adapter_metadata(self) -> dict[str, Any] | None:
        """diffusers' `lora_adapter_metadata` (the LoraConfig the file was saved with), parsed.

        It is the only place a diffusers/PEFT file keeps alpha != rank. diffusers reads it only when
        `load_lora_weights` gets a *path*; with an in-memory dict it is lost, so callers pass it on
        as `metadata=` (see `pipeline_state_dict`).
        """
        raw = self.metadata.get("lora_adapter_metadata")
        if not raw:
            return None
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            logger.warning("%s: ignoring lora_adapter_metadata that is not valid JSON", self.path)
            return None
        return value if isinstance(value, dict) else None

    def state_dict_copy(self) -> dict[str, torch.Tensor]:
        """A fresh dict of cloned tensors: safe to hand to diffusers, which may adopt the tensors."""
        return {k: v.clone() for k, v in self.state_dict.items()}

    def check_finite(self) -> None:
        """Raise if any tensor holds NaN, inf or a magnitude above MAX_LORA_MAGNITUDE: such a LoRA turns
        every image black. LoadLoRA calls it (engine.lora_spec); reading alone does not, so
        `loragraph inspect` can still describe a broken file.
        """
        if self.nonfinite_keys:
            raise LoraFileError(
                f"{self.path}: tensor {self.nonfinite_keys[0]!r} holds NaN, inf or values beyond "
                f"±{MAX_LORA_MAGNITUDE:g} ({len(self.nonfinite_keys)} bad tensor(s) in all); "
                "the LoRA would produce black or broken images"
            )

    def summary(self) -> dict[str, Any]:
        """A JSON-able description for LoRAInfo, the server's metadata route and `loragraph inspect`."""
        return _summary(self)


# --------------------------------------------------------------------------------------------------
# Cache


class _Cache:
    """(realpath, size, mtime_ns) -> hashes, and sha256 -> LoraFile (LRU, bounded by total bytes)."""

    def __init__(self, max_bytes: int) -> None:
        self.lock = threading.RLock()
        self.max_bytes = max_bytes
        self.by_stat: collections.OrderedDict[tuple[str, int, int], tuple[str, str | None]] = (
            collections.OrderedDict()
        )
        self.by_hash: collections.OrderedDict[str, LoraFile] = collections.OrderedDict()
        self.bytes = 0
        self.stats = collections.Counter()

    def remember_hash(self, key: tuple[str, int, int], hashes: tuple[str, str | None]) -> None:
        self.by_stat[key] = hashes
        self.by_stat.move_to_end(key)
        while len(self.by_stat) > _MAX_STAT_ENTRIES:
            self.by_stat.popitem(last=False)

    def get(self, sha: str) -> LoraFile | None:
        lora = self.by_hash.get(sha)
        if lora is not None:
            self.by_hash.move_to_end(sha)
        return lora

    def put(self, lora: LoraFile) -> LoraFile:
        """Keep `lora`; if another thread parsed the same content meanwhile, keep and return that one."""
        if lora.sha256 in self.by_hash:
            return self.get(lora.sha256) or lora
        if lora.size > self.max_bytes:
            logger.info("%s (%d bytes) is larger than the LoRA cache; not cached", lora.path, lora.size)
            return lora
        self.by_hash[lora.sha256] = lora
        self.bytes += lora.size
        self.evict()
        return lora

    def evict(self) -> None:
        while self.bytes > self.max_bytes and self.by_hash:
            _, old = self.by_hash.popitem(last=False)
            self.bytes -= old.size
            self.stats["evictions"] += 1


_CACHE = _Cache(int(os.environ.get("LORAGRAPH_LORA_CACHE_BYTES", DEFAULT_CACHE_BYTES)))


def lora_cache_stats() -> dict[str, int]:
    """Counters for tests and diagnostics: parses (full reads), hash_reads, hits, entries, bytes."""
    with _CACHE.lock:
        return {
            "parses": _CACHE.stats["parses"],
            "hash_reads": _CACHE.stats["hash_reads"],
            "hits": _CACHE.stats["hits"],
            "evictions": _CACHE.stats["evictions"],
            "entries": len(_CACHE.by_hash),
            "bytes": _CACHE.bytes,
            "max_bytes": _CACHE.max_bytes,
        }


def clear_lora_cache() -> None:
    """Forget every parsed file and hash (tests; or after the user replaced many files)."""
    with _CACHE.lock:
        _CACHE.by_stat.clear()
        _CACHE.by_hash.clear()
        _CACHE.bytes = 0
        _CACHE.stats.clear()


def set_lora_cache_limit(max_bytes: int) -> None:
    """Change the cache bound (total file bytes kept parsed); evicts at once if now over it."""
    with _CACHE.lock:
        _CACHE.max_bytes = int(max_bytes)
        _CACHE.evict()


def _stat_key(path: Path) -> tuple[str, int, int]:
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError as e:
        raise LoraFileError(f"{path}: cannot open the LoRA file ({e.strerror or e})") from e
    if not os.path.isfile(real):
        raise LoraFileError(f"{path}: not a file")
    return real, st.st_size, st.st_mtime_ns


def _hash_file(path: str, safetensors_file: bool) -> tuple[str, str | None]:
    """sha256 of the whole file and, for safetensors, of the tensor data after the header.

    The second hash is what kohya-ss and A1111 call the "addnet" hash. The two run in two threads,
    each reading the file (hashlib releases the GIL): one sha256 stream is ~0.8 GB/s on a core here,
    so a 140 MB rank-128 LoRA took 350 ms hashed one after the other.
    """

    def sha_from(offset: int) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            f.seek(offset)
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        return h.hexdigest()

    try:
        with open(path, "rb") as f:
            head = f.read(8)
        if not safetensors_file or len(head) < 8:
            return sha_from(0), None
        return _beside(lambda: sha_from(0), lambda: sha_from(8 + int.from_bytes(head, "little")))
    except OSError as e:
        raise LoraFileError(f"{path}: cannot read the LoRA file ({e.strerror or e})") from e


def _hashes(path: str | os.PathLike) -> tuple[tuple[str, int, int], str, str | None]:
    key = _stat_key(Path(path))
    with _CACHE.lock:
        known = _CACHE.by_stat.get(key)
        if known is not None:
            _CACHE.by_stat.move_to_end(key)
            return key, known[0], known[1]
    # The name decides the format: HF-cache style symlinks point at suffix-less blobs.
    named_st = str(path).lower().endswith(SAFETENSORS_SUFFIXES) or key[0].lower().endswith(
        SAFETENSORS_SUFFIXES
    )
    sha, addnet = _hash_file(key[0], named_st)
    with _CACHE.lock:
        _CACHE.stats["hash_reads"] += 1
        _CACHE.remember_hash(key, (sha, addnet))
    return key, sha, addnet


def file_sha256(path: str | os.PathLike) -> str:
    """The file's sha256, from the cache when its (path, size, mtime) is unchanged.

    Nodes' IS_CHANGED calls this on every queue, so a hit costs one `stat` and a dict lookup.
    """
    return _hashes(path)[1]


def read_lora(path: str | os.PathLike) -> LoraFile:
    """Read, recognise and describe a LoRA file, once per content.

    Raises LoraFileError (naming the file) for a missing, unreadable, truncated or non-LoRA file,
    for an unsupported suffix, and for pickles holding anything but tensors.
    """
    path = Path(path)
    if not path.name.lower().endswith(LORA_SUFFIXES):
        raise LoraFileError(
            f"{path}: unsupported file type {path.suffix or '(no suffix)'!r}; "
            f"LoRA files are {', '.join(LORA_SUFFIXES)}"
        )
    # Two tries: if the file changes while we read it, the second read sees the finished file.
    for _attempt in range(2):
        key = _stat_key(path)
        with _CACHE.lock:
            known = _CACHE.by_stat.get(key)
        if known is not None:  # hashed before: the content cache may have it parsed already
            cached = _cached_content(known[0], path)
            if cached is not None:
                return cached
            tensors, metadata = _load(key[0], str(path))
            key_seen, lora = key, _build(str(path), known[0], known[1], key[1], tensors, metadata)
        else:
            # New to us: hash in a thread while this one reads and checks the tensors (hashlib and
            # torch release the GIL): hashing was half of a cold read.
            key_seen, lora = _hash_while_parsing(path, key)
        if key_seen != key or _stat_key(path) != key:
            logger.info("%s changed while it was read; reading it again", path)
            continue
        # The same content under another name, found by its hash only now, shares the first parse.
        cached = _cached_content(lora.sha256, path) if known is None else None
        if cached is not None:
            return cached
        with _CACHE.lock:
            _CACHE.stats["parses"] += 1
            kept = _CACHE.put(lora)
        return kept if kept.path == lora.path else dataclasses.replace(kept, path=lora.path)
    raise LoraFileError(f"{path}: the file keeps changing while it is read; try again when it is written")


def _cached_content(sha: str, path: Path) -> LoraFile | None:
    with _CACHE.lock:
        cached = _CACHE.get(sha)
        if cached is None:
            return None
        _CACHE.stats["hits"] += 1
    if cached.path == str(path):
        return cached
    # Same content under another name: share the parsed tensors, report this path.
    return dataclasses.replace(cached, path=str(path))


def _hash_while_parsing(path: Path, key: tuple[str, int, int]) -> tuple[tuple[str, int, int], LoraFile]:
    """(the stat key hashed, the LoraFile): `_hashes` in a thread, `_load` + `_build` in this one."""

    def parse():
        tensors, metadata = _load(key[0], str(path))
        return _build(str(path), "", None, key[1], tensors, metadata)

    (key_seen, sha, addnet), lora = _beside(lambda: _hashes(path), parse)
    return key_seen, dataclasses.replace(lora, sha256=sha, addnet_hash=addnet)


def _beside(background, foreground):
    """(background(), foreground()): the first in a thread while the second runs here. An error in
    the foreground wins (reading the tensors says more about a bad file than hashing it)."""
    out: dict[str, Any] = {}

    def run():
        try:
            out["value"] = background()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            out["error"] = e

    worker = threading.Thread(target=run, name="loragraph-read", daemon=True)
    worker.start()
    try:
        value = foreground()
    finally:
        worker.join()
    if "error" in out:
        raise out["error"]
    return out["value"], value


# --------------------------------------------------------------------------------------------------
# Reading


def _load(real: str, shown: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if real.lower().endswith(SAFETENSORS_SUFFIXES) or shown.lower().endswith(SAFETENSORS_SUFFIXES):
        return _load_safetensors(real, shown)
    return _load_pickle(real, shown)


def _load_safetensors(real: str, shown: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    import safetensors.torch

    metadata = _check_safetensors_layout(real, shown)
    try:
        tensors = safetensors.torch.load_file(real, device="cpu")
    except Exception as e:  # safetensors raises its own SafetensorError or OSError
        raise LoraFileError(f"{shown}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    return tensors, metadata


def _check_safetensors_layout(real: str, shown: str) -> dict[str, str]:
    """Check the header against the file size, so a truncated file gets a sentence, not a traceback."""
    size = os.path.getsize(real)
    with open(real, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise LoraFileError(f"{shown}: not a safetensors file: it is only {size} bytes long")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise LoraFileError(
                f"{shown}: truncated or not a safetensors file: its header claims {n} bytes, "
                f"but the file is only {size} bytes long"
            )
        raw = f.read(n)
    try:
        header = limits.loads(raw)  # limits: a 5,000-deep header is an error, not a RecursionError
    except (UnicodeDecodeError, ValueError) as e:
        raise LoraFileError(f"{shown}: not a safetensors file: its header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise LoraFileError(f"{shown}: not a safetensors file: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    try:
        end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError) as e:
        raise LoraFileError(f"{shown}: damaged safetensors header (bad data_offsets)") from e
    if 8 + n + end > size:
        raise LoraFileError(
            f"{shown}: truncated: its tensors need {8 + n + end} bytes but the file has only {size} "
            "(an interrupted download or copy?)"
        )
    if not isinstance(metadata, dict):
        raise LoraFileError(f"{shown}: damaged safetensors header (__metadata__ is not an object)")
    return {str(k): str(v) for k, v in metadata.items()}


def _load_pickle(real: str, shown: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    import pickle

    try:
        # Never unpickle arbitrary objects: a .ckpt/.pt can run code when fully unpickled.
        obj = torch.load(real, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise LoraFileError(
            f"{shown}: refused: the pickle holds objects other than tensors and plain values, and "
            f"pickled LoRAs are only loaded with torch.load(weights_only=True) ({str(e).splitlines()[0]})"
        ) from e
    except Exception as e:  # torch raises RuntimeError/EOFError/zipfile errors for damaged files
        raise LoraFileError(f"{shown}: not a readable PyTorch file ({type(e).__name__}: {e})") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # Lightning-style checkpoints nest the weights
    if not isinstance(obj, dict):
        raise LoraFileError(f"{shown}: holds a {type(obj).__name__}, not a dict of tensors")
    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            tensors[str(k)] = v
        elif isinstance(v, (str, int, float, bool)):
            metadata[str(k)] = str(v)
        else:
            raise LoraFileError(f"{shown}: entry {k!r} is a {type(v).__name__}, not a tensor")
    return tensors, metadata


def _build(
    path: str,
    sha: str,
    addnet: str | None,
    size: int,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str],
) -> LoraFile:
    keys = list(tensors)
    if not any(m in k for k in keys for m in _ADAPTER_KEY_MARKERS):
        shown = ", ".join(keys[:_EXAMPLE_KEYS]) or "(the file holds no tensors)"
        raise LoraFileError(
            f"{path}: no LoRA keys (lora_A/lora_B, lora_down/lora_up, ...) among its {len(keys)} tensors; "
            f"is it a model rather than a LoRA? Example keys: {shown}"
        )
    fmt = detect_format(keys)
    modules = _modules(tensors, fmt)
    nonfinite = tuple(k for k, v in tensors.items() if v.is_floating_point() and not _all_sane(v))
    return LoraFile(
        path=path,
        sha256=sha,
        size=size,
        format=fmt,
        state_dict=types.MappingProxyType(tensors),
        metadata=types.MappingProxyType(metadata),
        addnet_hash=addnet,
        modules=modules,
        nonfinite_keys=nonfinite,
    )


def _all_sane(t: torch.Tensor) -> bool:
    """Every element finite and within ±MAX_LORA_MAGNITUDE (one min/max pass; NaN fails both bounds)."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return bool(lo >= -MAX_LORA_MAGNITUDE) and bool(hi <= MAX_LORA_MAGNITUDE)


def _all_finite(t: torch.Tensor) -> bool:
    """Whether every element is finite, in one pass for 16/32-bit floats (4x faster than isfinite().all()).

    Their sum in float64 cannot overflow (n * 3.4e38 stays far below 1.8e308), so it is non-finite
    exactly when some element is NaN or inf (inf - inf gives NaN).
    """
    if t.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return bool(torch.isfinite(t.sum(dtype=torch.float64)))
    return bool(torch.isfinite(t).all())


def detect_format(keys: Iterable[str]) -> LoraFormat:
    """Which family of key names the file uses.

    kohya: keys start with lora_unet_ / lora_te_ / lora_te1_ / lora_te2_ / lora_transformer_.
    diffusers-old: attention-processor keys (`.processor.`, `to_q_lora.down.weight`), or non-PEFT
      LoRA keys without a component prefix (what `unet.save_attn_procs` wrote).
    diffusers: keys start with a component (`unet.`, `text_encoder.`, `transformer.`, ...).
    peft: lora_A / lora_B keys with no component prefix (a single model's adapter, maybe under
      `base_model.model.`).
    """
    keys = [k for k in keys if any(m in k for m in _ADAPTER_KEY_MARKERS)]
    if any(k.startswith(tuple(KOHYA_PREFIXES)) for k in keys):
        return "kohya"
    if any(".processor." in k or "_lora.down." in k or "_lora.up." in k for k in keys):
        return "diffusers-old"
    if any(k.split(".", 1)[0] in COMPONENTS for k in keys):
        return "diffusers"
    if any(".lora_A" in k or ".lora_B" in k for k in keys):
        return "peft"
    return "diffusers-old"


def _component_of(key: str, fmt: LoraFormat) -> str:
    if fmt == "kohya":
        for prefix, component in KOHYA_PREFIXES.items():
            if key.startswith(prefix):
                return component
        return "unknown"
    first = key.split(".", 1)[0]
    if first in COMPONENTS:
        return first
    return _guess_unprefixed_component(key)


def _guess_unprefixed_component(key: str) -> str:
    key = key.removeprefix("base_model.model.")
    if key.startswith(("text_model.", "encoder.layers.", "embeddings.", "text_projection")):
        return "text_encoder"
    if key.startswith(("transformer_blocks.", "single_transformer_blocks.")):
        return "transformer"
    return "unet"


def _modules(tensors: Mapping[str, torch.Tensor], fmt: LoraFormat) -> tuple[LoraModule, ...]:
    out = []
    for key, down in tensors.items():
        m = _DOWN_RE.match(key)
        if m is None:
            continue
        module, marker = m.group("module"), m.group("marker")
        base_marker = ".lora_A" if marker.startswith(".lora_A") else marker
        up_key = key.replace(
            marker + ".weight", marker.replace(base_marker, _UP_MARKERS[base_marker]) + ".weight"
        )
        up = tensors.get(up_key)
        alpha_t = tensors.get(f"{module}.alpha")
        alpha = float(alpha_t.float().reshape(-1)[0]) if isinstance(alpha_t, torch.Tensor) else None
        out.append(
            LoraModule(
                component=_component_of(key, fmt),
                name=module,
                rank=int(down.shape[0]) if down.ndim else 0,
                alpha=alpha,
                down_shape=tuple(down.shape),
                up_shape=tuple(up.shape) if up is not None else None,
            )
        )
    return tuple(out)


# --------------------------------------------------------------------------------------------------
# Summary


def _summary(lora: LoraFile) -> dict[str, Any]:
    md = lora.metadata
    ranks = sorted({m.rank for m in lora.modules})
    alphas = _alphas(lora)
    components = dict(collections.Counter(m.component for m in lora.modules))
    base, reason = guess_base_model(lora)
    tags = _tag_frequency(md.get("ss_tag_frequency"))
    triggers: list[str] = []
    for phrase in (md.get("modelspec.trigger_phrase"), md.get("ss_trigger_words")):
        if phrase:
            triggers += [t.strip() for t in phrase.split(",") if t.strip()]
    triggers += [t for t, _ in tags[:_TRIGGER_WORDS]]
    training = {
        k: md[k]
        for k in (
            "ss_base_model_version",
            "ss_sd_model_name",
            "ss_network_module",
            "ss_network_dim",
            "ss_network_alpha",
            "ss_output_name",
            "modelspec.title",
            "modelspec.architecture",
        )
        if k in md
    }
    return {
        "file": lora.name,
        "path": lora.path,
        "format": lora.format,
        "size": lora.size,
        "sha256": lora.sha256,
        "short_hash": lora.short_hash,
        "modules": len(lora.modules),
        "ranks": ranks,
        "alphas": alphas,
        # What peft uses (a module without a stored alpha gets alpha = rank) and whether the file
        # stores one: the editor's LoadLoRA summary and LoRAInfo show the same numbers.
        "effective_alphas": effective_alphas(lora),
        "alpha_in_file": None not in alphas,
        "components": components,
        "base_model": base,
        "base_model_reason": reason,
        "title": md.get("modelspec.title") or md.get("ss_output_name") or Path(lora.path).stem,
        "trigger_words": list(dict.fromkeys(triggers)),
        "tag_frequency": dict(tags[:_TOP_TAGS]),
        "training": training,
        "nonfinite_keys": list(lora.nonfinite_keys),
        "metadata_keys": sorted(md),
    }


def _alphas(lora: LoraFile) -> list[float | None]:
    """Distinct alphas; from `.alpha` tensors (kohya) or diffusers' adapter metadata; None = absent."""
    found: set[float | None] = {m.alpha for m in lora.modules}
    meta = lora.adapter_metadata
    if meta and None in found:
        meta_alphas = {float(v) for k, v in meta.items() if k.endswith("lora_alpha") and v is not None}
        for k, v in meta.items():
            if k.endswith("alpha_pattern") and isinstance(v, dict):
                meta_alphas |= {float(a) for a in v.values()}
        if meta_alphas:
            found = (found - {None}) | meta_alphas
    return sorted(a for a in found if a is not None) + ([None] if None in found else [])


def effective_alphas(lora: LoraFile) -> list[float]:
    """Distinct alphas as loaded: a module with no alpha in the file (nor in its metadata) has alpha = rank."""
    stored = _alphas(lora)
    found = {a for a in stored if a is not None}
    if None in stored:
        found |= {float(m.rank) for m in lora.modules if m.alpha is None}
    return sorted(found)


def _tag_frequency(raw: str | None) -> list[tuple[str, int]]:
    """kohya's ss_tag_frequency ({dataset dir: {tag: count}}) merged, most frequent first."""
    if not raw:
        return []
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        return []
    counts: collections.Counter[str] = collections.Counter()
    for per_dir in data.values() if isinstance(data, dict) else []:
        if not isinstance(per_dir, dict):
            continue
        for tag, n in per_dir.items():
            tag = str(tag).strip()
            if tag and isinstance(n, (int, float)):
                counts[tag] += int(n)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


# Cross-attention context width (attn2.to_k/to_v input) and text-encoder width per base model.
_CONTEXT_DIM = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL", 1280: "SDXL"}
_TEXT_WIDTH = {768: "SD1.x", 1024: "SD2.x", 1280: "SDXL"}


def guess_base_model(lora: LoraFile) -> tuple[str, str]:
    """("SD1.x" | "SD2.x" | "SDXL" | "other", why) from key names, tensor shapes, then metadata."""
    comps = {m.component for m in lora.modules}
    if "transformer" in comps:
        return "other", "targets a transformer denoiser (not an SD1/SD2/SDXL UNet)"
    if "text_encoder_2" in comps:
        return "SDXL", "has a second text encoder (lora_te2_ / text_encoder_2)"
    for m in lora.modules:
        n = m.name.replace("_", ".")
        if m.component == "unet" and "attn2" in n and n.endswith(("to.k", "to.v")) and len(m.down_shape) >= 2:
            width = m.down_shape[1]
            if width in _CONTEXT_DIM:
                return _CONTEXT_DIM[width], f"cross-attention context width {width} ({m.name})"
            return "other", f"cross-attention context width {width} matches no SD1/SD2/SDXL model"
    for m in lora.modules:
        n = m.name.replace("_", ".")
        if m.component == "unet" and re.search(r"transformer.blocks\.[1-9]", n):
            # SD1.x/SD2.x UNets have one transformer layer per attention block; SDXL has 2 or 10.
            return "SDXL", f"UNet attention blocks with several transformer layers ({m.name})"
    for m in lora.modules:
        n = m.name.replace("_", ".")
        if (
            m.component == "text_encoder"
            and n.endswith(("q.proj", "k.proj", "v.proj"))
            and len(m.down_shape) >= 2
        ):
            width = m.down_shape[1]
            if width in _TEXT_WIDTH:
                return _TEXT_WIDTH[width], f"text-encoder width {width} ({m.name})"
    if any(
        m.component == "unet" and re.match(r"lora_unet_(input_blocks|middle_block|output_blocks)", m.name)
        for m in lora.modules
    ):
        return "SDXL", "kohya SGM-style UNet names (input_blocks/output_blocks), as kohya-ss writes for SDXL"
    md = lora.metadata
    version = md.get("ss_base_model_version", "").lower()
    arch = md.get("modelspec.architecture", "").lower()
    if version.startswith("sdxl") or arch.startswith("stable-diffusion-xl"):
        return "SDXL", "training metadata (ss_base_model_version / modelspec.architecture)"
    if version.startswith("sd_v2") or md.get("ss_v2") == "True" or arch.startswith("stable-diffusion-v2"):
        return "SD2.x", "training metadata (ss_v2 / ss_base_model_version / modelspec.architecture)"
    if version.startswith("sd_v1") or arch.startswith("stable-diffusion-v1"):
        return "SD1.x", "training metadata (ss_base_model_version / modelspec.architecture)"
    return "other", "no key name, tensor shape or metadata matches SD1/SD2/SDXL"


# --------------------------------------------------------------------------------------------------
# What lands on a pipeline


def _denoiser_name(pipe: Any) -> str:
    return "unet" if getattr(pipe, "unet", None) is not None else "transformer"


def pipeline_state_dict(
    pipe: Any, lora: LoraFile, *, copy: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The file's tensors keyed as `pipe.load_lora_weights` expects, and diffusers' adapter metadata.

    Two things diffusers 0.42 gets wrong from an in-memory dict are fixed here, in the copy only:
    - keys without a component prefix (PEFT adapter files, `unet.save_attn_procs` files) load
      nothing, so they get the prefix of the component they belong to;
    - a kohya file whose modules have different alphas loads with one alpha per component (the
      most common; peft ignores diffusers' per-module alpha_pattern), so each odd module's ratio to
      that alpha is folded into its lora_up and its alpha set to the common one: the same delta.
    Other keys pass unchanged: diffusers converts kohya and old keys itself.
    The metadata (None when absent) must reach `load_lora_into_*(..., metadata=)`, since with a
    dict `load_lora_weights` drops it and alpha falls back to rank; `load_lora_file` does that.
    `copy=True` clones the tensors (diffusers may adopt them as parameters; the cache's must stay
    untouched); `copy=False` is for read-only uses such as `coverage`.
    """
    source = lora.state_dict_copy() if copy else dict(lora.state_dict)
    meta = lora.adapter_metadata
    denoiser = _denoiser_name(pipe)
    if lora.format in ("peft", "diffusers-old") and not any(k.split(".", 1)[0] in COMPONENTS for k in source):
        out = {}
        for k, v in source.items():
            bare = k.removeprefix("base_model.model.")
            component = _guess_unprefixed_component(bare)
            if component in DENOISERS:
                component = denoiser
            out[f"{component}.{bare}"] = v
        source = out
        if meta is not None and not any(k.split(".", 1)[0] in COMPONENTS for k in meta):
            # A PEFT file's metadata is one LoraConfig for its one model: file it under the denoiser.
            meta = {f"{denoiser}.{k}": v for k, v in meta.items()}
    if lora.format == "kohya":
        _equalize_kohya_alphas(lora, source)
    return source, meta


def _equalize_kohya_alphas(lora: LoraFile, source: dict[str, torch.Tensor]) -> None:
    """Give every module of a component the same `.alpha`, folding alpha_i / common into lora_up."""
    by_component: dict[str, list[LoraModule]] = collections.defaultdict(list)
    for m in lora.modules:
        by_component[m.component].append(m)
    for component, mods in by_component.items():
        if all(m.alpha is None for m in mods):
            continue  # no alphas at all: diffusers uses alpha = rank everywhere, as kohya means
        true = {m.name: (m.alpha if m.alpha is not None else float(m.rank)) for m in mods}
        if len(set(true.values())) == 1 and all(m.alpha is not None for m in mods):
            continue
        common = collections.Counter(true.values()).most_common(1)[0][0]
        if common == 0:
            continue  # alpha 0 switches a module off; folding cannot express ratios to it
        for m in mods:
            up_key = f"{m.name}.lora_up.weight"
            if true[m.name] != common and up_key in source:
                source[up_key] = source[up_key] * (true[m.name] / common)
            source[f"{m.name}.alpha"] = torch.tensor(common, dtype=torch.float32)
        logger.info(
            "%s: %s alphas differ per module; folded into lora_up for diffusers", lora.path, component
        )


def load_lora_file(pipe: Any, lora: LoraFile, adapter_name: str, hotswap: bool = False) -> None:
    """Load a cached LoraFile with diffusers exactly as `load_lora_weights(path)` would.

    Without re-reading the file: diffusers only reads `lora_adapter_metadata` (alpha != rank) from
    a file path; with an in-memory dict it is lost. So, for this one call, the pipeline's own
    `lora_state_dict` is wrapped to return the metadata we already parsed; everything else is
    diffusers' own code path, for every pipeline class that has `load_lora_weights`.
    Not transactional: callers roll back on error.
    """
    # A hotswap copies into the existing adapter's tensors (never adopts ours): no clone needed.
    state_dict, metadata = pipeline_state_dict(pipe, lora, copy=not hotswap)
    kwargs = {"hotswap": True} if hotswap else {}  # into the existing adapter `adapter_name`'s layers
    with DIFFUSERS_PATCH_LOCK, _offloading_checked_once():
        if metadata is None:
            pipe.load_lora_weights(state_dict, adapter_name=adapter_name, **kwargs)
            return
        original = type(pipe).lora_state_dict

        def lora_state_dict_with_metadata(sd, **kwargs):
            out = original(sd, **kwargs)
            if kwargs.get("return_lora_metadata") and isinstance(out, tuple) and out[-1] is None:
                out = (*out[:-1], metadata)
            return out

        pipe.lora_state_dict = lora_state_dict_with_metadata
        try:
            pipe.load_lora_weights(state_dict, adapter_name=adapter_name, **kwargs)
        finally:
            del pipe.lora_state_dict


# Held while a diffusers/peft module global is swapped for one call (here and in reconcile), so two
# engines loading in two threads cannot interleave their swaps and leave a stale one in place.
DIFFUSERS_PATCH_LOCK = threading.RLock()

# The diffusers modules that look up `_func_optionally_disable_offloading` as a global.
_OFFLOAD_CHECKERS = ("diffusers.loaders.lora_base", "diffusers.loaders.peft", "diffusers.loaders.unet")


@contextlib.contextmanager
def _offloading_checked_once():
    """Within one load, diffusers checks each model for accelerate/group offloading hooks again (a
    walk over every module of every component, ~6 ms at SD1.5 size, once per component loaded).
    A check that found none removed nothing, so its answer holds for the rest of the load: later
    checks return it. A check that found hooks runs every time, as diffusers does."""
    import importlib

    modules = [importlib.import_module(m) for m in _OFFLOAD_CHECKERS]
    real = getattr(modules[0], "_func_optionally_disable_offloading", None)
    if real is None:  # another diffusers version: its own checks, unchanged
        yield
        return
    none_found: list[bool] = []

    def checked_once(_pipeline):
        if none_found:
            return (False, False, False)
        out = real(_pipeline)
        if not any(out):
            none_found.append(True)
        return out

    patched = [m for m in modules if getattr(m, "_func_optionally_disable_offloading", None) is real]
    for m in patched:
        m._func_optionally_disable_offloading = checked_once
    try:
        yield
    finally:
        for m in patched:
            m._func_optionally_disable_offloading = real


@dataclasses.dataclass(frozen=True)
class UnmatchedModule:
    component: str
    module: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Coverage:
    """How many of a file's LoRA modules land on a pipeline, per component, and why the rest don't.

    The reconciler refuses a file where nothing lands (`require`) and warns on a partial match;
    shape mismatches are fatal because diffusers itself raises on them.
    """

    file: str
    pipeline: str
    matched: int
    unmatched: tuple[UnmatchedModule, ...]
    per_component: Mapping[str, Mapping[str, int]]  # {component: {"matched": n, "unmatched": m}}
    # {component: {module: rank}} of the modules that land; `plain`: nothing but lora_A/lora_B
    # weights (no DoRA magnitude, no LoRA bias), so peft's hotswap can take the file's layers.
    layout: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)
    plain: bool = False

    @property
    def total(self) -> int:
        return self.matched + len(self.unmatched)

    @property
    def landed_fraction(self) -> float:
        return self.matched / self.total if self.total else 0.0

    @property
    def shape_mismatches(self) -> tuple[UnmatchedModule, ...]:
        return tuple(u for u in self.unmatched if u.reason.startswith("shape mismatch"))

    @property
    def complete(self) -> bool:
        return self.total > 0 and not self.unmatched

    @property
    def loadable(self) -> bool:
        """Whether diffusers would load it at all: something lands and no shape contradicts."""
        return self.matched > 0 and not self.shape_mismatches

    def message(self) -> str:
        return coverage_message(self)

    def require(self) -> None:
        """Raise LoraFileError when diffusers would fail or load nothing (wrong base model, ...)."""
        if not self.loadable:
            raise LoraFileError(coverage_message(self))

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "pipeline": self.pipeline,
            "matched": self.matched,
            "total": self.total,
            "landed_fraction": self.landed_fraction,
            "per_component": {k: dict(v) for k, v in self.per_component.items()},
            "unmatched": [dataclasses.asdict(u) for u in self.unmatched],
        }


def coverage_message(cov: Coverage) -> str:
    """One readable paragraph: what landed, what didn't and why, with a few examples."""
    name = Path(cov.file).name
    landed = ", ".join(f"{c} {v['matched']}" for c, v in cov.per_component.items() if v["matched"])
    if cov.total == 0:
        return f"{name}: holds no LoRA modules diffusers can place on this {cov.pipeline}"
    if cov.complete:
        return f"{name}: all {cov.total} LoRA modules land on this {cov.pipeline} ({landed})"
    groups: dict[tuple[str, str], list[tuple[str, str]]] = collections.defaultdict(list)
    for u in cov.unmatched:
        groups[(u.component, u.reason.split(":", 1)[0])].append((u.module, u.reason))
    parts = []
    for (component, kind), items in groups.items():
        reasons = {r for _, r in items}
        if len(reasons) == 1:  # one reason for the whole group: say it once
            shown = "; ".join(m for m, _ in items[:2]) + ("; ..." if len(items) > 2 else "")
            parts.append(f"{component}: {len(items)} {reasons.pop()} (e.g. {shown})")
        else:
            shown = "; ".join(f"{m} ({r})" for m, r in items[:2]) + ("; ..." if len(items) > 2 else "")
            parts.append(f"{component}: {len(items)} {kind} (e.g. {shown})")
    head = (
        f"{name}: none of its {cov.total} LoRA modules land on this {cov.pipeline}"
        if cov.matched == 0
        else f"{name}: only {cov.matched} of {cov.total} LoRA modules land on this {cov.pipeline} ({landed})"
    )
    tail = ""
    if cov.shape_mismatches or cov.matched == 0:
        tail = " - it was probably made for another base model; diffusers cannot load it here"
    return f"{head}; not landing: {' | '.join(parts)}{tail}"


def _converted_for_component(
    pipe: Any, component: str, state_dict: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The component's keys converted exactly as diffusers' loader would, to PEFT names."""
    from diffusers.utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    if not state_dict:
        return state_dict
    if component in DENOISERS:
        # As ModelMixin.load_lora_adapter: convert unless the first key is already PEFT.
        first = next(iter(state_dict))
        return state_dict if "lora_A" in first else convert_unet_state_dict_to_peft(state_dict)
    # As lora_base._load_lora_into_text_encoder.
    converted = convert_state_dict_to_peft(convert_state_dict_to_diffusers(state_dict))
    if not hasattr(getattr(pipe, component), "text_model"):
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    return converted


def _layer_fits(layer: torch.nn.Module, a: torch.Tensor, b: torch.Tensor | None) -> str | None:
    """None when lora_A/lora_B fit the layer, else the reason they don't."""
    base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
    n_in = getattr(base, "in_features", None) or getattr(base, "in_channels", None)
    n_out = getattr(base, "out_features", None) or getattr(base, "out_channels", None)
    if n_in is None or n_out is None:
        return f"not a layer LoRA can adapt: {type(base).__name__}"
    lora_in = int(a.shape[1]) if a.ndim >= 2 else None
    lora_out = int(b.shape[0]) if b is not None and b.ndim >= 1 else None
    if b is None:
        return "lora_B (up) matrix missing"
    if b.ndim >= 2 and a.ndim >= 1 and b.shape[1] != a.shape[0]:
        return f"lora_A/lora_B ranks differ ({a.shape[0]} vs {b.shape[1]})"
    if lora_in != n_in or lora_out != n_out:
        return f"shape mismatch: lora expects (in,out)=({lora_in},{lora_out}), layer has ({n_in},{n_out})"
    return None


def coverage(pipe: Any, lora: LoraFile) -> Coverage:
    """Which of the file's LoRA modules would land on `pipe`, per component; nothing is changed.

    Uses diffusers' own `lora_state_dict` (kohya and old-format conversion) and the same key
    converters as `load_lora_into_unet` / `_load_lora_into_text_encoder`, then checks each
    `<module>.lora_A.weight` against the live module and its shapes.
    """
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin

    cls = type(pipe)
    if not hasattr(cls, "lora_state_dict"):
        raise LoraFileError(f"{lora.path}: {cls.__name__} does not take LoRAs")
    source, _ = pipeline_state_dict(pipe, lora, copy=False)
    kwargs = {}
    if isinstance(pipe, StableDiffusionXLLoraLoaderMixin):
        kwargs["unet_config"] = pipe.unet.config  # as its load_lora_weights does
    try:
        out = cls.lora_state_dict(source, **kwargs)
    except Exception as e:  # diffusers raises ValueError/KeyError/... on keys it cannot convert
        raise LoraFileError(
            f"{lora.path}: diffusers cannot convert this {lora.format} LoRA for {cls.__name__} "
            f"({type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else e!r})"
        ) from e
    converted = out[0] if isinstance(out, tuple) else out
    loadable = [
        c for c in getattr(cls, "_lora_loadable_modules", DENOISERS) if getattr(pipe, c, None) is not None
    ]

    unmatched: list[UnmatchedModule] = []
    per: dict[str, dict[str, int]] = {}
    layout: dict[str, dict[str, int]] = {}
    plain = True
    matched = 0
    claimed: set[str] = set()
    for component in loadable:
        part = {k[len(component) + 1 :]: v for k, v in converted.items() if k.startswith(f"{component}.")}
        claimed |= {f"{component}.{k}" for k in part}
        if not part:
            continue
        counts = per.setdefault(component, {"matched": 0, "unmatched": 0})
        try:
            peft_keys = _converted_for_component(pipe, component, part)
        except ValueError as e:
            for module in sorted({_module_of(k) for k in part}):
                unmatched.append(UnmatchedModule(component, module, f"keys diffusers cannot convert: {e}"))
                counts["unmatched"] += 1
            continue
        model = getattr(pipe, component)
        for key, a in peft_keys.items():
            m = re.match(r"^(.+)\.lora_A(?:\.[^.]+)?\.weight$", key)
            if m is None:
                plain = plain and bool(re.search(r"\.lora_B(?:\.[^.]+)?\.weight$", key))
                continue
            module = m.group(1)
            b = peft_keys.get(key.replace(".lora_A", ".lora_B"))
            try:
                layer = model.get_submodule(module)
                reason = _layer_fits(layer, a, b)
            except AttributeError:
                reason = "no such module"
            if reason is None:
                matched += 1
                counts["matched"] += 1
                layout.setdefault(component, {})[module] = int(a.shape[0])
            else:
                unmatched.append(UnmatchedModule(component, module, reason))
                counts["unmatched"] += 1
    leftover = [k for k in converted if k not in claimed]
    for module in sorted({_module_of(k) for k in leftover}):
        component = module.split(".", 1)[0]
        reason = (
            f"no such component: {cls.__name__} has no {component}"
            if component in COMPONENTS
            else "no component prefix this pipeline loads (diffusers ignores it)"
        )
        per.setdefault(component, {"matched": 0, "unmatched": 0})["unmatched"] += 1
        unmatched.append(UnmatchedModule(component, module, reason))
    return Coverage(
        file=lora.path,
        pipeline=cls.__name__,
        matched=matched,
        unmatched=tuple(unmatched),
        per_component=types.MappingProxyType(per),
        layout=types.MappingProxyType({c: types.MappingProxyType(v) for c, v in layout.items()}),
        plain=plain,
    )


def _module_of(key: str) -> str:
    m = _DOWN_RE.match(key)
    if m:
        return m.group("module")
    return re.sub(
        r"(\.lora_[AB](\.[^.]+)?|\.lora_(down|up)|\.lora(_linear_layer)?\.(down|up)|_lora\.(down|up))"
        r"\.weight$|\.alpha$|\.weight$",
        "",
        key,
    )

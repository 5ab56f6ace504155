"""The store of LoRA files: content-addressed, hashed in threads, each content parsed once.

A LoRA file is read, hashed and parsed once and then shared: the graph may name the same file from
many nodes and re-run every time a widget changes, and `IS_CHANGED` asks for the file's hash on
every queue. So parsed files are cached by content hash, behind a cheap stat index (`StatKey`).
The cache's bound comes from the engine configuration (`lora_cache_bytes`), read on first use.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

from . import lora_file
from .config import DEFAULT_LORA_CACHE_BYTES, get_config
from .lora_file import LORA_SUFFIXES, SAFETENSORS_SUFFIXES, LoraFile, LoraFileError

logger = logging.getLogger(__name__)

# (realpath, size, mtime_ns, ctime_ns, inode, device): what a file's content is known by without
# reading it. mtime alone is not enough: `cp -p`, rsync and restores put the old mtime back on new
# bytes of the same size; ctime is set by the kernel on every write and every utime and no call sets
# it back, and the inode changes when a new file is renamed over the old one (docs/CONTRACT.md).
StatKey = tuple[str, int, int, int, int, int]

# Kept under this name: tests and callers reset the bound to the default.
DEFAULT_CACHE_BYTES = DEFAULT_LORA_CACHE_BYTES
# The stat key -> hash index is tiny per entry; the cap only stops unbounded growth.
_MAX_STAT_ENTRIES = 4096
# Read files in 1 MiB chunks: large enough for full disk throughput, small enough to stay flat in RAM.
_CHUNK = 1024 * 1024


class _Cache:
    """`StatKey` -> hashes, and sha256 -> LoraFile (LRU, bounded by total bytes)."""

    def __init__(self, max_bytes: int) -> None:
        self.lock = threading.RLock()
        self.max_bytes = max_bytes
        self.by_stat: collections.OrderedDict[StatKey, tuple[str, str | None]] = (
            collections.OrderedDict()
        )
        self.by_hash: collections.OrderedDict[str, LoraFile] = collections.OrderedDict()
        self.bytes = 0
        self.stats: collections.Counter[str] = collections.Counter()

    def remember_hash(self, key: StatKey, hashes: tuple[str, str | None]) -> None:
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


_CACHE: _Cache | None = None
_CACHE_LOCK = threading.Lock()


def _cache() -> _Cache:
    """The process-wide cache, made on first use with the configured bound."""
    global _CACHE
    if _CACHE is None:
        with _CACHE_LOCK:
            if _CACHE is None:
                _CACHE = _Cache(get_config().lora_cache_bytes)
    return _CACHE


def lora_cache_stats() -> dict[str, int]:
    """Counters for tests and diagnostics: parses (full reads), hash_reads, hits, entries, bytes."""
    with _cache().lock:
        return {
            "parses": _cache().stats["parses"],
            "hash_reads": _cache().stats["hash_reads"],
            "hits": _cache().stats["hits"],
            "evictions": _cache().stats["evictions"],
            "entries": len(_cache().by_hash),
            "bytes": _cache().bytes,
            "max_bytes": _cache().max_bytes,
        }


def clear_lora_cache() -> None:
    """Forget every parsed file and hash (tests; or after the user replaced many files)."""
    with _cache().lock:
        _cache().by_stat.clear()
        _cache().by_hash.clear()
        _cache().bytes = 0
        _cache().stats.clear()


def set_lora_cache_limit(max_bytes: int) -> None:
    """Change the cache bound (total file bytes kept parsed); evicts at once if now over it."""
    with _cache().lock:
        _cache().max_bytes = int(max_bytes)
        _cache().evict()


def _stat_key(path: Path) -> StatKey:
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError as e:
        raise LoraFileError(f"{path}: cannot open the LoRA file ({e.strerror or e})") from e
    if not os.path.isfile(real):
        raise LoraFileError(f"{path}: not a file")
    return real, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev


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


def _hashes(path: str | os.PathLike) -> tuple[StatKey, str, str | None]:
    key = _stat_key(Path(path))
    with _cache().lock:
        known = _cache().by_stat.get(key)
        if known is not None:
            _cache().by_stat.move_to_end(key)
            return key, known[0], known[1]
    # The name decides the format: HF-cache style symlinks point at suffix-less blobs.
    named_st = str(path).lower().endswith(SAFETENSORS_SUFFIXES) or key[0].lower().endswith(
        SAFETENSORS_SUFFIXES
    )
    sha, addnet = _hash_file(key[0], named_st)
    with _cache().lock:
        _cache().stats["hash_reads"] += 1
        _cache().remember_hash(key, (sha, addnet))
    return key, sha, addnet


def file_sha256(path: str | os.PathLike) -> str:
    """The file's sha256, from the cache when its stat key (path, size, mtime, ctime, inode) is unchanged.

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
        with _cache().lock:
            known = _cache().by_stat.get(key)
        if known is not None:  # hashed before: the content cache may have it parsed already
            cached = _cached_content(known[0], path)
            if cached is not None:
                return cached
            tensors, metadata = lora_file.load(key[0], str(path))
            key_seen, lora = key, lora_file.build(str(path), known[0], known[1], key[1], tensors, metadata)
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
        with _cache().lock:
            _cache().stats["parses"] += 1
            kept = _cache().put(lora)
        return kept if kept.path == lora.path else dataclasses.replace(kept, path=lora.path)
    raise LoraFileError(f"{path}: the file keeps changing while it is read; try again when it is written")


def _cached_content(sha: str, path: Path) -> LoraFile | None:
    with _cache().lock:
        cached = _cache().get(sha)
        if cached is None:
            return None
        _cache().stats["hits"] += 1
    if cached.path == str(path):
        return cached
    # Same content under another name: share the parsed tensors, report this path.
    return dataclasses.replace(cached, path=str(path))


def _hash_while_parsing(path: Path, key: StatKey) -> tuple[StatKey, LoraFile]:
    """(the stat key hashed, the LoraFile): `_hashes` in a thread, `_load` + `_build` in this one."""

    def parse():
        tensors, metadata = lora_file.load(key[0], str(path))
        return lora_file.build(str(path), "", None, key[1], tensors, metadata)

    (key_seen, sha, addnet), lora = _beside(lambda: _hashes(path), parse)
    return key_seen, dataclasses.replace(lora, sha256=sha, addnet_hash=addnet)


def _beside(background, foreground):
    """(background(), foreground()): the first in a thread while the second runs here. An error in
    the foreground wins (reading the tensors says more about a bad file than hashing it)."""
    out: dict[str, Any] = {}

    def run():
        try:
            out["value"] = background()
        except BaseException as e:  # re-raised in the caller's thread
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



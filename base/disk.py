"""Every file loragraph writes goes through here: whole files only, unique names, the umask's mode.

One rule for PNGs (SaveImage), LoRAs (SaveLoRA, the kohya writer), uploads, the editor's user files
and the built-in models' caches:

- **Whole files.** The bytes go to a hidden temp file in the target folder (``.lg-tmp-*``), which is
  then renamed or linked to its name, so a reader never sees half a file. Temp files are dot files:
  every listing hides them (``visible``), and ``clean_stale_temps`` removes the ones a killed process
  left behind.
- **No lost files.** ``write_new`` never replaces a file: the finished temp file is *linked* to the
  name (``link`` fails if the name exists), and on a clash the next counter is tried. Two processes
  saving ``ComfyUI_00001_.png`` into one folder get 00001 and 00002 instead of one overwriting the
  other (choosing the counter from a listing, as ComfyUI does, is only the first guess).
- **The mode the umask allows.** The temp file is created with ``0o666 & ~umask`` (0644 under umask
  022), as ``open()`` would; ``mkstemp``'s 0600 would survive the rename.

Folder walks (``walk``) follow symlinks, as listings of model folders must, but visit each real
folder once, so a ``loop -> .`` link cannot make them run forever.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

TEMP_PREFIX = ".lg-tmp-"
# Exactly the names `_new_temp` makes (the prefix, 12 random hex digits, the target's suffix); no new
# file is given one (`_own_name`; the upload and /userdata routes refuse them too). So the cleaner
# removes only what a loragraph save left, never a user's `.lg-tmp-*` or `.tmp-*` file
# (docs/CONTRACT.md, "Temp files").
_TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + r"[0-9a-f]{12}(\.[^./\\]*)?\Z")
# A temp file is only written for the seconds a save takes; one untouched for an hour was left by a
# process that died (an hour is far above the slowest save, a multi-GB LoRA on a slow disk).
STALE_AFTER_S = 3600.0
_MAX_TRIES = 10_000  # distinct names tried by write_new before giving up (a counter range, not a retry loop)

Writer = Callable[[str], None]  # writes the file's content to the path it is given


def stat_identity(st: os.stat_result) -> str:
    """A file's identity for cache keys: size and mtime alone miss a same-size rewrite that keeps the
    mtime (`cp -p`, rsync, a restore); the ctime changes on every write, the inode on a replace."""
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{st.st_dev}"


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one our saves give their temp files."""
    return _TEMP_NAME.match(name) is not None


def _own_name(path: Path) -> Path:
    """``path``, refused (ValueError) when its name is one kept for temp files: the cleaner would
    take such a file for a killed save's."""
    if is_temp_name(path.name):
        raise ValueError(f"{path.name!r} is a name loragraph keeps for its temp files")
    return path


def visible(name: str) -> bool:
    """Whether a listing should show the file ``name``: not a dot file (temp files are dot files)."""
    return not name.startswith(".")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _new_temp(folder: Path, suffix: str) -> Path:
    """An empty temp file in ``folder``, created exclusively with the mode the umask allows."""
    for _ in range(100):
        tmp = folder / f"{TEMP_PREFIX}{secrets.token_hex(6)}{suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temp file name", str(folder))


def _written(folder: Path, suffix: str, write: Writer | bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(folder, suffix)
    try:
        if isinstance(write, (bytes, bytearray, memoryview)):
            with open(tmp, "wb") as f:
                f.write(write)
        else:
            write(str(tmp))
        # Whatever the writer did (some libraries write a new file and rename it over ours), the
        # finished file gets the mode the umask allows.
        os.chmod(tmp, 0o666 & ~_umask())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_file(path: str | os.PathLike, write: Writer | bytes) -> Path:
    """Write ``path`` whole (temp file, then rename over it): for files that are meant to be replaced.

    ``path`` may be a temp file of ours (a writer handed one by ``write_new``); the routes that take
    a user's name refuse temp names themselves.
    """
    path = Path(path)
    tmp = _written(path.parent, path.suffix, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_exclusive(path: str | os.PathLike, write: Writer | bytes) -> bool:
    """Write ``path`` whole unless it exists; False (nothing written) when it does.

    The check and the naming are one atomic step (`_claim`), so of two concurrent writers exactly
    one gets the name: `exists()` then write would let both through.
    """
    path = _own_name(Path(path))
    tmp = _written(path.parent, path.suffix, write)
    try:
        return _claim(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def move_exclusive(source: str | os.PathLike, dest: str | os.PathLike) -> bool:
    """Rename ``source`` to ``dest`` unless ``dest`` exists; False (nothing moved) when it does."""
    source, dest = Path(source), Path(dest)
    if not _claim(source, dest):
        return False
    source.unlink(missing_ok=True)  # _claim's fallback (no hard links) already renamed it
    return True


def _claim(tmp: Path, path: Path) -> bool:
    """Give the finished ``tmp`` the name ``path`` unless that name exists; True when it did."""
    try:
        os.link(tmp, path)  # atomic and exclusive: fails with EEXIST, never replaces
    except FileExistsError:
        return False
    except OSError as ex:
        if ex.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
            raise
        # A file system without hard links (FAT, some network shares): reserve the name with an
        # exclusive create, then rename the finished file onto the reservation.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        os.close(fd)
        os.replace(tmp, path)
        return True
    tmp.unlink(missing_ok=True)
    return True


def write_new(
    folder: str | os.PathLike, name_for: Callable[[int], str], first: int, write: Writer | bytes
) -> tuple[Path, int]:
    """Write a new file named ``name_for(n)`` for the first ``n >= first`` whose name is free.

    Returns ``(path, n)``. The content is written once; only the name is retried, so a name taken
    between choosing and writing (another process saving into the same folder) costs nothing.
    """
    folder = Path(folder)
    suffix = Path(name_for(first)).suffix
    tmp = _written(folder, suffix, write)
    try:
        for n in range(first, first + _MAX_TRIES):
            path = _own_name(folder / name_for(n))
            if _claim(tmp, path):
                return path, n
        raise FileExistsError(errno.EEXIST, f"no free name from {name_for(first)!r} on", str(folder))
    finally:
        tmp.unlink(missing_ok=True)


def walk(root: str | os.PathLike) -> Iterator[tuple[str, list[str]]]:
    """``(dirpath, visible file names)`` for ``root`` and its visible subfolders, symlinks followed,
    each real folder once (a symlink loop, or two links to one folder, is walked once)."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if visible(d))
        yield dirpath, sorted(f for f in filenames if visible(f))


def clean_stale_temps(folders: Iterable[str | os.PathLike], older_than_s: float = STALE_AFTER_S) -> int:
    """Remove our temp files untouched for ``older_than_s`` from ``folders`` and their subfolders.

    Run when the server or a ``run`` starts: a process killed while it saved left them behind.
    Returns how many were removed. Symlinked subfolders are not entered (we only write real folders).
    """
    removed = 0
    cutoff = time.time() - older_than_s
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for dirpath, _dirnames, filenames in os.walk(folder):
            for name in filenames:
                if not is_temp_name(name):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    if os.lstat(path).st_mtime < cutoff:
                        os.unlink(path)
                        removed += 1
                except OSError:  # gone already, or not ours to remove
                    continue
    if removed:
        logger.info("removed %d temp file(s) left by an interrupted save", removed)
    return removed


def writable_folder_problem(folder: str | os.PathLike) -> str | None:
    """Why files cannot be written into ``folder`` (created if missing), or None when they can.

    Tried for real: folders are created, a probe file written and removed, and the folders this made
    removed again, so a check before a run leaves the disk as it was (permission bits say nothing
    for root, nor on /proc or a read-only mount).
    """
    with _PROBE_LOCK:
        return _writable_folder_problem(Path(os.path.abspath(folder)))


# One probe at a time: the server validates concurrent prompts in threads, and one check removing the
# folder it created while another creates it made that mkdir fail with "File exists".
_PROBE_LOCK = threading.Lock()


def _writable_folder_problem(path: Path) -> str | None:
    missing: list[Path] = []
    probe_root = path
    while not probe_root.exists():
        missing.append(probe_root)
        if probe_root.parent == probe_root:
            break
        probe_root = probe_root.parent
    if probe_root.exists() and not probe_root.is_dir():
        return f"{probe_root} is a file, not a folder"
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".probe", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"cannot write into {path}: {e.strerror or e}"
    finally:
        for created in missing:
            with contextlib.suppress(OSError):
                created.rmdir()
    return None

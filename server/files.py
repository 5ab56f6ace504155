"""``GET /view`` and ``POST /upload/image``: files of the input, output and temp folders, and nothing else.

Same parameters, answers and status codes as ComfyUI's ``server.py`` (400 for a bad name or type,
403 for a subfolder that leaves its folder, 404 for no such file), with one check more: the file's
real path (symlinks followed) must lie inside the folder's real path, so a symlink in the output
folder cannot serve ``/etc/passwd``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mimetypes
import os
import tempfile
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

from aiohttp import web

logger = logging.getLogger(__name__)

FOLDER_TYPES = ("output", "input", "temp")
# Served as a download, never rendered: a PNG named x.html must not run script in the page's origin.
_DOWNLOAD_ONLY = {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript",
                  "text/css", "application/javascript", "image/svg+xml"}

FolderLookup = Callable[[str], Path | None]  # folder type -> folder, None if unknown


def annotated_filepath(name: str) -> tuple[str, str | None]:
    """ComfyUI's ``"x.png [output]"`` form: the name and the folder type it names, if any."""
    for kind in FOLDER_TYPES:
        suffix = f"[{kind}]"
        if name.endswith(suffix):
            return name[: -len(suffix)].rstrip(" "), kind
    return name, None


def inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` lies in ``folder`` once both are resolved (``..`` and symlinks followed)."""
    real_folder = os.path.realpath(folder)
    real_path = os.path.realpath(path)
    try:
        return os.path.commonpath((real_folder, real_path)) == real_folder
    except ValueError:  # different drives on Windows
        return False


def _bad_name(name: str) -> bool:
    return (not name or "\x00" in name or name[0] in "/\\" or ".." in name
            or (len(name) > 1 and name[1] == ":"))


async def view(request: web.Request, folder_of: FolderLookup) -> web.StreamResponse:
    """ComfyUI's ``/view``: ``filename``, ``subfolder``, ``type``; ``preview`` and ``channel`` too."""
    query = request.rel_url.query
    if "filename" not in query:
        return web.Response(status=404)
    filename, annotated = annotated_filepath(query["filename"])
    if _bad_name(filename):
        return web.Response(status=400, text="bad filename")
    kind = annotated or query.get("type", "output")
    base = folder_of(kind)
    if base is None:
        return web.Response(status=400, text=f"unknown type {kind!r}; one of {', '.join(FOLDER_TYPES)}")
    base_dir = os.path.abspath(base)
    folder = base_dir
    subfolder = query.get("subfolder", "")
    if subfolder:
        if "\x00" in subfolder:
            return web.Response(status=400, text="bad subfolder")
        folder = os.path.abspath(os.path.join(base_dir, subfolder))
        if os.path.commonpath((folder, base_dir)) != base_dir:
            return web.Response(status=403)
    filename = os.path.basename(filename)
    file = os.path.join(folder, filename)
    if not os.path.isfile(file):
        return web.Response(status=404)
    if not inside(file, base_dir):
        logger.warning("refused /view of %s: it leads out of the %s folder", file, kind)
        return web.Response(status=403)

    disposition = {"Content-Disposition": f'filename="{filename}"'}
    channel = query.get("channel", "")  # ComfyUI: absent means rgba
    if "preview" in query or channel in ("rgb", "a"):
        try:
            body, content_type = await asyncio.to_thread(_converted, file, query.get("preview"), channel)
        except OSError as ex:  # not an image PIL can read
            return web.Response(status=400, text=f"cannot convert {filename}: {ex}")
        return web.Response(body=body, content_type=content_type, headers=disposition)
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if content_type in _DOWNLOAD_ONLY:
        content_type = "application/octet-stream"
    return web.FileResponse(file, headers={**disposition, "Content-Type": content_type})


def _converted(file: str, preview: str | None, channel: str) -> tuple[bytes, str]:
    """ComfyUI's ``preview=webp;90`` / ``channel=rgb|a`` conversions."""
    from PIL import Image

    buffer = BytesIO()
    with Image.open(file) as img:
        if preview is not None:
            parts = preview.split(";")
            fmt = parts[0] if parts[0] in ("webp", "jpeg") and "a" not in channel else "webp"
            quality = int(parts[-1]) if parts[-1].isdigit() else 90
            out = img.convert("RGB") if fmt == "jpeg" or channel == "rgb" else img
            out.save(buffer, format=fmt, quality=quality)
            return buffer.getvalue(), f"image/{fmt}"
        if channel == "rgb":
            img.convert("RGB").save(buffer, format="PNG")
        else:
            alpha = img.getchannel("A") if img.mode == "RGBA" else Image.new("L", img.size, 255)
            out = Image.new("RGBA", img.size)
            out.putalpha(alpha)
            out.save(buffer, format="PNG")
    return buffer.getvalue(), "image/png"


async def upload_image(request: web.Request, folder_of: FolderLookup) -> web.Response:
    """ComfyUI's ``/upload/image``: multipart ``image``, ``overwrite``, ``subfolder``, ``type`` (default input).

    A name already taken gets ``name (1).png`` unless ``overwrite`` is true, or unless the file
    there has the same bytes (then that name is answered and nothing is written).
    """
    post = await request.post()
    image = post.get("image")
    kind = str(post.get("type") or "input")
    base = folder_of(kind)
    if base is None:
        return web.Response(status=400, text=f"unknown type {kind!r}; one of {', '.join(FOLDER_TYPES)}")
    if not isinstance(image, web.FileField) or not image.filename:
        return web.Response(status=400, text="expected a multipart file field 'image'")
    filename = image.filename
    if _bad_name(filename) or os.path.basename(filename) != filename or filename in (".", ".."):
        return web.Response(status=400, text="bad filename")
    base_dir = os.path.abspath(base)
    subfolder = str(post.get("subfolder") or "")
    if "\x00" in subfolder:
        return web.Response(status=400, text="bad subfolder")
    folder = os.path.abspath(os.path.join(base_dir, os.path.normpath(subfolder)))
    if os.path.commonpath((base_dir, folder)) != base_dir:
        return web.Response(status=400, text="subfolder leaves the folder")
    overwrite = str(post.get("overwrite", "")).lower() in ("true", "1")
    data = image.file.read()
    try:
        name = await asyncio.to_thread(_store, base_dir, folder, filename, data, overwrite)
    except PermissionError:
        logger.warning("refused upload to %s/%s: it leads out of the %s folder", folder, filename, kind)
        return web.Response(status=403)
    return web.json_response({"name": name, "subfolder": subfolder, "type": kind})


def _store(base_dir: str, folder: str, filename: str, data: bytes, overwrite: bool) -> str:
    os.makedirs(base_dir, exist_ok=True)
    if not _dirs_inside(folder, base_dir):
        raise PermissionError(folder)
    os.makedirs(folder, exist_ok=True)
    stem, ext = os.path.splitext(filename)
    path = os.path.join(folder, filename)
    if not overwrite:
        digest = hashlib.sha256(data).hexdigest()
        i = 1
        while os.path.lexists(path):
            if os.path.isfile(path) and inside(path, base_dir) and _sha256(path) == digest:
                return filename  # the same image again: keep the one already there (ComfyUI #3465)
            filename = f"{stem} ({i}){ext}"
            path = os.path.join(folder, filename)
            i += 1
    if os.path.lexists(path) and not inside(path, base_dir):
        raise PermissionError(path)  # overwriting through a symlink that points outside
    fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # readers never see half a file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return filename


def _dirs_inside(folder: str, base_dir: str) -> bool:
    """The deepest existing part of ``folder`` must resolve inside ``base_dir`` (no symlinked subfolder)."""
    probe = folder
    while not os.path.exists(probe) and probe != os.path.dirname(probe):
        probe = os.path.dirname(probe)
    return inside(probe, base_dir)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()



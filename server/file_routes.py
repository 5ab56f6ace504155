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
import urllib.parse
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

from aiohttp import web
from aiohttp.http import HttpProcessingError

from ..base import disk

logger = logging.getLogger(__name__)

FOLDER_TYPES = ("output", "input", "temp")
# Served as a download, never rendered: a PNG named x.html must not run script in the page's origin.
_DOWNLOAD_ONLY = {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript",
                  "text/css", "application/javascript", "image/svg+xml"}

# Only media is shown inline; anything else (an uploaded .xml, .pdf, .txt) is a download, so no
# document a client uploaded can run script in this server's origin.
_INLINE_KINDS = ("image/", "video/", "audio/")
# /view answers are files, never pages: no script, no plugin, no fetch, in a sandbox of their own.
VIEW_CSP = "default-src 'none'; img-src 'self' data:; media-src 'self'; style-src 'unsafe-inline'; sandbox"
# preview= and channel= decode the image: refuse more pixels than 4096x4096 (a 1024x1024 render
# upscaled 4x), which decodes to 64 MB of RGBA in about a second. A bigger file is still served
# whole without preview=; a 12000x12000 PNG of zeros (140 KB) would otherwise take 1.5 GB and 8 s.
MAX_PREVIEW_PIXELS = 4096 * 4096
_MAX_NAME_BYTES = 255  # the longest file name (one path component) common file systems take

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
            or (len(name) > 1 and name[1] == ":") or _too_long(name))


def _too_long(path: str) -> bool:
    """A path component longer than a file system takes (the OS would answer ENAMETOOLONG: a 500)."""
    parts = path.replace("\\", "/").split("/")
    return any(len(part.encode("utf-8", "surrogatepass")) > _MAX_NAME_BYTES for part in parts)


def _disposition(kind: str, filename: str) -> str:
    """``inline`` / ``attachment`` with the name in both forms (RFC 6266): no quote or newline gets
    through."""
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{urllib.parse.quote(filename, safe='')}"


class BadPreview(ValueError):
    """A ``preview=`` / ``channel=`` this server will not convert (answered with 400)."""


def _preview_spec(preview: str | None, channel: str) -> tuple[str, int] | None:
    """ComfyUI's ``preview=webp;90``: (format, quality), None without preview=; BadPreview for a quality
    outside 0..100 or an unknown channel."""
    if channel not in ("", "rgba", "rgb", "a"):
        raise BadPreview(f"channel must be rgba, rgb or a, got {channel!r}")
    if preview is None:
        return None
    parts = preview.split(";")
    # As ComfyUI: an unknown format is webp, a quality that is not a number is 90.
    fmt = parts[0] if parts[0] in ("webp", "jpeg") else "webp"
    last, quality = parts[-1], 90
    if last.isascii() and last.isdigit():
        if len(last) > 3 or int(last) > 100:
            raise BadPreview(f"preview quality must be 0..100, got {last[:20]!r}")
        quality = int(last)
    return fmt, quality


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

    channel = query.get("channel", "")  # ComfyUI: absent means rgba
    try:
        spec = _preview_spec(query.get("preview"), channel)
    except BadPreview as ex:
        return web.Response(status=400, text=str(ex))
    headers = {"Content-Security-Policy": VIEW_CSP}
    if spec is not None or channel in ("rgb", "a"):
        try:
            body, content_type = await asyncio.to_thread(_converted, file, spec, channel)
        except BadPreview as ex:
            return web.Response(status=400, text=str(ex))
        except (OSError, ValueError, SyntaxError) as ex:  # not an image PIL can read (SyntaxError: PIL's own)
            return web.Response(status=400, text=f"cannot convert {filename}: {ex}")
        headers["Content-Disposition"] = _disposition("inline", filename)
        return web.Response(body=body, content_type=content_type, headers=headers)
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    inline = content_type.startswith(_INLINE_KINDS) and content_type not in _DOWNLOAD_ONLY
    if content_type in _DOWNLOAD_ONLY:
        content_type = "application/octet-stream"
    headers["Content-Disposition"] = _disposition("inline" if inline else "attachment", filename)
    return web.FileResponse(file, headers={**headers, "Content-Type": content_type})


def _converted(file: str, spec: tuple[str, int] | None, channel: str) -> tuple[bytes, str]:
    """ComfyUI's ``preview=webp;90`` / ``channel=rgb|a`` conversions, for images up to MAX_PREVIEW_PIXELS."""
    from PIL import Image

    buffer = BytesIO()
    try:
        img = Image.open(file)  # reads the header only: the size is known before any decoding
    except Image.DecompressionBombError as ex:  # PIL's own refusal, above 2 x its MAX_IMAGE_PIXELS
        raise BadPreview(f"too large to convert ({ex})") from None
    with img:
        width, height = img.size
        if width * height > MAX_PREVIEW_PIXELS:
            raise BadPreview(f"{width}x{height} is too large to convert "
                             f"(at most {MAX_PREVIEW_PIXELS} pixels); fetch it without preview= or channel=")
        if spec is not None:
            fmt = spec[0] if "a" not in channel else "webp"
            out = img.convert("RGB") if fmt == "jpeg" or channel == "rgb" else img
            out.save(buffer, format=fmt, quality=spec[1])
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
    """ComfyUI's ``/upload/image``: multipart ``image``, ``overwrite``, ``subfolder``, ``type``
    (default input).

    A name already taken gets ``name (1).png`` unless ``overwrite`` is true, or unless the file
    there has the same bytes (then that name is answered and nothing is written).
    """
    try:
        post = await request.post()
    except web.HTTPException:
        raise  # 413: larger than the server takes
    # aiohttp's multipart parser: HttpProcessingError for a part's header lines (no colon, CR/LF
    # inside a value, longer than aiohttp's field limit), the others for the boundaries
    except (ValueError, AssertionError, RuntimeError, UnicodeDecodeError, HttpProcessingError) as ex:
        return web.Response(status=400, text=f"malformed multipart body: {type(ex).__name__}")
    image = post.get("image")
    kind = str(post.get("type") or "input")
    base = folder_of(kind)
    if base is None:
        return web.Response(status=400, text=f"unknown type {kind!r}; one of {', '.join(FOLDER_TYPES)}")
    if not isinstance(image, web.FileField) or not image.filename:
        return web.Response(status=400, text="expected a multipart file field 'image'")
    filename = image.filename
    if (_bad_name(filename) or os.path.basename(filename) != filename or filename in (".", "..")
            or disk.is_temp_name(filename)):  # the cleaner would take it for a killed save's temp file
        return web.Response(status=400, text="bad filename")
    base_dir = os.path.abspath(base)
    subfolder = str(post.get("subfolder") or "")
    if "\x00" in subfolder or _too_long(subfolder):
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
    if overwrite:
        if os.path.lexists(path) and not inside(path, base_dir):
            raise PermissionError(path)  # overwriting through a symlink that points outside
        disk.write_file(path, data)  # readers never see half a file
        return filename

    def name_for(n: int) -> str:
        return filename if n == 0 else f"{stem} ({n}){ext}"

    digest = hashlib.sha256(data).hexdigest()
    n = 0
    while os.path.lexists(os.path.join(folder, name_for(n))):
        taken = os.path.join(folder, name_for(n))
        if os.path.isfile(taken) and inside(taken, base_dir) and _sha256(taken) == digest:
            return name_for(n)  # the same image again: keep the one already there (as ComfyUI does: https://github.com/comfyanonymous/ComfyUI/issues/3465)
        n += 1
    # The free name found is reserved exclusively: two uploads of one name at once both survive.
    saved, _ = disk.write_new(folder, name_for, n, data)
    return saved.name


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



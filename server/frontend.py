"""The standalone visual editor: ComfyUI's own frontend, served by ``loragraph serve``.

The ``comfyui-frontend-package`` wheel (``pip install "loragraph[editor]"``) holds the built
frontend ComfyUI serves; its files live in ``<package>/static`` (ComfyUI's
``app/frontend_management.py``). With it installed, the server answers ``/`` with the editor and
adds the routes the frontend calls while it boots and while a user works, with ComfyUI's paths and
answers (``app/user_manager.py``, ``app/app_settings.py``, ``app/model_manager.py``,
``app/custom_node_manager.py``, ``api_server/routes/internal``):

- ``/users``, ``/settings``, ``/settings/{id}``: one user, ``default`` (ComfyUI without ``--multi-user``);
- ``/userdata?dir=``, ``/v2/userdata``, ``/userdata/{file}`` (GET/POST/DELETE) and ``.../move/{dest}``:
  saved workflows, settings, templates, kept under ``{user_dir}/default``;
- ``/i18n``, ``/workflow_templates``, ``/global_subgraphs``, ``/templates/index.json`` (empty unless
  the template package is installed), ``/experiment/models``, ``/view_metadata/{folder}``;
- ``/internal/logs``, ``/internal/folder_paths``, ``/internal/files/{type}``.

The frontend's extension system loads ``web/`` of this package from ``/extensions/loragraph/``, as
it does inside ComfyUI, so the editor shows the same widgets in both hosts.
"""

from __future__ import annotations

import asyncio
import glob
import importlib.resources
import importlib.util
import json
import logging
import mimetypes
import os
import urllib.parse
from pathlib import Path
from typing import Any

from aiohttp import web

from .. import host as host_seam
from ..base import disk, limits
from .file_routes import inside
from .http import Server, parse_json, read_limited

logger = logging.getLogger(__name__)

FRONTEND_PACKAGE = "comfyui_frontend_package"
TEMPLATES_PACKAGE = "comfyui_workflow_templates"
DEFAULT_USER = "default"
SETTINGS_FILE = "comfy.settings.json"
MODEL_KINDS = ("loras", "checkpoints", "diffusers")
# User files of these types are sent as downloads (user.css stays a stylesheet: the editor loads it).
SCRIPTABLE_TYPES = {"text/html", "application/xhtml+xml", "image/svg+xml", "text/javascript",
                    "application/javascript", "application/javascript; charset=utf-8", "text/xml",
                    "application/xml"}
INSTALL_HINT = 'pip install "loragraph[editor]"'
# What a new user of the headless editor starts with; anything they set overrides it. The tutorial
# flow would open ComfyUI's template browser, whose templates need ComfyUI's own nodes.
EDITOR_DEFAULT_SETTINGS: dict[str, Any] = {
    "Comfy.TutorialCompleted": True,
    # A local tool does not phone home: the frontend asks api.comfy.org for release notes (with this
    # server's version) unless this is off (its release store, frontend 1.33). Users may turn it on.
    "Comfy.Notification.ShowVersionUpdates": False,
}
# Files the editor asks for whether or not they exist; missing, they answer empty, not 404 (ComfyUI
# ships them or makes them at start; we make no file the user did not write).
EMPTY_USER_FOLDERS = {"workflows", "subgraphs"}
EMPTY_USER_FILES = {"user.css": ("", "text/css"), "comfy.templates.json": ("[]", "application/json")}


def _package_folder(package: str, sub: str) -> Path | None:
    """``<package>/<sub>`` of an installed package, without importing it when it is absent."""
    if importlib.util.find_spec(package) is None:
        return None
    folder = Path(str(importlib.resources.files(package) / sub))
    return folder if folder.is_dir() else None


def frontend_root() -> Path | None:
    """The built frontend's folder (holding ``index.html``), or None when the package is missing."""
    folder = _package_folder(FRONTEND_PACKAGE, "static")
    return folder if folder is not None and (folder / "index.html").is_file() else None


def frontend_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("comfyui-frontend-package")
    except PackageNotFoundError:
        return None


# -- one user's files ---------------------------------------------------------------------------


class UserFiles:
    """ComfyUI's single-user ``UserManager``: files of user ``default`` under ``{root}/default``.

    Every path a request names is confined to that folder (no ``..``, no absolute path, and no
    symlink out of it). Writes go to a temporary file that is then renamed over the target, so a
    reader never sees half a settings file.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve()
        self.user_root = self.root / DEFAULT_USER

    def path(self, relative: str | None) -> Path | None:
        """The file ``relative`` names in the user's folder; None when it would leave the folder."""
        if relative is None or relative == "":
            return self.user_root
        if "%" in relative:  # the frontend percent-encodes "/" in {file}; ComfyUI unquotes once
            relative = urllib.parse.unquote(relative)
        if "\x00" in relative:
            return None
        path = Path(os.path.abspath(self.user_root / relative))
        if disk.is_temp_name(path.name):  # kept for temp files: the cleaner would remove it
            return None
        if path == self.user_root or not inside(path, self.user_root):
            return None
        return path

    def settings(self) -> dict[str, Any]:
        file = self.user_root / SETTINGS_FILE
        if not file.is_file():
            return {}
        try:
            data = limits.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.error("the user settings file is corrupted: %s", file)
            return {}
        return data if isinstance(data, dict) else {}

    def save_settings(self, settings: dict[str, Any]) -> None:
        self.write(self.user_root / SETTINGS_FILE, json.dumps(settings, indent=4).encode())

    def write(self, path: Path, data: bytes, overwrite: bool = True) -> bool:
        """Write a user file; with ``overwrite=False`` only if the name is free (atomic). True if written."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if not inside(path.parent, self.user_root):  # a symlinked folder inside the user's folder
            raise PermissionError(str(path))
        if not overwrite:
            return disk.write_exclusive(path, data)
        disk.write_file(path, data)
        return True

    def info(self, path: Path, relative_to: Path) -> dict[str, Any]:
        stat = path.stat()
        return {"path": path.relative_to(relative_to).as_posix(), "size": stat.st_size,
                "modified": stat.st_mtime, "created": stat.st_ctime}


# -- the routes ---------------------------------------------------------------------------------


def _file_list(folder: Path, recurse: bool, full_info: bool, split: bool, users: UserFiles) -> list[Any]:
    if recurse:  # each real folder once: a symlink loop in the user's folder cannot hang the listing
        names = [os.path.join(d, f) for d, files in disk.walk(folder) for f in files]
    else:
        names = glob.glob(os.path.join(glob.escape(str(folder)), "*"))
    out: list[Any] = []
    for name in sorted(names):
        path = Path(name)
        if not path.is_file() or not disk.visible(path.name):
            continue
        if full_info:
            out.append(users.info(path, folder))
            continue
        rel = path.relative_to(folder).as_posix()
        out.append([rel, *rel.split("/")] if split else rel)
    return out


def _tree(folder: Path, base: Path) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for d in dirnames:
            entries.append({"name": d, "path": (Path(dirpath) / d).relative_to(base).as_posix(),
                            "type": "directory"})
        for f in filenames:
            if f.startswith(".userdata-"):
                continue
            file = Path(dirpath) / f
            entry: dict[str, Any] = {"name": f, "path": file.relative_to(base).as_posix(), "type": "file"}
            try:
                stat = file.stat()
                entry.update(size=stat.st_size, modified=stat.st_mtime)
            except OSError:
                pass
            entries.append(entry)
    entries.sort(key=lambda e: (e["type"] != "directory", e["name"].lower()))
    return entries




async def _read_json_value(request: web.Request, limit: int) -> tuple[Any, web.Response | None]:
    body = await read_limited(request, limit)
    if body is None:
        return None, web.Response(status=413, text=f"body larger than {limit} bytes")
    try:  # limits: no NaN (GET /settings would stop being JSON), no deep nesting, off the event loop
        return await parse_json(body), None
    except (ValueError, UnicodeDecodeError) as ex:
        return None, web.Response(status=400, text=f"body is not valid JSON: {ex}")


def build_editor_routes(server: Server, users: UserFiles) -> web.RouteTableDef:
    """The routes ComfyUI's frontend needs beyond the API that ``routes.py`` serves."""
    routes = web.RouteTableDef()
    json_limit = server.config.max_json_size
    file_limit = server.config.max_upload_size

    # users and settings (app/user_manager.py, app/app_settings.py), single-user

    @routes.get("/users")
    async def get_users(request: web.Request) -> web.Response:
        return web.json_response({"storage": "server", "migrated": users.user_root.is_dir()})

    @routes.post("/users")
    async def post_users(request: web.Request) -> web.Response:
        return web.json_response({"error": "this server has one user (ComfyUI without --multi-user)"},
                                 status=400)

    @routes.get("/settings")
    async def get_settings(request: web.Request) -> web.Response:
        return web.json_response({**EDITOR_DEFAULT_SETTINGS, **await asyncio.to_thread(users.settings)})

    @routes.get("/settings/{id}")
    async def get_setting(request: web.Request) -> web.Response:
        settings = {**EDITOR_DEFAULT_SETTINGS, **await asyncio.to_thread(users.settings)}
        return web.json_response(settings.get(request.match_info["id"]))

    @routes.post("/settings")
    async def post_settings(request: web.Request) -> web.Response:
        new, error = await _read_json_value(request, json_limit)
        if error is not None:
            return error
        if not isinstance(new, dict):
            return web.Response(status=400, text="settings must be a JSON object")
        settings = await asyncio.to_thread(users.settings)
        await asyncio.to_thread(users.save_settings, {**settings, **new})
        return web.Response(status=200)

    @routes.post("/settings/{id}")
    async def post_setting(request: web.Request) -> web.Response:
        value, error = await _read_json_value(request, json_limit)
        if error is not None:
            return error
        settings = await asyncio.to_thread(users.settings)
        settings[request.match_info["id"]] = value
        await asyncio.to_thread(users.save_settings, settings)
        return web.Response(status=200)

    # user data files (app/user_manager.py)

    @routes.get("/userdata")
    async def list_userdata(request: web.Request) -> web.Response:
        query = request.rel_url.query
        directory = query.get("dir", "")
        if not directory:
            return web.Response(status=400, text="Directory not provided")
        folder = users.path(directory)
        if folder is None:
            return web.Response(status=403, text="Invalid directory")
        if not folder.exists() and directory.strip("/") in EMPTY_USER_FOLDERS:
            return web.json_response([])  # before the first save: empty, not missing (no 404 in the console)
        if not folder.is_dir():
            return web.Response(status=404, text="Directory not found")
        flag = {k: query.get(k, "").lower() == "true" for k in ("recurse", "full_info", "split")}
        listed = await asyncio.to_thread(_file_list, folder, flag["recurse"], flag["full_info"],
                                         flag["split"], users)
        return web.json_response(listed)

    @routes.get("/v2/userdata")
    async def list_userdata_v2(request: web.Request) -> web.Response:
        relative = request.rel_url.query.get("path", "")
        folder = users.path(relative) if relative else users.user_root
        if folder is None:
            return web.Response(status=400, text="Invalid path requested")
        if not folder.exists():
            if folder == users.user_root:
                return web.json_response([])
            return web.Response(status=404, text="Requested path not found")
        if not folder.is_dir():
            return web.Response(status=400, text="Requested path is not a directory")
        return web.json_response(await asyncio.to_thread(_tree, folder, users.user_root))

    def user_file(request: web.Request, param: str = "file", must_exist: bool = False) -> Path | web.Response:
        name = request.match_info.get(param, "")
        if not name:
            return web.Response(status=400)
        path = users.path(name)
        if path is None:
            return web.Response(status=403)
        if must_exist and not path.is_file():
            return web.Response(status=404)
        return path

    @routes.get("/userdata/{file}")
    async def get_userdata(request: web.Request) -> web.StreamResponse:
        path = user_file(request, must_exist=True)
        empty = EMPTY_USER_FILES.get(request.match_info.get("file", ""))
        if isinstance(path, web.Response) and path.status == 404 and empty is not None:
            return web.Response(text=empty[0], content_type=empty[1])
        if isinstance(path, web.Response):
            return path
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        # a saved .html or .svg must not run script in the editor's origin
        if content_type in SCRIPTABLE_TYPES:
            return web.FileResponse(path, headers={
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f'attachment; filename="{path.name}"'})
        return web.FileResponse(path)

    @routes.post("/userdata/{file}")
    async def post_userdata(request: web.Request) -> web.Response:
        path = user_file(request)
        if isinstance(path, web.Response):
            return path
        query = request.rel_url.query
        if query.get("overwrite", "true") == "false" and path.exists():
            return web.Response(status=409, text="File already exists")
        body = await read_limited(request, file_limit)
        if body is None:
            return web.Response(status=413, text=f"body larger than {file_limit} bytes")
        overwrite = query.get("overwrite", "true") != "false"
        try:
            # the early check above answers at once; this one is atomic (two posts of one name)
            if not await asyncio.to_thread(users.write, path, body, overwrite):
                return web.Response(status=409, text="File already exists")
        except PermissionError:
            return web.Response(status=403)
        except OSError as ex:
            logger.warning("could not save user file %s: %s", path, ex)
            return web.Response(status=400,
                                reason="Invalid filename. Please avoid special characters like :\\/*?\"<>|")
        if query.get("full_info", "false").lower() == "true":
            return web.json_response(users.info(path, users.user_root))
        return web.json_response(path.relative_to(users.user_root).as_posix())

    @routes.delete("/userdata/{file}")
    async def delete_userdata(request: web.Request) -> web.Response:
        path = user_file(request, must_exist=True)
        if isinstance(path, web.Response):
            return path
        path.unlink()
        return web.Response(status=204)

    @routes.post("/userdata/{file}/move/{dest}")
    async def move_userdata(request: web.Request) -> web.Response:
        source = user_file(request, must_exist=True)
        if isinstance(source, web.Response):
            return source
        dest = user_file(request, "dest")
        if isinstance(dest, web.Response):
            return dest
        query = request.rel_url.query
        dest.parent.mkdir(parents=True, exist_ok=True)
        if query.get("overwrite", "true") == "false":
            if not disk.move_exclusive(source, dest):  # atomic: never replaces a file that appeared
                return web.Response(status=409, text="File already exists")
        else:
            os.replace(source, dest)
        if query.get("full_info", "false").lower() == "true":
            return web.json_response(users.info(dest, users.user_root))
        return web.json_response(dest.relative_to(users.user_root).as_posix())

    # translations and templates (app/custom_node_manager.py): the pack ships none

    @routes.get("/i18n")
    async def get_i18n(request: web.Request) -> web.Response:
        return web.json_response({})

    @routes.get("/workflow_templates")
    async def get_workflow_templates(request: web.Request) -> web.Response:
        return web.json_response({})

    @routes.get("/global_subgraphs")  # subgraph blueprints that ComfyUI's node packs ship: none here
    async def get_global_subgraphs(request: web.Request) -> web.Response:
        return web.json_response({})

    # model folders (app/model_manager.py, server.py's /view_metadata)

    @routes.get("/experiment/models")
    async def get_model_folders(request: web.Request) -> web.Response:
        return web.json_response([{"name": kind, "folders": [str(p) for p in host_seam.folder_roots(kind)]}
                                  for kind in MODEL_KINDS])

    @routes.get("/experiment/models/{folder}")
    async def get_model_files(request: web.Request) -> web.Response:
        kind = request.match_info["folder"]
        if kind not in MODEL_KINDS:
            return web.Response(status=404)
        return web.json_response(await asyncio.to_thread(_model_files, kind, server))

    @routes.get("/view_metadata/{folder}")
    async def view_metadata(request: web.Request) -> web.Response:
        kind = request.match_info["folder"]
        filename = request.rel_url.query.get("filename", "")
        if kind not in ("loras", "checkpoints") or not filename.endswith(".safetensors"):
            return web.Response(status=404)
        try:
            path = host_seam.resolve_in(kind, filename)
        except (ValueError, FileNotFoundError):
            return web.Response(status=404)
        metadata = await asyncio.to_thread(_safetensors_metadata, path)
        return web.Response(status=404) if metadata is None else web.json_response(metadata)

    # the frontend's internal routes (api_server/routes/internal/internal_routes.py)

    @routes.get("/internal/logs")
    async def get_logs(request: web.Request) -> web.Response:
        return web.json_response("")

    @routes.get("/internal/logs/raw")
    async def get_raw_logs(request: web.Request) -> web.Response:
        return web.json_response({"entries": [], "size": {"cols": 80, "rows": 24}})

    @routes.patch("/internal/logs/subscribe")
    async def subscribe_logs(request: web.Request) -> web.Response:
        return web.Response(status=200)

    @routes.get("/internal/folder_paths")
    async def get_folder_paths(request: web.Request) -> web.Response:
        return web.json_response({kind: [str(p) for p in host_seam.folder_roots(kind)]
                                  for kind in MODEL_KINDS})

    @routes.get("/internal/files/{directory_type}")
    async def get_files(request: web.Request) -> web.Response:
        kind = request.match_info["directory_type"]
        folder = server.folder_of(kind)
        if folder is None:
            return web.json_response({"error": "Invalid directory type"}, status=400)
        return web.json_response(await asyncio.to_thread(_newest_first, folder))

    return routes


def _model_files(kind: str, server: Server) -> list[dict[str, Any]]:
    names = server.model_lists()[kind]()
    out: list[dict[str, Any]] = []
    roots = host_seam.folder_roots(kind)
    for name in names:
        for index, root in enumerate(roots):
            path = root / name
            if path.exists():
                stat = path.stat()
                out.append({"name": name, "pathIndex": index, "modified": stat.st_mtime,
                            "created": stat.st_ctime, "size": stat.st_size})
                break
    return out


def _safetensors_metadata(path: Path, max_size: int = 1024 * 1024) -> dict[str, Any] | None:
    """The ``__metadata__`` of a safetensors header, read without loading any tensor."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if size <= 0 or size > max_size:
                return None
            header = limits.loads(f.read(size))  # a 5,000-deep header is None (404), not a 500
    except (OSError, ValueError):
        return None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else None


def _newest_first(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    entries = [e for e in os.scandir(folder) if e.is_file()]
    return [e.name for e in sorted(entries, key=lambda e: -e.stat().st_mtime)]


# -- installing it ------------------------------------------------------------------------------


def static_routes(web_root: Path) -> list[web.AbstractRouteDef]:
    """Static files: the workflow templates (when that package is there) and the frontend itself.

    Added after every other route: ``/`` as a static prefix would otherwise shadow them.
    """
    out: list[web.AbstractRouteDef] = []
    templates = _package_folder(TEMPLATES_PACKAGE, "templates")
    if templates is not None:
        out.append(web.static("/templates", templates))
    else:
        async def no_templates(request: web.Request) -> web.Response:
            return web.json_response([])

        out.append(web.get("/templates/index.json", no_templates))
    async def favicon(request: web.Request) -> web.StreamResponse:
        icon = web_root / "favicon.ico"
        return web.FileResponse(icon) if icon.is_file() else web.Response(status=204)

    async def user_css(request: web.Request) -> web.StreamResponse:
        return web.Response(text="", content_type="text/css")  # index.html links it: none is empty CSS

    out.append(web.get("/favicon.ico", favicon))
    if not (web_root / "user.css").is_file():
        out.append(web.get("/user.css", user_css))
    out.append(web.static("/", web_root))
    return out


def index_response(web_root: Path) -> web.FileResponse:
    """``/``: the editor's page, never cached (a new frontend version must be picked up)."""
    return web.FileResponse(web_root / "index.html",
                            headers={"Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "0"})


def locate(enabled: bool) -> Path | None:
    """The frontend to serve, logging why there is none."""
    if not enabled:
        logger.info("visual editor disabled; serving the API only")
        return None
    root = frontend_root()
    if root is None:
        logger.info("visual editor not available: the comfyui-frontend-package is not installed "
                    "(%s adds it); serving the API only", INSTALL_HINT)
        return None
    logger.info("visual editor: ComfyUI frontend %s from %s", frontend_version() or "(unknown version)", root)
    return root

"""``loragraph serve``: ComfyUI's HTTP + websocket API for headless runs (see ``server/app.py``)."""

from .app import DEFAULT_HOST, DEFAULT_PORT, RemoteBindRefused, ServerConfig, check_bind, create_app, run

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "RemoteBindRefused", "ServerConfig", "check_bind", "create_app",
           "run"]

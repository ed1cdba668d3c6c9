"""Built front-end files (the demo app and the admin UI), served from package data.

``web/`` holds their sources; ``make`` builds them into ``tidings/web/<app>/``.
Files are read once and kept in memory: they are small, and a hub serves them
often (every page load) next to much hotter work.
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

__all__ = ["BUILD_HINT", "StaticFile", "StaticFiles", "is_built"]

BUILD_HINT = "build web/ with Node >= 20.19: make web"
"""How to get the apps into a checkout (a wheel built without Node has none)."""


def is_built(app: str) -> bool:
    """Whether the package holds the built ``app`` (``demo``, ``admin``)."""
    return (resources.files("tidings") / "web" / app / "index.html").is_file()


_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    immutable: bool
    """Content-hashed asset: cache it for good."""

    @property
    def cache_control(self) -> str:
        return "public, max-age=31536000, immutable" if self.immutable else "no-cache"


class StaticFiles:
    """The files of one built app, by URL path relative to its mount point."""

    def __init__(self, app: str) -> None:
        self.app = app
        self.files: dict[str, StaticFile] = {}
        root = resources.files("tidings") / "web" / app
        if root.is_dir():
            self._load(root, "")

    @property
    def available(self) -> bool:
        return "index.html" in self.files

    def _load(self, folder: Traversable, prefix: str) -> None:
        for entry in folder.iterdir():
            name = f"{prefix}{entry.name}"
            if entry.is_dir():
                self._load(entry, f"{name}/")
            else:
                suffix = "." + entry.name.rpartition(".")[2]
                content_type = _TYPES.get(suffix) or (
                    mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
                )
                immutable = name.startswith("assets/")
                self.files[name] = StaticFile(entry.read_bytes(), content_type, immutable)

    def get(self, path: str) -> StaticFile | None:
        """The file at ``path`` (``""`` or a directory means ``index.html``)."""
        path = path.lstrip("/")
        if path == "" or path.endswith("/"):
            path += "index.html"
        return self.files.get(path)

"""The dashboard's files over HTTP: the page, its script, the chart library."""

from __future__ import annotations

import importlib.resources
import mimetypes
import os
import re
from pathlib import Path

from websockets.datastructures import Headers
from websockets.http11 import Response

from ..profiling import TRACE_NAME
from .contained import contained

__all__ = [
    "dashboard_dir",
    "dashboard_file",
    "static_file",
    "media_file",
    "profile_file",
    "http_response",
]


def dashboard_dir() -> Path:
    """The dashboard's files: ``$EVLOOP_DASHBOARD_DIR``, else those installed with the
    package (a wheel), else ``dashboards/`` of a source checkout."""
    configured = os.environ.get("EVLOOP_DASHBOARD_DIR")
    if configured:
        return Path(configured)
    packaged = Path(str(importlib.resources.files("evloop"))) / "_dashboard"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "dashboards"


CHART_LIBRARY = ("uPlot.iife.min.js", "uPlot.min.css")
PAGE_ASSETS = (
    "app.js",
    "notices.js",
    "insight.js",
    "runs.js",
    "charts.js",
    "style.css",
    *CHART_LIBRARY,
)


def static_file(name: str) -> Response:
    """``/static/<name>``: one of the page's assets, nothing else."""
    if name not in PAGE_ASSETS:
        return http_response(404, b"not found\n", "text/plain")
    root = dashboard_dir()
    path = root / name
    if name in CHART_LIBRARY and not path.is_file():  # a source checkout: npm's folder
        path = root / "node_modules" / "uplot" / "dist" / name
    return dashboard_file(path)


MEDIA_NAME = re.compile(r"[0-9a-f]{32}\.(png|html)")


def media_file(run_folder: Path, name: str) -> Response:
    """``/media/<name>``: a file of the run folder's ``media/`` (content-named, nothing
    else), when it lies inside the run folder once links are followed."""
    if not MEDIA_NAME.fullmatch(name):
        return http_response(404, b"not found\n", "text/plain")
    path = contained(run_folder, f"media/{name}")
    if path is None or not path.is_file():
        return http_response(404, b"not found\n", "text/plain")
    kind = "image/png" if name.endswith(".png") else "text/plain"  # reports: never as a page
    return http_response(200, path.read_bytes(), kind)


def profile_file(run_folder: Path, name: str) -> Response:
    """``/profiles/<name>``: a trace of the run folder's ``profiles/`` (named as the
    profiler names them, nothing else), when it lies inside the run folder once links
    are followed; downloaded, never shown as a page."""
    if not TRACE_NAME.fullmatch(name):
        return http_response(404, b"not found\n", "text/plain")
    path = contained(run_folder, f"profiles/{name}")
    if path is None or not path.is_file():
        return http_response(404, b"not found\n", "text/plain")
    response = http_response(200, path.read_bytes(), "application/json")
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


def dashboard_file(path: Path) -> Response:
    if not path.is_file():
        body = (
            f"evloop: the dashboard's {path.name} is missing from {path.parent}; in a "
            f"source checkout, build the assets with `make dashboard` (npm ci in "
            f"dashboards/)\n"
        ).encode()
        return http_response(503, body, "text/plain")
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return http_response(200, path.read_bytes(), kind)


def http_response(status: int, body: bytes, content_type: str) -> Response:
    """A complete HTTP response for a websockets ``process_request`` hook."""
    headers = Headers()
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    headers["Cache-Control"] = "no-store"
    headers["X-Content-Type-Options"] = "nosniff"
    if content_type == "text/html":
        headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            "frame-src 'self' about:; connect-src 'self'"
        )
    reasons = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}
    return Response(status, reasons.get(status, "Error"), headers, body)

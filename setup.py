"""Build hook: wheels carry the live dashboard (page, script, chart library).

The dashboard's sources live in ``dashboards/``; its chart library comes from the
npm registry (``npm ci``, run here when it is missing). A wheel gets all of them in
``evloop/_dashboard/``, found at run time with ``importlib.resources``. Editable
installs serve ``dashboards/`` itself.
"""

import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
DASHBOARD = ROOT / "dashboards"
CHART_LIBRARY = "node_modules/uplot/dist"
ASSETS = [
    "index.html",
    "app.js",
    "notices.js",
    "insight.js",
    "runs.html",
    "runs.js",
    "charts.js",
    "style.css",
    f"{CHART_LIBRARY}/uPlot.iife.min.js",
    f"{CHART_LIBRARY}/uPlot.min.css",
]


def ensure_assets() -> None:
    """The chart library, from the npm registry when it is not there yet."""
    if all((DASHBOARD / asset).is_file() for asset in ASSETS):
        return
    if shutil.which("npm") is None:
        raise SystemExit(
            "building evloop needs the dashboard's chart library: install Node.js (npm) "
            "or run `npm ci` in dashboards/ first"
        )
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=DASHBOARD, check=True)


class BuildWithDashboard(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install serves dashboards/ itself
        ensure_assets()
        target = Path(self.build_lib) / "evloop" / "_dashboard"
        target.mkdir(parents=True, exist_ok=True)
        for asset in ASSETS:
            shutil.copy2(DASHBOARD / asset, target / Path(asset).name)


class SdistWithDashboard(sdist):
    def run(self) -> None:
        ensure_assets()  # the sdist carries the built assets (MANIFEST.in)
        super().run()


setup(cmdclass={"build_py": BuildWithDashboard, "sdist": SdistWithDashboard})

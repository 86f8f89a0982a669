"""Build the dashboard into backend/static when a wheel is built, so the wheel carries it.

Editable installs skip this (scripts/test.sh and `npm run build` build in place). Without
npm the wheel is built without the dashboard and says so; a failing npm build fails the wheel.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class DashboardBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable":
            return
        root = Path(self.root)
        ui = root / "ui"
        static = root / "backend" / "static" / "index.html"
        if not (ui / "package.json").is_file():
            return  # building from a tree without the dashboard's sources
        npm = shutil.which("npm")
        if npm is None:
            if not static.is_file():
                self.app.display_warning(
                    "npm not found: this wheel carries no dashboard (install Node.js and npm)"
                )
            return
        if not (ui / "node_modules").is_dir():
            subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=ui, check=True)
        subprocess.run([npm, "run", "build"], cwd=ui, check=True)

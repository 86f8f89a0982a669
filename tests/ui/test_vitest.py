"""The dashboard's component and store tests (Vitest), run by the one test command."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

UI = Path(__file__).resolve().parents[2] / "ui"


def test_vitest_component_and_store_tests_pass() -> None:
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        reason = "node and npm are needed for the dashboard's Vitest tests"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    if not (UI / "node_modules" / "vitest").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=UI, check=True)
    result = subprocess.run(
        [npm, "test", "--", "--reporter=dot"],
        cwd=UI,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0"},
    )
    assert result.returncode == 0, f"Vitest failed:\n{result.stdout}\n{result.stderr}"

"""The framework examples run offline against the stand-in provider when no key is set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("langchain_agent.py", "It is sunny in Paris."),
        ("langgraph_graph.py", "stopped (loop_detected)"),
        ("llamaindex_rag.py", "refused: daily budget exceeded"),
    ],
)
def test_example_runs_offline(script: str, expected: str) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL"}
    }
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout

"""The README's provider-client quickstart runs as written, against the local stand-in."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kavach._devtools.standin import Reply, StandIn

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- tests/kavach_integrations/test_readme.py runs this block"


def _quickstart() -> str:
    text = README.read_text(encoding="utf-8")
    after = text[text.index(MARKER) :]
    match = re.search(r"```python\n(.*?)```", after, re.S)
    assert match is not None, "the README lost its provider quickstart block"
    return match.group(1)


def test_the_provider_quickstart_runs_as_written(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with StandIn() as server:
        server.default = Reply(text="Hello there!", input_tokens=9)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-readme")
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_url)
        namespace: dict[str, object] = {"__name__": "readme"}
        exec(compile(_quickstart(), str(README), "exec"), namespace)
        guard = namespace["guard"]
        client = namespace["client"]
        client.close()  # type: ignore[attr-defined]
        paths = [r.path for r in server.requests]
    assert paths == ["/v1/chat/completions"] * 3  # create, the stream, acreate
    assert server.requests[1].body["stream_options"] == {"include_usage": True}
    statuses = guard.status()  # type: ignore[attr-defined]
    assert statuses[0].spent > 0 and statuses[0].reserved == 0
    assert guard.ledger.open_holds == 0  # type: ignore[attr-defined]
    spent = guard.spent  # type: ignore[attr-defined]
    assert spent > 0 and capsys.readouterr().out == f"${spent:.6f} spent today\n"

"""The README's provider-client quickstart runs as written, against the local stand-in."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

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


CONFIG_MARKER = "<!-- tests/kavach_integrations/test_readme.py loads this file"


def test_the_configuration_file_section_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = README.read_text(encoding="utf-8")
    after = text[text.index(CONFIG_MARKER) :]
    yaml_block = re.search(r"```yaml\n(.*?)```", after, re.S)
    code_block = re.search(r"```python\n(.*?)```", after, re.S)
    assert yaml_block is not None and code_block is not None
    (tmp_path / "kavach.yaml").write_text(yaml_block.group(1), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SUMMARIZER_DAILY", raising=False)
    monkeypatch.delenv("AGENTKAVACH_REDIS_URL", raising=False)
    namespace: dict[str, Any] = {"__name__": "readme"}
    exec(compile(code_block.group(1), str(README), "exec"), namespace)
    guards = namespace["guards"]
    try:
        assert set(guards) == {"research-bot", "summarizer"}
        assert namespace["bot"] is guards["research-bot"]
        labels = [b.label for b in guards["research-bot"].budgets]
        assert labels == ["daily", "monthly", "monthly tokens", "shared:research-team daily"]
        assert guards["research-bot"].mode == "strict"
        daily = guards["summarizer"].budgets[0]
        assert (daily.label, daily.limit) == ("daily", 5_000_000_000)  # ${SUMMARIZER_DAILY:-5}
    finally:
        for guard in guards.values():
            guard.close()

    # The error the section shows is the one a user gets for that mistake.
    shown = re.search(r"`(kavach\.yaml:\d+: agents\.research-bot\.budget\.daily: [^`]+)`", after)
    assert shown is not None
    (tmp_path / "kavach.yaml").write_text(
        yaml_block.group(1).replace("daily: 50", "daily: 50$"), encoding="utf-8"
    )
    from kavach import AgentKavach, KavachConfigError

    with pytest.raises(KavachConfigError) as error:
        AgentKavach.from_yaml("kavach.yaml")
    assert " ".join(shown.group(1).split()) == str(error.value)

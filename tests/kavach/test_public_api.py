"""The public surface: one explicit __all__, a cheap import, no network."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import kavach


def test_all_names_exist_and_nothing_private_is_exported() -> None:
    assert sorted(kavach.__all__) == sorted(set(kavach.__all__))
    for name in kavach.__all__:
        assert hasattr(kavach, name), name
        assert not name.startswith("_") or name == "__version__"


def test_version_has_one_source() -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("agentkavach")
    except PackageNotFoundError:  # running from a source tree without an install
        return
    assert installed == kavach.__version__


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]),
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_import_loads_no_sdk_no_price_data_no_encoding_and_opens_no_socket() -> None:
    out = run_python(
        """
        import socket, sys
        def refuse(*a, **k):
            raise AssertionError("import kavach touched the network")
        socket.socket.connect = refuse
        socket.getaddrinfo = refuse
        import kavach
        heavy = ["openai", "anthropic", "google.genai", "mistralai", "langchain_core",
                 "llama_index", "redis", "litestar", "genai_prices", "opentelemetry.sdk"]
        print(",".join(m for m in heavy if m in sys.modules))
        """
    )
    assert out.strip() == ""

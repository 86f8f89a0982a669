"""The disk spool keeps whole events, in order, whatever the disk does."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from kavach.reporting.spool import DiskSpool


def test_a_write_the_disk_refuses_is_taken_back(tmp_path: Path) -> None:
    # A file size limit stands in for a full disk (in a child: it binds the whole process).
    code = f"""
        import json, resource, signal
        from pathlib import Path
        from kavach.reporting.spool import DiskSpool
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        spool = DiskSpool(Path({str(tmp_path)!r}))
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
        kept = []
        for i in range(20):
            try:
                spool.append([{{"id": f"e{{i:05d}}", "pad": "x" * 100}}])
                kept.append(i)
            except OSError:
                pass
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        spool.append([{{"id": "after"}}])
        read = [e["id"] for _, events in spool.segments() for e in events]
        print(json.dumps({{"kept": kept, "pending": spool.pending, "read": read}}))
    """
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        check=True,
        cwd=root,
        timeout=60,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.stdout)
    assert 0 < len(result["kept"]) < 20
    expected = [f"e{i:05d}" for i in result["kept"]] + ["after"]
    assert result["read"] == expected
    assert result["pending"] == len(expected)
    assert "torn" not in out.stderr


def test_events_stored_at_a_reserved_place_come_before_later_ones(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path)
    spool.append([{"id": "a"}])
    place = spool.reserve()
    spool.append([{"id": "c"}])
    spool.append([{"id": "b"}], at=place)
    assert [e["id"] for _, events in spool.segments() for e in events] == ["a", "b", "c"]
    assert spool.pending == 3
    spool.close()

"""Alerts end to end, offline: a local receiver checks signed webhooks while a guard spends.

    python examples/alerts_local.py

The guard alerts a webhook (signed with HMAC-SHA256) at 50% and 90% of a $0.10 daily budget,
calls a Python function at 90%, and stops the agent at 100% with the kill channel.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kavach import AgentKavach, AgentKilledError, Budget, CallSpec, ModelPrice, Usage
from kavach.alerts import Alert

SECRET = "change-me-to-32-random-characters"


def verify_agentkavach(
    secret: str, body: bytes, timestamp: str, signature: str, tolerance_seconds: int = 300
) -> bool:
    """True if the request was signed with ``secret`` within the tolerance."""
    try:
        sent_at = int(timestamp)
    except ValueError:
        return False
    if abs(time.time() - sent_at) > tolerance_seconds:
        return False
    signed = timestamp.encode() + b"." + body
    expected = "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        body = self.rfile.read(int(self.headers["content-length"]))
        ok = verify_agentkavach(
            SECRET,
            body,
            self.headers["X-AgentKavach-Timestamp"],
            self.headers["X-AgentKavach-Signature"],
        )
        alert = json.loads(body)
        print(f"webhook  ({'signature ok' if ok else 'BAD SIGNATURE'}): {alert['summary']}")
        self.send_response(204 if ok else 401)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


def on_alert(alert: Alert) -> None:
    print(f"callable ({alert.severity}): {alert.summary}")


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/kavach"  # http is allowed on loopback

    guard = AgentKavach(
        "demo-bot",
        Budget.daily(0.10),
        prices={"demo-model": ModelPrice(input_per_mtok=1.0, output_per_mtok=1.0)},
        detect_loops=False,
        channels=[
            AgentKavach.channel("webhook", thresholds=[0.5, 0.9], url=url, secret=SECRET),
            AgentKavach.channel(on_alert, threshold=0.9),
            AgentKavach.channel("kill", threshold=1.0),
        ],
    )
    spec = CallSpec(provider="openai", model="demo-model", input_tokens=5000, max_output_tokens=0)
    calls = 0
    try:
        while True:
            with guard.reserve(spec) as r:  # each call costs $0.005
                r.commit(Usage(input_tokens=5000))
            calls += 1
    except AgentKilledError as exc:
        print(f"after {calls} calls: {exc}")
    guard.close()  # deliver what is still in flight
    server.shutdown()


if __name__ == "__main__":
    main()

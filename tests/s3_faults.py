"""A fault-injecting HTTP proxy on 127.0.0.1 in front of a real S3 API (moto_server).

It forwards every request unchanged, except that a seeded share of them is answered the way S3
answers under load (``503 SlowDown``), delayed, or cut off (connection closed without an answer).
Clients see the real S3 protocol and real failures: no mock of our code or of boto/pyarrow/delta-rs.
"""
from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

_SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
              b"<Message>Please reduce your request rate.</Message></Error>")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@dataclass
class Faults:
    """Shares of requests (0..1) that are throttled, cut off, or delayed by ``delay_s``."""

    slow_down: float = 0.0
    drop: float = 0.0
    delay: float = 0.0
    delay_s: float = 0.5
    seed: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {"forwarded": 0, "slow_down": 0, "drop": 0, "delay": 0})

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()

    def draw(self) -> str:
        with self._lock:
            x = self._rng.random()
            for name, share in (("slow_down", self.slow_down), ("drop", self.drop), ("delay", self.delay)):
                if x < share:
                    self.counts[name] += 1
                    return name
                x -= share
            self.counts["forwarded"] += 1
            return "forward"


class FaultyS3Proxy:
    """``with FaultyS3Proxy(upstream, Faults(slow_down=0.15)) as endpoint:`` → point AWS_ENDPOINT_URL at it."""

    def __init__(self, upstream: str, faults: Faults):
        self.upstream, self.faults = urlsplit(upstream), faults
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet: tests read counts, not logs
                pass

            def _relay(self) -> None:
                fault = proxy.faults.draw()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if fault == "drop":  # cut off: the client sees the connection reset, no answer
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault == "slow_down":
                    self.send_response(503, "Slow Down")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(_SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(_SLOW_DOWN)
                    return
                if fault == "delay":
                    time.sleep(proxy.faults.delay_s)
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                # A HEAD answer's length is the object's, not of the (empty) body.
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.endpoint

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class FaultyS3Process:
    """The proxy in a process of its own, as a real S3 is: a client that holds the GIL while it waits
    for an answer (delta-rs does for some calls) must not starve the server it waits for.
    ``counts`` holds what the proxy did once the ``with`` block has ended."""

    def __init__(self, upstream: str, faults: Faults):
        self.upstream, self.faults = upstream, faults
        self.counts: dict[str, int] = {}

    def __enter__(self) -> str:
        import json
        import subprocess
        import sys
        from dataclasses import asdict

        spec = {k: v for k, v in asdict(self.faults).items() if k != "counts"}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.s3_faults", self.upstream, json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=str(Path(__file__).resolve().parents[1]))
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def __exit__(self, *exc: object) -> None:
        import json

        out, _ = self.proc.communicate(input="stop\n", timeout=30)
        self.counts = json.loads(out.strip().splitlines()[-1])


if __name__ == "__main__":  # python -m tests.s3_faults UPSTREAM FAULTS_JSON: serve until stdin says stop
    import json
    import sys

    faults = Faults(**json.loads(sys.argv[2]))
    with FaultyS3Proxy(sys.argv[1], faults) as endpoint:
        print(endpoint, flush=True)
        sys.stdin.readline()
    print(json.dumps(faults.counts), flush=True)

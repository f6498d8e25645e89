"""``corpusflow serve``: run the online API on this machine (127.0.0.1 by default) until interrupted.

Starts (or joins, with ``--address``) a Ray cluster, deploys the application from one ServeConfig
and waits for Ctrl-C. Keys come from ``$CORPUSFLOW_API_KEYS`` or ``--api-keys-file``; ``--api-key``
still works but warns, since a command line shows in ``ps`` and shell history. Without any key it
makes one for this session and prints it, so a fresh clone answers requests, while the API still
never runs unauthenticated.
"""
from __future__ import annotations

import argparse
import math
import os
import secrets
import signal
import sys
import threading
import time
from typing import Optional, Sequence

from corpusflow.contracts.capacity import InfeasibleError
from corpusflow.contracts.config import ConfigError
from corpusflow.contracts.serve_config import ServeConfig
from corpusflow.serve_apps.guards import load_api_keys


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="corpusflow serve", description=__doc__)
    p.add_argument("--config", help="serve config YAML (ServeConfig fields; see serve_apps/config.yaml args)")
    p.add_argument("--models", help="models profile: small-real (default), qwen2.5-vl-7b, tiny-random (random weights, "
                   "for tests), or a profile YAML")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to bind (default 8000)")
    p.add_argument("--route-prefix", help="serve the API under this path, e.g. /cf (default /)")
    p.add_argument("--api-keys-file", help="file with one accepted key per line (also: $CORPUSFLOW_API_KEYS)")
    p.add_argument("--api-key", help="accept this key; visible in ps, so prefer $CORPUSFLOW_API_KEYS or --api-keys-file")
    p.add_argument("--index", help="a job's OUT whose search index /v1/search and /v1/search/ask answer from")
    p.add_argument("--address", help="Ray cluster address; without it a local Ray is started")
    p.add_argument("--num-cpus", type=float,
                   help="logical CPUs of the local Ray (default: the cores, or what the replicas reserve if more)")
    return p.parse_args(list(argv))


def start(settings: ServeConfig, api_key: Optional[str] = None, address: Optional[str] = None,
          num_cpus: Optional[float] = None, proxy_location: Optional[str] = None) -> str:
    """Deploy the app and return its base URL; ``api_key`` is added to the replicas' environment.

    ``proxy_location``: Serve's, e.g. ``HeadOnly`` where several Ray nodes share one host (a local
    multi-node cluster), since every proxy binds the same host port; None is Serve's default (every node).
    """
    import ray
    from ray import serve

    from corpusflow.actors.node_types import cluster_shapes
    from corpusflow.serve_apps.app import APP_NAME, build_app

    env = {settings.api_keys_env: api_key} if api_key else {}
    if address is None and num_cpus is None:  # a laptop still starts every replica (logical CPUs, shared cores)
        num_cpus = math.ceil(max(os.cpu_count() or 1, settings.min_cpus))
    # address="local": a Ray of its own even where another runs on this machine (ray.init() alone joins
    # that one, and then refuses num_cpus).
    ray.init(address=address or "local", num_cpus=None if address else num_cpus, include_dashboard=False,
             runtime_env={"env_vars": env} if env else None, ignore_reinit_error=True)
    # Before Serve starts: a deployment no node can hold is refused here rather than waited for.
    app = build_app(settings, cluster_shapes(local=address is None))
    serve.start(proxy_location=proxy_location, http_options={"host": settings.host, "port": settings.port,
                              # Serve's own deadline sits behind ours, so clients see our 504 with a reason
                              "request_timeout_s": settings.request_timeout_s + 10})
    serve.run(app, name=APP_NAME, route_prefix=settings.route_prefix, blocking=False)
    return f"http://{settings.host}:{settings.port}{settings.route_prefix.rstrip('/')}"


def wait_ready(url: str, timeout_s: float) -> None:
    """Return once ``{url}/readyz`` answers 200 (every stage deployment answers), else TimeoutError."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:  # not listening yet, or 503 while a stage loads (HTTPError is an OSError)
            pass
        time.sleep(1)
    from ray import serve

    raise TimeoutError(f"the app was not ready within {timeout_s:g} s: {serve.status()}")


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    try:
        settings = ServeConfig.load(args.config, models=args.models, host=args.host, port=args.port,
                                    route_prefix=args.route_prefix, api_keys_file=args.api_keys_file,
                                    index=args.index)
        if settings.api_keys_file:  # a missing or empty key file fails here, not in every ingress replica
            load_api_keys(settings.api_keys_env, settings.api_keys_file)
    except ConfigError as e:
        print(f"corpusflow serve: {e}", file=sys.stderr)
        return 2
    notice = settings.stage_config().profile.random_notice()
    if notice:
        print(f"corpusflow serve: {notice}", file=sys.stderr)
    key = args.api_key
    if key:
        print(f"corpusflow serve: warning: --api-key shows in the process list and shell history; put keys in "
              f"${settings.api_keys_env} or --api-keys-file instead", file=sys.stderr)
    elif not os.environ.get(settings.api_keys_env) and not settings.api_keys_file:
        key = secrets.token_urlsafe(24)
        print(f"no API key configured; this session accepts {settings.api_key_header}: {key}")
    try:
        url = start(settings, key, args.address, args.num_cpus)
    except InfeasibleError as e:
        print(f"corpusflow serve: {e}", file=sys.stderr)
        return 2
    print(f"corpusflow API at {url}/v1 (docs at {url}/docs); Ctrl-C stops it")
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    from ray import serve

    serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

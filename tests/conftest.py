"""Shared fixtures: GPU-marker skipping, a real S3 API on loopback (moto_server), a hermetic model cache."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest


def _gpu_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Once pytest has reported, leave with its status and skip the interpreter's teardown.

    Why: native threads that in-process tests leave behind (Ray's core worker, torch) crashed the
    interpreter once *after* the summary (223 passed, then SIGSEGV on exit), turning a green run red.
    """
    if _EXIT_STATUS:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])


def pytest_collection_modifyitems(config, items):
    if _gpu_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Where libraries and our own defaults put caches and settings. HOME too: some (onnxruntime's
# telemetry id, Ray's auth token) write under it whatever the XDG variables say.
_CACHE_VARIABLES = ("HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "HF_HOME", "TORCH_HOME", "MPLCONFIGDIR")


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """No test reads or writes the user's ``~/.cache``: a stale cache from older code can neither hide
    a failure nor cause one. Set before collection, since test modules import libraries that read
    these once; subprocesses and local Ray workers inherit them."""
    root = config._tmp_path_factory.mktemp("home")  # under pytest's own temp dir for this run
    os.environ.update({k: str(root / k.lower()) for k in _CACHE_VARIABLES})


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> str:
    """One tiny-random model cache for the whole test session (models are built once, offline)."""
    return str(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: extra torch threads only add contention on shared CI cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1; yields its endpoint URL and sets the AWS environment for it."""
    exe = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
    if exe is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    port = _free_port()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_REGION", "AWS_DEFAULT_REGION")}
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket on the loopback S3 server."""
    import uuid

    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name

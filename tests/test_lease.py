"""Leases on inputs (flows/lease.py): of jobs racing for one file exactly one processes it, on a local
OUT and on the S3 API; a dead job's lease passes on, and what it committed stays done."""
from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from corpusflow.flows.lease import COMMITTED, alive, take_lease


def _race(out: str, jobs: int) -> list:
    names = [f"job-{i}" for i in range(jobs)]
    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(lambda j: take_lease(out, "fp", "s3://c/a.mp4", "asset-1", j,
                                                  lambda _: True, lambda *_: False), names))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_of_jobs_racing_for_one_file_exactly_one_gets_it(where, tmp_path, request):
    out = str(tmp_path / "out") if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}/out"
    got = _race(out, 8)
    winners = [i for i, g in enumerate(got) if g is None]
    assert len(winners) == 1
    assert {g for g in got if g is not None} == {f"job-{winners[0]} s3://c/a.mp4"}
    # The winner asking again (a retried task) still holds it.
    assert take_lease(out, "fp", "s3://c/a.mp4", "asset-1", f"job-{winners[0]}", lambda _: True, lambda *_: False) is None


def test_a_killed_jobs_lease_passes_on_unless_it_committed(tmp_path):
    out = str(tmp_path)
    job = subprocess.Popen([sys.executable, "-c", "import sys, time; from corpusflow.flows.lease import Heartbeat\n"
                            "with Heartbeat(sys.argv[1], 'job-killed'):\n print('up', flush=True); time.sleep(600)", out],
                           stdout=subprocess.PIPE, text=True)
    assert job.stdout.readline().strip() == "up"
    live = lambda j: alive(out, j)  # noqa: E731
    assert live("job-killed")
    for uri, asset in (("a.wav", "asset-1"), ("b.wav", "asset-2")):
        assert take_lease(out, "fp", uri, asset, "job-killed", live, lambda *_: False) is None
    assert take_lease(out, "fp", "a.wav", "asset-1", "job-next", live, lambda *_: False) == "job-killed a.wav"
    # The same bytes at another URI of the holding job: processed once, the second URI waits for the first.
    assert take_lease(out, "fp", "copy.wav", "asset-1", "job-killed", live, lambda *_: False) == "job-killed a.wav"
    job.kill()  # kill -9: no chance to say goodbye, its mark stays behind
    job.wait()
    assert not live("job-killed")
    assert take_lease(out, "fp", "a.wav", "asset-1", "job-next", live, lambda *_: False) is None
    assert take_lease(out, "fp", "b.wav", "asset-2", "job-next", live, lambda *_: True) == COMMITTED

"""A node lost mid-job, as a spot reclaim loses it: real raylets on this machine (``ray.cluster_utils.Cluster``),
the job through ``corpusflow run --address``, and the node holding decode, ASR, the VLM and the committer
SIGKILLed (raylet and workers) while the job shows each of those stages at work on it.

Every file must come out right: one ``assets`` row each, no data row twice, nothing left leased; and a
job whose nodes keep dying must stop with an error that says so, within the bound of its config.
"""
from __future__ import annotations

import pytest

from tests import ray_nodes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nodes():
    import ray

    ray.shutdown()  # the job's driver is its own process; this one only runs the cluster
    cluster = ray_nodes.Nodes()
    cluster.add_spot()
    yield cluster
    cluster.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return folder, ray_nodes.make_corpus(folder)


def test_losing_the_node_during_decode_asr_vlm_and_a_commit_loses_no_file(nodes, corpus, tmp_path, model_cache):
    folder, names = corpus
    stages = ("decode", "asr", "vlm", "commit")
    # Each loss takes every actor of the spot node with it: restarts enough for all four.
    config = ray_nodes.job_config(tmp_path / "job.yaml", model_cache, worker_restarts=len(stages))
    run = ray_nodes.run_job(nodes, folder, tmp_path / "out", config, kill_during=stages)
    assert [s for s, _ in run.kills] == list(stages), (run.kills, run.output[-3000:])
    assert run.code == 0, run.output[-3000:]
    counts = ray_nodes.check_tables(tmp_path / "out", names)
    assert counts == {"assets": len(names), "duplicates": 0, "leases_left": 0}
    # The killed commit had written data tables but not its assets row, and was committed again after.
    assert ray_nodes.commits(tmp_path / "out", "timeline") > ray_nodes.commits(tmp_path / "out", "assets")
    assert "`ray_remote_args` is deprecated" not in run.output  # Ray 2.64 removes it: nothing may rely on it


def test_a_job_whose_nodes_keep_dying_stops_and_says_why(nodes, corpus, tmp_path, model_cache):
    """Every spot node that comes up is lost once ASR works on it: past faults.max_nodes_lost the job
    stops with exit 3 and a sentence naming the bound, instead of recovering for ever."""
    folder, _ = corpus
    config = ray_nodes.job_config(tmp_path / "job.yaml", model_cache, worker_restarts=5, max_nodes_lost=1)
    run = ray_nodes.run_job(nodes, folder, tmp_path / "out", config, kill_every="asr")
    assert run.code == 3, run.output[-3000:]
    said = [line for line in run.output.splitlines() if line.startswith("corpusflow: the cluster lost")]
    assert said and "faults.max_nodes_lost (1)" in said[0], run.output[-3000:]
    assert len(run.kills) == 2, run.kills
    assert not list((tmp_path / "out" / "_jobs" / "running").glob("*"))  # its leases end with it

"""Commit protocol: schema-enforced rows, atomic files, orphan recovery, newest-run view, S3 too."""
import numpy as np
import pyarrow as pa
import pytest

from corpusflow.contracts import storage
from corpusflow.contracts.schemas import SchemaError, conform
from corpusflow.contracts.stage import list_column, tensor_column
from corpusflow.contracts.rows import rows_for_batch
from corpusflow.flows.commit import batch_key, commit, committed_keys, read_table, remove_orphans

PRICES = {"cpu": 0.05, "H100": 6.88}


def _batch(uris, kind="audio", error=""):
    n = len(uris)
    return {
        "uri": np.array(uris, dtype=object), "bytes": np.full(n, 10, np.int64),
        "asset_id": np.array([f"id-{u}" for u in uris], dtype=object),
        "kind": np.array([kind] * n, dtype=object), "format": np.array(["wav"] * n, dtype=object),
        "error_stage": np.array(["decode" if error else ""] * n, dtype=object),
        "error": np.array([error] * n, dtype=object),
        "duration_s": np.full(n, 3.0), "language": np.array(["en"] * n, dtype=object),
        "seg_start": tensor_column([np.array([0.0, 1.5])] * n), "seg_end": tensor_column([np.array([1.0, 2.5])] * n),
        "seg_text": list_column([["a", "b"]] * n), "word_start": tensor_column([np.zeros(0)] * n),
        "word_end": tensor_column([np.zeros(0)] * n), "word_text": list_column([[]] * n),
        "asr_wall_s": np.full(n, 2.0), "asr_device_s": np.full(n, 2.0), "asr_accel": np.array(["H100"] * n, dtype=object),
        "decode_wall_s": np.full(n, 0.5), "decode_device_s": np.full(n, 0.5), "decode_accel": np.array(["cpu"] * n, dtype=object),
        "vlm_wall_s": np.full(n, np.nan), "vlm_device_s": np.full(n, np.nan), "vlm_accel": np.array([""] * n, dtype=object),
    }


def test_rows_follow_the_declared_schemas_and_cost():
    t = rows_for_batch(_batch(["a.wav", "b.wav"]), "fp", "job", PRICES)
    assert t["assets"].num_rows == 2 and set(t["assets"]["status"].to_pylist()) == {"ok"}
    assert t["timeline"].num_rows == 4 and set(t["timeline"]["source"].to_pylist()) == {"asr"}
    m = t["metrics"].to_pydict()
    assert sorted(set(m["stage"])) == ["asr", "decode"]  # the VLM never ran on audio: no row
    asr = m["stage"].index("asr")
    assert m["cost_usd"][asr] == pytest.approx(2.0 / 3600 * 6.88)


def test_error_rows_keep_stage_and_reason_and_no_data():
    t = rows_for_batch(_batch(["bad.mp4"], error="video could not be decoded"), "fp", "job", PRICES)
    a = t["assets"].to_pylist()[0]
    assert (a["status"], a["error_stage"], a["error"]) == ("error", "decode", "video could not be decoded")
    assert t["timeline"].num_rows == 0


def test_conform_refuses_wrong_shapes():
    with pytest.raises(SchemaError, match="missing"):
        conform("pages", {"asset_id": ["x"]})
    with pytest.raises(SchemaError, match="null"):
        conform("pages", {"asset_id": [None], "page": [1], "text": ["t"], "images": [0], "chars": [1]})


def _commit(out, uris, fp="fp"):
    b = _batch(uris)
    name = f"{fp}-{batch_key(b)}.parquet"
    commit(rows_for_batch(b, fp, "job", PRICES), out, name)
    return name


@pytest.mark.parametrize("where", ["local", "s3"])
def test_commit_resume_and_orphans(tmp_path, where, request):
    if where == "s3":
        out = f"s3://{request.getfixturevalue('s3_bucket')}/out"
    else:
        out = str(tmp_path / "out")
    _commit(out, ["a.wav", "b.wav"])
    assert committed_keys(out, "fp") == {("a.wav", "id-a.wav"), ("b.wav", "id-b.wav")}
    assert committed_keys(out, "other") == set()
    # A batch whose data landed but whose assets file did not is an orphan: removed, never read.
    name = _commit(out, ["c.wav"])
    storage.delete(storage.join(out, "assets", name))
    assert read_table(out, "timeline").num_rows == 4
    assert remove_orphans(out) == 2  # its timeline and metrics files
    # Re-committing the same batch overwrites its files: no duplicates.
    _commit(out, ["a.wav", "b.wav"])
    assert read_table(out, "assets").num_rows == 2 and read_table(out, "timeline").num_rows == 4


def test_newest_run_per_input_wins(tmp_path):
    out = str(tmp_path)
    _commit(out, ["a.wav"], fp="old")
    _commit(out, ["a.wav"], fp="new")
    assets = read_table(out, "assets")
    assert assets.num_rows == 1 and assets["config_fingerprint"].to_pylist() == ["new"]
    assert read_table(out, "timeline").num_rows == 2


def test_local_write_is_atomic(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError):
        storage.write_parquet_atomic(pa.table({"x": [1]}), str(tmp_path / "t" / "f.parquet"))
    assert storage.list_parquet(str(tmp_path / "t")) == []

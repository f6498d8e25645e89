"""The output tables: schema-enforced rows, Delta transactions any reader sees alike, nothing twice, S3 too."""
import threading

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from corpusflow.contracts import storage
from corpusflow.contracts.rows import rows_for_batch
from corpusflow.contracts.schemas import TABLES, SchemaError, conform
from corpusflow.contracts.stage import list_column, tensor_column
from corpusflow.flows.cli import main
from corpusflow.flows.lease import Heartbeat
from corpusflow.flows.tables import OutputError, check_out, commit, committed_keys, compact, read_table
from tests.readers import live_files

PRICES = {"cpu": 0.05, "H100": 6.88}


def _batch(uris, kind="audio", error="", ids=None):
    n = len(uris)
    return {
        "uri": np.array(uris, dtype=object), "bytes": np.full(n, 10, np.int64),
        "asset_id": np.array(ids or [f"id-{u}" for u in uris], dtype=object),
        "kind": np.array([kind] * n, dtype=object), "format": np.array(["wav"] * n, dtype=object),
        "error_stage": np.array(["decode" if error else ""] * n, dtype=object),
        "error": np.array([error] * n, dtype=object),
        "duration_s": np.full(n, 3.0), "language": np.array(["en"] * n, dtype=object),
        "seg_start": tensor_column([np.array([0.0, 1.5])] * n), "seg_end": tensor_column([np.array([1.0, 2.5])] * n),
        "seg_text": list_column([["a", "b"]] * n), "word_start": tensor_column([np.zeros(0)] * n),
        "word_end": tensor_column([np.zeros(0)] * n), "word_text": list_column([[]] * n),
        "asr_wall_s": np.full(n, 2.0), "asr_device_s": np.full(n, 2.0), "asr_accel": np.array(["H100"] * n, dtype=object),
        "decode_wall_s": np.full(n, 0.5), "decode_device_s": np.full(n, 0.5),
        "decode_accel": np.array(["cpu"] * n, dtype=object),
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
        conform("pages", {"asset_id": [None], "page": [1], "text": ["t"], "images": [0], "chars": [1], "ocr_language": [None]})


def _commit(out, uris, fp="fp", job="job", **kw):
    commit(rows_for_batch(_batch(uris, **kw), fp, job, PRICES), out, job)


def _latest(out, table):
    """The table as a Delta reader with no corpusflow code sees it at its latest version."""
    return DeltaTable(storage.join(out, table), storage_options=storage.delta_options(out)).to_pyarrow_table()


def _protocol_read(table_dir):
    """A Delta reader from the open protocol alone, reading the live Parquet files with plain pyarrow."""
    import pyarrow.parquet as pq

    parts = [pq.read_table(p) for p in live_files(table_dir)]
    return pa.concat_tables(parts) if parts else None


def _rows(table):
    return sorted(table.drop_columns([c for c in ("committed_at",) if c in table.column_names]).to_pylist(), key=repr)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_commits_are_delta_transactions_that_any_reader_sees_alike(tmp_path, where, request):
    out = f"s3://{request.getfixturevalue('s3_bucket')}/out" if where == "s3" else str(tmp_path / "out")
    _commit(out, ["a.wav", "b.wav"])
    assert committed_keys(out, "fp") == {("a.wav", "id-a.wav"), ("b.wav", "id-b.wav")}
    assert committed_keys(out, "other") == set()
    # The same batch again (a retried task, a re-run): its rows are replaced, never added.
    _commit(out, ["a.wav", "b.wav"])
    assert read_table(out, "assets").num_rows == 2 and read_table(out, "timeline").num_rows == 4
    for table in TABLES:
        assert _rows(_latest(out, table)) == _rows(read_table(out, table)), table
        if where == "local":
            plain = _protocol_read(tmp_path / "out" / table)
            assert _rows(plain.cast(TABLES[table]) if plain else TABLES[table].empty_table()) == \
                _rows(read_table(out, table)), table


def test_a_new_config_supersedes_the_rows_of_the_inputs_it_ran_on(tmp_path):
    out = str(tmp_path)
    _commit(out, ["a.wav", "b.wav"], fp="old", job="j1")
    first_run = DeltaTable(str(tmp_path / "timeline")).version()
    _commit(out, ["a.wav"], fp="new", job="j2", error="video could not be decoded")
    assets = {r["uri"]: r for r in read_table(out, "assets").to_pylist()}
    assert (assets["a.wav"]["config_fingerprint"], assets["a.wav"]["status"]) == ("new", "error")
    assert assets["b.wav"]["config_fingerprint"] == "old"
    assert {r["asset_id"] for r in read_table(out, "timeline").to_pylist()} == {"id-b.wav"}  # a's result is now none
    assert set(read_table(out, "metrics")["job_id"].to_pylist()) == {"j1", "j2"}  # what each job spent stays
    # Time travel: the first run's rows are still there in an earlier version.
    first = DeltaTable(str(tmp_path / "timeline"), version=first_run).to_pyarrow_table()
    assert {r["asset_id"] for r in first.to_pylist()} == {"id-a.wav", "id-b.wav"}


def test_identical_bytes_at_two_uris_share_one_set_of_rows(tmp_path):
    out = str(tmp_path)
    _commit(out, ["x/a.wav", "y/copy.wav"], ids=["same", "same"])
    assert sorted(read_table(out, "assets")["uri"].to_pylist()) == ["x/a.wav", "y/copy.wav"]
    assert read_table(out, "timeline").num_rows == 2  # one asset's two segments, not four


def test_concurrent_commits_lose_nothing(tmp_path):
    out = str(tmp_path)
    errors = []

    def job(k):
        try:
            for i in range(4):
                _commit(out, [f"{k}-{i}.wav"], job=f"job-{k}")
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=job, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert read_table(out, "assets").num_rows == 12 and read_table(out, "timeline").num_rows == 24


def test_compact_removes_rows_no_asset_points_at_and_merges_files(tmp_path):
    out = str(tmp_path)
    for i in range(3):
        _commit(out, [f"{i}.wav"])
    # The job died between its data and its assets commits: rows that no assets row points at.
    orphan = rows_for_batch(_batch(["lost.wav"]), "fp", "job", PRICES)
    write_deltalake(str(tmp_path / "timeline"), orphan["timeline"], mode="append")
    assert read_table(out, "timeline").num_rows == 8
    files_before = len(DeltaTable(str(tmp_path / "timeline")).file_uris())
    report = compact(out, retain_hours=0)
    assert report["timeline"]["orphan_rows_removed"] == 2
    assert read_table(out, "timeline").num_rows == 6
    assert len(DeltaTable(str(tmp_path / "timeline")).file_uris()) < files_before


def test_an_out_of_bare_parquet_files_is_refused(tmp_path):
    import pyarrow.parquet as pq

    (tmp_path / "assets").mkdir()
    pq.write_table(pa.table({"x": [1]}), tmp_path / "assets" / "old.parquet")
    with pytest.raises(OutputError, match="older corpusflow"):
        check_out(str(tmp_path))


def test_compact_waits_for_running_jobs(tmp_path, capsys):
    out = str(tmp_path)
    _commit(out, ["a.wav"])
    with Heartbeat(out, "job-busy"):
        assert main(["compact", out]) == 2
        assert "job-busy" in capsys.readouterr().err
    assert main(["compact", out, "--retain-hours", "0"]) == 0
    assert "timeline" in capsys.readouterr().out
    assert read_table(out, "timeline").num_rows == 2


def test_transient_failures_are_retried_only_when_asked(tmp_path):
    out = str(tmp_path)
    rows = rows_for_batch({**_batch(["slow.wav"], error="file could not be read: AWS Error SLOW_DOWN"),
                           "error_retryable": np.array([True])}, "fp", "job", PRICES)
    commit(rows, out, "job")
    _commit(out, ["bad.wav"], error="video could not be decoded")
    assert {r["uri"]: r["retryable"] for r in read_table(out, "assets").to_pylist()} == {
        "slow.wav": True, "bad.wav": False}
    assert committed_keys(out, "fp") == {("slow.wav", "id-slow.wav"), ("bad.wav", "id-bad.wav")}
    assert committed_keys(out, "fp", retry_errors=True) == {("bad.wav", "id-bad.wav")}


def test_compact_of_a_folder_without_tables_says_so(tmp_path, capsys):
    assert main(["compact", str(tmp_path / "not-an-out")]) == 2
    assert "holds no corpusflow tables" in capsys.readouterr().err

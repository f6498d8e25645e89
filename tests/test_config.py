"""Job config is validated, with messages a person can act on, before Ray is touched."""
import pytest
import yaml

from corpusflow.contracts.config import ConfigError, JobConfig
from corpusflow.flows.cli import main


def test_defaults_and_overrides(tmp_path):
    cfg = JobConfig.build(None, corpus=str(tmp_path / "c"), out=str(tmp_path / "o"), **{"video.fps": 0.5})
    assert cfg.video.fps == 0.5 and cfg.models == "small-real"  # real models unless asked
    assert JobConfig.build(None, corpus="s3://b/p", out="s3://b/o").fingerprint() != cfg.fingerprint()


def test_fingerprint_ignores_resources_and_locations(tmp_path):
    a = JobConfig.build(None, corpus="a", out="b")
    b = JobConfig.build(None, corpus="c", out="d", **{"resources.asr.max_actors": 4, "usd_per_hour.H100": 1.0})
    assert a.fingerprint() == b.fingerprint()


def _profile(tmp_path, name: str, **options) -> str:
    f = tmp_path / f"{name}.yaml"
    f.write_text(yaml.safe_dump({"name": "talks", "asr": "tiny-random", "vlm": "tiny-random",
                                 "engine_options": {"default": options}}))
    return str(f)


def test_fingerprint_ignores_engine_speed_knobs_but_not_what_the_model_sees(tmp_path):
    plain = JobConfig.build(None, corpus="a", out="b", models=_profile(tmp_path, "plain"))
    tuned = JobConfig.build(None, corpus="a", out="b", models=_profile(
        tmp_path, "tuned", max_num_batched_tokens=16384, renderer_num_workers=8, mm_processor_cache_gb=0,
        max_num_seqs=64, gpu_memory_utilization=0.5, enable_prefix_caching=False))
    smaller = JobConfig.build(None, corpus="a", out="b", models=_profile(tmp_path, "smaller", max_frame_pixels=224 * 224))
    assert plain.fingerprint() == tuned.fingerprint()
    assert smaller.fingerprint() != plain.fingerprint()


def test_several_renderer_threads_need_the_preprocessing_cache_off(tmp_path):
    with pytest.raises(ConfigError) as e:
        JobConfig.build(None, corpus="a", out="b", models=_profile(tmp_path, "bad", renderer_num_workers=4))
    assert "mm_processor_cache_gb: 0" in str(e.value)


@pytest.mark.parametrize("yaml_text, expected", [
    ("video:\n  fps: -1\n", "video.fps"),
    ("video:\n  frame_size: 450\n", "multiple of 28"),
    ("resources:\n  asr:\n    min_actors: 3\n    max_actors: 1\n", "max_actors"),
    ("vidoe:\n  fps: 1\n", "vidoe"),
    ("- just\n- a list\n", "mapping"),
    ("models: no-such-profile\n", "no-such-profile"),
    ("resources:\n  asr:\n    ray_options: {num_gpus: 1}\n", "ray_options may not set ['num_gpus']"),
    ("resources:\n  gpu_stage: {num_cpus: 1}\n", "unknown stages ['gpu_stage']"),
])
def test_bad_config_is_rejected_with_a_clear_message(tmp_path, yaml_text, expected):
    f = tmp_path / "job.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        JobConfig.build(str(f), corpus=str(tmp_path / "c"), out=str(tmp_path / "o"))
    assert expected in str(e.value)


def test_cli_rejects_bad_input_before_starting_ray(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["run", str(tmp_path), "--out", "http://example.com/x"]) == 2
    assert "s3://bucket/prefix" in capsys.readouterr().err
    assert main(["run", str(tmp_path), "--out", str(tmp_path.parent / "o"), "--fps", "0"]) == 2
    assert "video.fps" in capsys.readouterr().err
    import ray

    assert not ray.is_initialized()


def test_an_out_inside_the_corpus_is_refused(tmp_path, capsys):
    (tmp_path / "corpus").mkdir()
    assert main(["run", str(tmp_path / "corpus"), "--out", str(tmp_path / "corpus" / "tables")]) == 2
    assert "lies inside corpus" in capsys.readouterr().err
    assert main(["run", "s3://bucket/corpus", "--out", "s3://bucket/corpus/out"]) == 2
    assert "lies inside corpus" in capsys.readouterr().err


def test_asr_batch_size_does_not_change_the_fingerprint():
    base = JobConfig.build(None, corpus="a", out="b")
    assert JobConfig.build(None, corpus="a", out="b", **{"asr.batch_size": 32}).fingerprint() == base.fingerprint()


def test_a_profile_file_travels_inside_the_config(tmp_path):
    config = JobConfig.build(None, corpus="a", out="b", models=_profile(tmp_path, "mine"))
    (tmp_path / "mine.yaml").unlink()  # a worker on another machine has no copy of the file
    on_worker = JobConfig.model_validate_json(config.model_dump_json())
    assert on_worker.profile.name == "talks" and on_worker.fingerprint() == config.fingerprint()


def test_random_models_are_named_and_real_ones_are_the_default():
    from corpusflow.contracts.config import BUILTIN_PROFILES

    assert JobConfig.build(None, corpus="a", out="b").profile.name == "small-real"
    assert BUILTIN_PROFILES["tiny-random"].random_outputs() == ["transcripts", "summaries", "search embeddings"]
    assert BUILTIN_PROFILES["small-real"].random_outputs() == ["summaries"]  # no small real VLM works offline
    assert "summaries come from random weights" in BUILTIN_PROFILES["small-real"].random_notice()
    assert BUILTIN_PROFILES["qwen2.5-vl-7b"].random_notice() is None

"""Serve configuration and request guards, without Ray: what an operator writes and what a client may name."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from corpusflow.contracts.config import ConfigError
from corpusflow.contracts.serve_config import ServeConfig
from corpusflow.serve_apps.guards import ApiError, check_uri, key_matches, load_api_keys

CONFIG_YAML = Path(__file__).resolve().parents[1] / "serve_apps" / "config.yaml"
CLUSTER_YAML = CONFIG_YAML.parents[1] / "cluster.yaml"


def test_defaults_bound_every_queue():
    s = ServeConfig()
    for name in ("api", "decode", "pdf", "asr", "frames", "vlm"):
        opts = getattr(s.deployments, name).serve_options()
        assert opts["max_queued_requests"] >= 1  # -1 (unbounded) cannot be configured
        assert opts["autoscaling_config"]["min_replicas"] >= 1


@pytest.mark.parametrize("bad", [
    {"deployments": {"asr": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}}},
    {"deployments": {"asr": {"max_queued_requests": -1}}},
    {"allowed_uri_prefixes": ["https://example.com/"]},
    {"allowed_uri_prefixes": ["/data"]},
    {"models": "no-such-profile"},
    {"max_request_mb": 0},
    {"overload_status": 500},
    {"deployments": {"asr": {"max_batch": 8}}},
    {"route_prefix": "cf"}, {"route_prefix": "/cf/"}, {"route_prefix": "/c f"},
    {"streaming": {"max_message_mb": 64}},  # past the proxy's own WebSocket limit it would not hold
    {"max_uri_mb": 0},
])
def test_bad_settings_are_refused_with_their_location(bad):
    with pytest.raises(ConfigError, match="invalid serve config"):
        ServeConfig.load(None, **bad)


def test_allowed_prefixes_end_at_a_folder_boundary():
    s = ServeConfig(allowed_uri_prefixes=("s3://bucket/videos",))
    assert s.allowed_uri_prefixes == ("s3://bucket/videos/",)
    assert check_uri("s3://bucket/videos/a.mp4", s.allowed_uri_prefixes)
    with pytest.raises(ApiError) as e:
        check_uri("s3://bucket/videos-private/a.mp4", s.allowed_uri_prefixes)
    assert e.value.status == 403


@pytest.mark.parametrize("uri,status", [
    ("http://169.254.169.254/latest/meta-data", 400), ("https://example.com/a.mp4", 400),
    ("/etc/passwd", 400), ("file:///etc/passwd", 400), ("../secret.pdf", 400),
    ("s3://bucket", 400), ("s3://bucket/videos/", 400), ("s3://bucket/videos/../keys/a.pdf", 400),
    ("s3://other/videos/a.mp4", 403), ("s3://bucket/a.mp4", 403),
])
def test_uris_outside_the_allow_list_are_refused(uri, status):
    with pytest.raises(ApiError) as e:
        check_uri(uri, ("s3://bucket/videos/",))
    assert e.value.status == status and e.value.detail


def test_api_keys_from_env_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CF_TEST_KEYS", "alpha, beta")
    (tmp_path / "keys").write_text("gamma\n\n")
    digests = load_api_keys("CF_TEST_KEYS", str(tmp_path / "keys"))
    assert all(key_matches(k, digests) for k in ("alpha", "beta", "gamma"))
    assert not key_matches("alph", digests) and not key_matches("", digests) and not key_matches(None, digests)


def test_no_api_key_means_no_start(monkeypatch):
    monkeypatch.delenv("CF_TEST_KEYS", raising=False)
    with pytest.raises(ConfigError, match="no API keys"):
        load_api_keys("CF_TEST_KEYS", None)


def test_deploy_config_is_valid_for_serve_and_for_us():
    from ray.serve.schema import ServeDeploySchema

    from corpusflow.serve_apps.app import app_builder

    raw = yaml.safe_load(CONFIG_YAML.read_text())
    ServeDeploySchema.model_validate(raw)
    app = raw["applications"][0]
    assert app["import_path"] == "corpusflow.serve_apps.app:app_builder"
    settings = ServeConfig.model_validate(app["args"])
    assert settings.deployments.asr.batching.max_batch_size > 1
    assert app_builder(app["args"]) is not None  # binds every deployment without starting Ray


def test_serve_command_refuses_a_bad_config_before_starting_ray(tmp_path, capsys):
    from corpusflow.serve_apps.run_local import main

    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    (tmp_path / "bad.yaml").write_text("deployments: {vlm: {max_ongoing_requests: 0}}\n")
    assert main(["--config", str(tmp_path / "bad.yaml")]) == 2
    assert "deployments.vlm.max_ongoing_requests" in capsys.readouterr().err


def test_serve_command_refuses_a_missing_or_empty_key_file_before_starting_ray(tmp_path, capsys, monkeypatch):
    from corpusflow.serve_apps.run_local import main

    monkeypatch.delenv("CORPUSFLOW_API_KEYS", raising=False)
    assert main(["--api-keys-file", str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").write_text("\n")
    assert main(["--api-keys-file", str(tmp_path / "empty"), "--route-prefix", "/cf"]) == 2
    err = capsys.readouterr().err
    assert "api_keys_file" in err and "no API keys" in err


def test_min_cpus_counts_every_warm_replica():
    s = ServeConfig.load(None, deployments={"asr": {"num_cpus": 2, "autoscaling": {"min_replicas": 3, "max_replicas": 4}}})
    d = s.deployments
    stages = d.api.num_cpus + d.decode.num_cpus + d.pdf.num_cpus + 6 + d.frames.num_cpus + d.vlm.num_cpus
    assert s.min_cpus == stages + s.streaming.deployment.num_cpus
    assert ServeConfig.load(None, deployments=s.deployments.model_dump(), streaming={"enabled": False}).min_cpus == stages


def test_a_label_selector_keeps_a_deployment_on_the_labelled_nodes():
    s = ServeConfig.load(None, deployments={"decode": {"label_selector": {"corpusflow/accelerator": "cpu"}}})
    assert s.deployments.decode.serve_options()["ray_actor_options"]["label_selector"] == {"corpusflow/accelerator": "cpu"}
    assert "label_selector" not in s.deployments.asr.serve_options()["ray_actor_options"]


def test_the_api_placed_on_cluster_yaml_fits_and_a_label_no_node_type_carries_is_refused():
    from corpusflow.actors.node_types import shapes_of_config
    from corpusflow.contracts.capacity import InfeasibleError
    from corpusflow.serve_apps.app import build_app

    capacity = (shapes_of_config(yaml.safe_load(CLUSTER_YAML.read_text())), "node types of cluster.yaml")
    cpu = {"label_selector": {"corpusflow/accelerator": "cpu"}}
    placed = {"api": cpu, "decode": cpu, "pdf": cpu, "frames": cpu,
              "asr": {"num_gpus": 0.25, "accelerator_type": "A10G", "label_selector": {"corpusflow/accelerator": "!cpu"}},
              "vlm": {"num_gpus": 1, "accelerator_type": "H100"}}
    assert build_app(ServeConfig.load(None, deployments=placed), capacity) is not None
    placed["pdf"] = {"label_selector": {"corpusflow/accelerator": "in(gpu, tpu)"}}
    with pytest.raises(InfeasibleError) as e:
        build_app(ServeConfig.load(None, deployments=placed), capacity)
    assert str(e.value).startswith(
        "deployment pdf asks {CPU 1} per replica on a node labelled {corpusflow/accelerator: in(gpu, tpu)}, which no "
        "node of the cluster can ever offer (node types of cluster.yaml: head {CPU 0} without those labels; "
        "cpu_worker {CPU 32} labelled {corpusflow/accelerator: cpu}; ")

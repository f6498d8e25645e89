"""cluster.yaml passes Ray's own checks, and infra/ (KubeRay, image, Prometheus, Grafana) stays in step with it.

No cluster is started: the files are loaded and compared, so drift between the VM launcher config and the
Kubernetes manifests fails CI instead of a 3 a.m. job.
"""
from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from corpusflow.contracts.placement import DEFAULT_PLACEMENT, ENVIRONMENTS
from corpusflow.flows import live_metrics
from corpusflow.serve_apps import batch_metrics

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
CLUSTER = yaml.safe_load((ROOT / "cluster.yaml").read_text())
MANIFESTS = ("raycluster.yaml", "rayjob.yaml", "rayservice.yaml")


def _ray_cluster_spec(manifest: str) -> dict:
    docs = list(yaml.safe_load_all((INFRA / "kuberay" / manifest).read_text()))
    res = next(d for d in docs if d["kind"] in ("RayCluster", "RayJob", "RayService"))
    return {"RayCluster": lambda s: s, "RayJob": lambda s: s["rayClusterSpec"],
            "RayService": lambda s: s["rayClusterConfig"]}[res["kind"]](res["spec"])


def _start_param(cmds: list[str], flag: str) -> str:
    m = re.search(rf"--{flag}=(\S+)", " ".join(cmds))
    assert m, f"--{flag} missing from {cmds}"
    return m.group(1)


def test_cluster_yaml_passes_rays_schema_and_checks() -> None:
    validate_config(prepare_config(CLUSTER))  # the schema Ray ships plus the launcher's own checks
    assert CLUSTER["provider"]["type"] == "aws"


def test_gpu_worker_types_offer_the_accelerators_stages_are_placed_on() -> None:
    offered = {}
    for name, nt in CLUSTER["available_node_types"].items():
        accs = [k.split(":", 1)[1] for k in nt["resources"] if k.startswith("accelerator_type:")]
        if nt["resources"].get("GPU"):
            assert len(accs) == 1, f"{name}: a GPU node type names exactly one accelerator type"
            assert nt["labels"]["corpusflow/accelerator"] == accs[0]
            offered[accs[0]] = nt["node_config"]["InstanceType"]
    assert offered == {"A10G": "g5.12xlarge", "H100": "p5.48xlarge"}
    assert {ray.util.accelerators.NVIDIA_TESLA_A10G, ray.util.accelerators.NVIDIA_H100} == set(offered)
    for stage in ("asr", "vlm"):  # every GPU stage can run on each GPU type, so each one-type option works
        assert set(DEFAULT_PLACEMENT.stages[stage].allowed()) == set(offered)


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_kuberay_manifest_matches_cluster_yaml(manifest: str) -> None:
    spec = _ray_cluster_spec(manifest)
    image = CLUSTER["docker"]["image"]
    assert spec["rayVersion"] == ray.__version__
    head = spec["headGroupSpec"]
    head_type = CLUSTER["available_node_types"][CLUSTER["head_node_type"]]
    assert head["rayStartParams"]["num-cpus"] == str(head_type["resources"]["CPU"])
    assert head["rayStartParams"]["metrics-export-port"] == _start_param(CLUSTER["head_start_ray_commands"],
                                                                         "metrics-export-port")
    assert head["template"]["spec"]["nodeSelector"]["node.kubernetes.io/instance-type"] == \
        head_type["node_config"]["InstanceType"]
    assert head["template"]["spec"]["containers"][0]["image"] == image

    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    workers = {n.replace("_", "-"): nt for n, nt in CLUSTER["available_node_types"].items()
               if n != CLUSTER["head_node_type"]}
    assert set(groups) == set(workers)
    for name, nt in workers.items():
        g, res = groups[name], nt["resources"]
        params = g["rayStartParams"]
        container = g["template"]["spec"]["containers"][0]
        assert container["image"] == image, name
        assert (g["minReplicas"], g["maxReplicas"]) == (nt["min_workers"], nt["max_workers"]), name
        assert params["num-cpus"] == str(res["CPU"]), name
        assert params.get("num-gpus", "0") == str(res.get("GPU", 0)), name
        assert params["metrics-export-port"] == _start_param(CLUSTER["worker_start_ray_commands"],
                                                             "metrics-export-port")
        custom = json.loads(json.loads(params["resources"])) if "resources" in params else {}
        assert custom == {k: v for k, v in res.items() if k not in ("CPU", "GPU")}, name
        assert dict(kv.split("=") for kv in params["labels"].split(",")) == nt["labels"], name
        assert g["template"]["spec"]["nodeSelector"]["node.kubernetes.io/instance-type"] == \
            nt["node_config"]["InstanceType"], name
        gpus = container["resources"]["limits"].get("nvidia.com/gpu", "0")
        assert gpus == str(res.get("GPU", 0)), name


def test_rayservice_places_gpu_deployments_on_offered_accelerators() -> None:
    from corpusflow.contracts.serve_config import ServeConfig

    svc = next(d for d in yaml.safe_load_all((INFRA / "kuberay" / "rayservice.yaml").read_text())
               if d["kind"] == "RayService")
    app = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"][0]
    settings = ServeConfig.model_validate(app["args"])  # the app's own validation, before any replica starts
    offered = {k.split(":", 1)[1] for g in _ray_cluster_spec("rayservice.yaml")["workerGroupSpecs"]
               for k in json.loads(json.loads(g["rayStartParams"].get("resources", '"{}"')))}
    used = {getattr(settings.deployments, d).accelerator_type for d in ("asr", "vlm")}
    assert used == {"A10G", "H100"} <= offered
    module, _, attr = app["import_path"].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_worker_image_carries_every_stage_environment_with_one_ray() -> None:
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    for env, python in ENVIRONMENTS.items():
        assert python.removesuffix("/bin/python") in dockerfile, env
    assert f"ARG RAY_VERSION={ray.__version__}" in dockerfile
    assert DEFAULT_PLACEMENT.runtime_env("vlm", "H100") == {"py_executable": ENVIRONMENTS["vllm"]}
    assert DEFAULT_PLACEMENT.runtime_env("asr", "A10G") == {}
    for copied in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, flags=re.M):
        assert (ROOT / copied).exists(), f"Dockerfile copies {copied}, which the repository lacks"


def test_prometheus_scrapes_where_ray_publishes_targets() -> None:
    from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

    prom = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    files = [f for job in prom["scrape_configs"] for sd in job.get("file_sd_configs", []) for f in sd["files"]]
    assert any(f.endswith(PROMETHEUS_SERVICE_DISCOVERY_FILE) for f in files)
    kuberay_prom = yaml.safe_load((INFRA / "prometheus" / "kuberay.yml").read_text())
    kuberay = next(j for j in kuberay_prom["scrape_configs"] if j.get("kubernetes_sd_configs"))
    assert any(r.get("regex") == "metrics" for r in kuberay["relabel_configs"])  # the port the manifests name


def test_grafana_dashboard_queries_only_metrics_and_labels_we_export() -> None:
    dash = json.loads((INFRA / "grafana" / "corpusflow.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exported = ({f"ray_{n}_total" for n in (*live_metrics.COUNTERS, "corpusflow_stage_runs", batch_metrics.BUSY_SECONDS)}
                | {f"ray_{batch_metrics.BATCH_SIZE}_{part}" for part in ("sum", "count", "bucket")})
    used = {m for e in exprs for m in re.findall(r"ray_corpusflow_\w+", e)}
    assert used and used <= exported, used - exported
    groupings = [grp for e in exprs for grp in re.findall(r"by \(([^)]*)\)", e)]
    labels = {lbl.strip() for grp in groupings for lbl in grp.split(",") if lbl.strip()}
    assert labels <= set(live_metrics.TAGS)
    assert "job_id" in dash["templating"]["list"][1]["query"]["query"]

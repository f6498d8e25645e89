"""vLLM's compile artifacts beside the weights: a node that compiled publishes them, the next node starts warm."""
from __future__ import annotations

from pathlib import Path

from corpusflow.actors.models.compile_cache import cache_env, local_compile_cache, publish_compile_cache


def _compile_into(folder: str) -> None:
    """What an engine start leaves behind: vLLM's, Inductor's and Triton's files under the variables' folders."""
    env = cache_env(folder)
    for var, name in (("VLLM_CACHE_ROOT", "torch_compile_cache/abc/rank_0_0/model"),
                      ("TORCHINDUCTOR_CACHE_DIR", "fx/kernel.py"), ("TRITON_CACHE_DIR", "k1/kernel.cubin")):
        path = Path(env[var]) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(var.encode() * 10)


def test_a_second_node_finds_the_first_nodes_artifacts_in_the_store(s3_bucket, tmp_path):
    source = f"s3://{s3_bucket}/models/qwen"
    first, second = str(tmp_path / "node1"), str(tmp_path / "node2")
    cold = local_compile_cache(source, "H100", first)
    assert not any(Path(cold).rglob("*.py"))  # nothing published yet: this node compiles
    _compile_into(cold)
    assert publish_compile_cache(source, "H100", first)
    assert not publish_compile_cache(source, "H100", first)  # published once

    warm = local_compile_cache(source, "H100", second)
    got = sorted(p.relative_to(warm).as_posix() for p in Path(warm).rglob("*") if p.is_file())
    assert got == sorted(p.relative_to(cold).as_posix() for p in Path(cold).rglob("*") if p.is_file())
    assert (Path(warm) / "inductor/fx/kernel.py").read_bytes() == b"TORCHINDUCTOR_CACHE_DIR" * 10
    # another GPU type (or vLLM / torch version) keys another folder: it starts cold
    other = local_compile_cache(source, "A10G", str(tmp_path / "node3"))
    assert not any(p.is_file() for p in Path(other).rglob("*"))


def test_weights_outside_the_store_keep_their_artifacts_on_the_node(tmp_path):
    folder = local_compile_cache(str(tmp_path / "weights"), "H100", str(tmp_path / "cache"))
    assert Path(folder).is_relative_to(tmp_path / "cache")
    _compile_into(folder)
    assert not publish_compile_cache(str(tmp_path / "weights"), "H100", str(tmp_path / "cache"))
    assert local_compile_cache(str(tmp_path / "weights"), "H100", str(tmp_path / "cache")) == folder

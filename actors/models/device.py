"""Which accelerator this process landed on, named as Ray's accelerator types name it."""
from __future__ import annotations

import functools

# Substrings of torch.cuda.get_device_name() → Ray accelerator type (ray.util.accelerators).
_GPU_TYPES = (("H200", "H200"), ("H100", "H100"), ("A100", "A100"), ("A10G", "A10G"), ("L40S", "L40S"),
              ("L4", "L4"), ("A10", "A10"), ("T4", "T4"), ("V100", "V100"))


@functools.lru_cache(maxsize=1)
def accelerator() -> str:
    """'cpu' without a visible GPU, else the GPU's type (e.g. 'A10G', 'H100'), else its raw name."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name(0)
    return next((t for key, t in _GPU_TYPES if key in name.upper()), name)


@functools.lru_cache(maxsize=1)
def reserved_accelerator() -> str:
    """The accelerator type this Ray worker holds, which its device time is billed as: the GPU's type,
    or, where Ray handed it GPUs that torch cannot see (the logical GPUs of a rehearsal on CPUs), the
    ``accelerator_type:`` resource of its node; 'cpu' when it holds no GPU."""
    found = accelerator()
    if found != "cpu":
        return found
    import ray

    if not ray.is_initialized() or not ray.get_runtime_context().get_accelerator_ids().get("GPU"):
        return "cpu"
    node_id = ray.get_runtime_context().get_node_id()
    resources = next((n["Resources"] for n in ray.nodes() if n["NodeID"] == node_id), {})
    types = [k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:")]
    return types[0] if len(types) == 1 else "cpu"


def torch_device() -> str:
    return "cpu" if accelerator() == "cpu" else "cuda"

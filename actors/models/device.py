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


def torch_device() -> str:
    return "cpu" if accelerator() == "cpu" else "cuda"

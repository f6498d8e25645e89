"""Prices that turn device-seconds into dollars.

Defaults are public AWS on-demand prices per GPU (us-east-1, per instance divided by its GPUs) and a
per-vCPU price for CPU stages; jobs override them with ``usd_per_hour`` in config.
"""
from __future__ import annotations

from typing import Mapping

DEFAULT_USD_PER_HOUR: dict[str, float] = {
    "A10G": 1.006,   # g5.xlarge, 1 GPU
    "L4": 0.805,     # g6.xlarge
    "A100": 4.096,   # p4d.24xlarge / 8
    "H100": 6.880,   # p5.48xlarge / 8
    "H200": 7.910,   # p5e.48xlarge / 8
    "cpu": 0.048,    # per vCPU (m7i)
}


def usd_per_hour(accelerator: str, prices: Mapping[str, float]) -> float:
    """Hourly price of one unit of ``accelerator``; unknown types cost nothing rather than guess."""
    return float(prices.get(accelerator, prices.get(accelerator.upper(), 0.0)))


def cost_usd(device_s: float, accelerator: str, prices: Mapping[str, float]) -> float:
    return device_s / 3600.0 * usd_per_hour(accelerator, prices)

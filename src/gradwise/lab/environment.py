"""What the report says about the machine: versions, CPU / GPU, threads."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("gradwise", "torch", "optuna", "numpy", "scikit-learn", "matplotlib", "sqlalchemy")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(threads: int | None = None) -> dict[str, str]:
    """Versions, CPU / GPU, cores and torch threads of this process (`threads`: those the runs use)."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "logical cores (usable)": f"{os.cpu_count()} ({usable})",
        "torch threads per run": str(threads or torch.get_num_threads()),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (runs on the CPU)",
        **{f"version {k}": v for k, v in versions.items()},
    }

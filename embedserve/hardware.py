"""What the CPU offers this process: the cores it may really use (affinity and cgroup quota) and whether it runs
bfloat16 natively. Plain Python, read once per call, no inference runtime imported."""

from __future__ import annotations

import math
import os
from functools import cache
from pathlib import Path

_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
_CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""x86 flags of CPUs that compute bfloat16 in hardware; elsewhere bfloat16 is emulated and slower than float32."""


def available_cores() -> int:
    """Cores this process may keep busy: the CPUs it is allowed to run on, capped by a container's CPU quota
    (a pod with ``limits.cpu: 2`` on a 64-core node gets 2, where ``os.cpu_count()`` would say 64)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def cgroup_cpu_quota() -> float | None:
    """CPUs' worth of time the cgroup may use per period, or None when unlimited or not in a cgroup."""
    try:
        if _CGROUP_V2.is_file():
            quota, _, period = _CGROUP_V2.read_text().strip().partition(" ")
            return None if quota == "max" else int(quota) / int(period or 100_000)
        if _CGROUP_V1_QUOTA.is_file():
            quota_us = int(_CGROUP_V1_QUOTA.read_text())
            return None if quota_us <= 0 else quota_us / int(_CGROUP_V1_PERIOD.read_text())
    except (OSError, ValueError):
        return None
    return None


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


@cache
def cpu_name() -> str:
    """The CPU model name, to tell whether a measurement taken on another machine still applies."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return "unknown"


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX)."""
    return any(flag in cpu_flags() for flag in _NATIVE_BF16_FLAGS)

"""How many CPUs this process may use: the one answer for every thread-count default (ONNX Runtime's
intra-op threads, the preprocessing pool, and later `--workers auto`). Standard library only, so a process
that only counts CPUs does not load an inference runtime.

Two limits apply, and the smaller wins:

* the affinity mask (`taskset`, cpusets, Kubernetes' static CPU manager under Guaranteed QoS);
* the CFS quota of the process's cgroup (a Kubernetes `limits.cpu` without Guaranteed QoS, `docker run
  --cpus`): the mask is then every core of the node, but the process is throttled past quota/period
  cores' worth of time per period, so one thread per node core only queues for the quota. cgroup v2's
  `cpu.max` ("max 100000", or "200000 100000": 2 CPUs) and cgroup v1's `cpu.cfs_quota_us` /
  `cpu.cfs_period_us` (quota -1: none) are read, for the process's own cgroup and every ancestor.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
_V1_CPU_DIRS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


def default_threads(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """The CPUs this process may use: min(affinity mask, ceil(cgroup CPU quota)), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (quota / period, the smallest along its ancestors),
    or None when there is none or no cgroup file can be read."""
    paths = _cgroup_paths(proc_cgroup)
    limits: list[float] = []
    for directory in _ancestors(cgroup_root, paths.get("")):  # v2: one unified hierarchy
        limit = _read_cpu_max(directory / "cpu.max")
        if limit is not None:
            limits.append(limit)
    for name in _V1_CPU_DIRS:
        for directory in _ancestors(cgroup_root / name, paths.get("cpu")):
            limit = _read_cfs(directory)
            if limit is not None:
                limits.append(limit)
    return min(limits) if limits else None


def _cgroup_paths(proc_cgroup: Path) -> dict[str, str]:
    """The process's cgroup path per hierarchy: "" for v2's unified one, "cpu" for v1's cpu controller."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return {}
    paths: dict[str, str] = {}
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            paths[""] = path
        elif "cpu" in controllers.split(","):
            paths["cpu"] = path
    return paths


def _ancestors(mount: Path, path: str | None) -> list[Path]:
    """`mount` joined with the cgroup path and each of its parents, down to `mount` itself. Inside a
    container with its own cgroup namespace the path is "/", and `mount` is the container's cgroup."""
    directories = [mount]
    if path:
        parts = [p for p in path.strip("/").split("/") if p and p != ".."]
        directories += [mount.joinpath(*parts[:i]) for i in range(1, len(parts) + 1)]
    return directories


def _read_cpu_max(path: Path) -> float | None:
    try:
        fields = path.read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _read_cfs(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None

"""Thread defaults follow the CPU quota of the process's cgroup (a Kubernetes limit without Guaranteed QoS
leaves the affinity mask at every core of the node), read from fake cgroup files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from resnet_serve.runtime.cpus import cgroup_cpu_quota, default_threads

AFFINITY = len(os.sched_getaffinity(0))


def cgroup_v2(tmp_path: Path, cpu_max: str, nested: str = "") -> tuple[Path, Path]:
    """A fake unified hierarchy whose cpu.max (at `nested`, the process's cgroup path) says `cpu_max`."""
    root = tmp_path / "cgroup"
    directory = root / nested.strip("/") if nested else root
    directory.mkdir(parents=True)
    (directory / "cpu.max").write_text(cpu_max + "\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(f"0::{nested or '/'}\n")
    return root, proc


@pytest.mark.parametrize(
    ("cpu_max", "quota"), [("200000 100000", 2.0), ("150000 100000", 1.5), ("max 100000", None)]
)
def test_cgroup_v2_cpu_max_is_read_as_cpus(tmp_path: Path, cpu_max: str, quota: float | None) -> None:
    assert cgroup_cpu_quota(*cgroup_v2(tmp_path, cpu_max)) == quota


def test_thread_default_is_the_smaller_of_the_affinity_mask_and_the_rounded_up_quota(tmp_path: Path) -> None:
    assert default_threads(*cgroup_v2(tmp_path / "a", "50000 100000")) == 1  # half a CPU: one thread
    assert default_threads(*cgroup_v2(tmp_path / "b", "150000 100000")) == min(AFFINITY, 2)
    huge = f"{(AFFINITY + 8) * 100000} 100000"  # more quota than cores: the mask decides
    assert default_threads(*cgroup_v2(tmp_path / "c", huge)) == AFFINITY
    assert default_threads(*cgroup_v2(tmp_path / "d", "max 100000")) == AFFINITY


def test_the_tightest_quota_along_the_cgroup_path_wins(tmp_path: Path) -> None:
    root, proc = cgroup_v2(tmp_path, "300000 100000", nested="/kubepods/pod1/ctr")
    (root / "kubepods" / "cpu.max").write_text("100000 100000\n")  # the pod's limit, above the container
    assert cgroup_cpu_quota(root, proc) == 1.0


def test_cgroup_v1_cfs_quota_and_period(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    cpu = root / "cpu,cpuacct" / "docker" / "abc"
    cpu.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text("250000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    assert cgroup_cpu_quota(root, proc) == 2.5
    assert default_threads(root, proc) == min(AFFINITY, 3)
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")  # no quota
    assert cgroup_cpu_quota(root, proc) is None


def test_no_cgroup_files_leave_the_affinity_mask(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path / "none", tmp_path / "missing") is None
    assert default_threads(tmp_path / "none", tmp_path / "missing") == AFFINITY

"""The node-loss drill of the local test cluster (scripts/local-slurm.sh), shared by the drill tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psutil


def kill_node(node: str) -> int:
    """SIGKILL a node's slurmd and every process of the jobs on it; returns how many were killed.

    After SlurmdTimeout (10 s on the test cluster) the node is DOWN and its jobs end NODE_FAIL;
    ``local-slurm.sh start`` brings it back.
    """
    pid = int((Path(os.environ["LOCAL_SLURM_DIR"]) / "run" / f"slurmd-{node}.pid").read_text())
    ids = set(subprocess.run(["squeue", "-h", "-w", node, "-o", "%A"], capture_output=True, text=True,
                             check=True).stdout.split())
    procs = [psutil.Process(pid)]
    for p in psutil.process_iter(["name", "cmdline", "environ"]):
        try:
            env = p.info["environ"] or {}
            cmd = " ".join(p.info["cmdline"] or [])
            if env.get("SLURMD_NODENAME") == node or env.get("SLURM_JOB_ID") in ids or \
                    ("slurmstepd" in cmd and any(f"[{i}." in cmd for i in ids)):
                procs.append(p)
        except (psutil.Error, TypeError):
            continue
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    return len(procs)

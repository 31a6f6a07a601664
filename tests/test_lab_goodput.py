"""lab/goodput.py's server CPU: `serve --workers N` does its protocol work in worker processes, so the CPU the
script charges to the server is that of the whole process tree, not the engine's /proc entry alone."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from lab import goodput
from lab.serving_floor import process_tree_cpu

CHILD = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\ntime.sleep(60)\n"
PARENT = textwrap.dedent(f"""
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", {CHILD!r}])
    time.sleep(60)
""")


def test_the_server_cpu_includes_the_processes_under_the_server() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT])
    try:
        deadline = time.monotonic() + 30
        total = 0.0
        while time.monotonic() < deadline and total < 0.45:
            time.sleep(0.1)
            total = goodput.cpu_seconds(parent.pid)
        own = process_tree_cpu(parent.pid)[parent.pid][0]
        assert total >= 0.45, f"the child's 0.5 s of CPU is missing: {total:.2f} s"
        assert own < 0.4  # the parent itself only started the child and slept
    finally:
        subprocess.run(["pkill", "-P", str(parent.pid)], check=False)
        parent.kill()
        parent.wait()

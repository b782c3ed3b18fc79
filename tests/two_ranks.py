"""Two gloo ranks running one script, for the data-parallel tests: each a fresh interpreter with
the launcher's variables set as torchrun sets them."""

import subprocess
import sys
from pathlib import Path

from dorefa import distributed


def run_two_ranks(script: Path, env: dict) -> list[str]:
    """Run ``script`` as ranks 0 and 1 of a gloo group (``env``: the environment without the
    launcher's variables); returns each rank's output, after checking both exited with 0."""
    group = dict(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(distributed._free_port()))
    procs = [
        subprocess.Popen(
            [sys.executable, str(script)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env | group | {"RANK": str(r)},
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    return outs

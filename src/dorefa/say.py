"""Warnings to the user on stderr, said once per run.

Under a launcher (torchrun, ``dorefa train --nproc N``) every worker loads the same data and
meets the same warnings; only rank 0 says them (with 2 workers each line came twice). Knowing
whether this process is a worker needs only the environment the launcher sets, so this module
imports no torch and the data loaders use it too.
"""

from __future__ import annotations

import os
import sys

# What torchrun (and ``distributed.launch``) set in each worker's environment; a subprocess that
# is not a worker (a sweep's cells) must not inherit them.
LAUNCHER_VARS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def launched() -> bool:
    """Whether a launcher started this process as a worker: WORLD_SIZE, RANK, MASTER_ADDR and
    MASTER_PORT all set (torchrun sets them even with one process)."""
    return all(os.environ.get(k) for k in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"))


def warning(text: str) -> None:
    """``warning: text`` on stderr, except in a launched worker other than rank 0."""
    if launched() and os.environ.get("RANK", "0").strip() != "0":
        return
    print(f"warning: {text}", file=sys.stderr)

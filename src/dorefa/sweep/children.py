"""The sweep's subprocesses: started with one thread each and a clean environment, ended with the
sweep (``stop()``, and SIGTERM from the kernel if the sweep itself dies), so no orphan keeps
writing into a cell's folder."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

from ..process import die_with_parent


def child_env() -> dict:
    """This environment, with this dorefa package first on PYTHONPATH and one thread; without a
    launcher's variables (a sweep run under torchrun: each cell is its own single run)."""
    from ..say import LAUNCHER_VARS

    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    src = str(Path(__file__).resolve().parents[2])  # the folder holding this dorefa package
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    return env


class Children:
    """The cells' subprocesses; ``stop()`` ends them and refuses new ones."""

    def __init__(self):
        self.lock = threading.Lock()
        self.procs: dict[str, subprocess.Popen] = {}
        self.stopped = False

    def start(self, name: str, cmd: list[str], logf) -> subprocess.Popen:
        with self.lock:
            if self.stopped:
                raise RuntimeError("the sweep is stopping")
            proc = subprocess.Popen(
                cmd,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=child_env(),
                preexec_fn=die_with_parent if os.name == "posix" else None,
            )
            self.procs[name] = proc
            return proc

    def run(self, name: str, cmd: list[str], log_path: Path) -> int:
        """Run ``cmd`` to its end, appending the command line and its output to ``log_path``;
        returns its exit code (negative: killed by that signal)."""
        with open(log_path, "a") as logf:
            logf.write(f"$ {' '.join(cmd)}\n")
            logf.flush()
            proc = self.start(name, cmd, logf)
            try:
                return proc.wait()
            finally:
                self.done(name)

    def done(self, name: str) -> None:
        with self.lock:
            self.procs.pop(name, None)

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            for proc in self.procs.values():
                proc.terminate()  # the cell keeps its last epoch checkpoint; --resume continues


def last_error(log_path: Path) -> str:
    """The last line of a log that mentions an error (else its last line), for a result row."""
    lines = [ln for ln in log_path.read_text().splitlines() if ln.strip()]
    return next((ln for ln in reversed(lines) if "rror" in ln), lines[-1] if lines else "").strip()

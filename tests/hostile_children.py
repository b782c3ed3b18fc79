"""The programs that tests/test_hostile.py runs in child processes, so that a crash (a signal,
a hang) fails a test instead of killing pytest: ``python tests/hostile_children.py MODE ARGS``.

- ``fork-runner CASES.json RESULTS.json``: each case is ``python -m dorefa ARGV`` in a forked
  copy of one warm interpreter (a fresh one costs ~2 s of imports; a fork costs milliseconds),
  so each case still has its own process, exit code, stdout and stderr;
- ``fuzz MODEL.dorefa WORKDIR``: loads thousands of damaged copies of a ``.dorefa`` file;
- ``api MODEL.dorefa``: calls a loaded model with odd inputs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

JOBS = 2  # forked cases side by side


# ------------------------------------------------------------------ the fork runner
WARM = ("dorefa.cli", "dorefa.train", "dorefa.exporter", "dorefa.sweep", "dorefa.runtime.cli")
WARM += ("dorefa.runtime.executor", "torch._dynamo", "matplotlib.pyplot", "PIL.Image", "scipy.io")


def _fork_case(argv: list[str], cwd: str, base: str) -> int:
    """Fork; the child runs ``python -m dorefa argv`` with stdout/stderr in base.out/.err."""
    import runpy
    import traceback

    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.setsid()  # its own process group: a timeout kills what it started too
        os.chdir(cwd)
        for fd, suffix in ((1, ".out"), (2, ".err")):
            f = os.open(base + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        sys.argv = ["dorefa", *argv]
        runpy.run_module("dorefa", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:  # what the interpreter does with sys.exit(x)
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def fork_runner(cases_json: str, results_json: str) -> None:
    import importlib

    os.environ.setdefault("MPLBACKEND", "Agg")
    for mod in WARM:
        try:
            importlib.import_module(mod)
        except ImportError:
            pass
    cases = json.loads(Path(cases_json).read_text())
    logs = Path(results_json).with_suffix(".logs")
    logs.mkdir(exist_ok=True)
    results, pending, running = {}, list(cases), {}
    while pending or running:
        while pending and len(running) < JOBS:
            c = pending.pop(0)
            base = str(logs / c["id"])
            pid = _fork_case(c["argv"], c["cwd"], base)
            running[pid] = (c, time.monotonic(), base)
        for pid, (c, t0, base) in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            late = not done and time.monotonic() - t0 > c["timeout"]
            if late:
                os.killpg(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
            if done or late:
                del running[pid]
                text = [Path(base + s).read_text(errors="replace") for s in (".out", ".err")]
                rc = os.waitstatus_to_exitcode(status)
                results[c["id"]] = dict(rc=rc, out=text[0], err=text[1], timed_out=late)
                results[c["id"]]["seconds"] = round(time.monotonic() - t0, 2)
        time.sleep(0.005)
    Path(results_json).write_text(json.dumps(results))


# ------------------------------------------------------------------ .dorefa fuzz
FUZZ_SEED = 20240613


def resign(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


def _slots(o, acc=None) -> list:
    """Every (container, key) of a JSON value, depth first."""
    acc = [] if acc is None else acc
    for k, v in o.items() if isinstance(o, dict) else enumerate(o):
        acc.append((o, k))
        if isinstance(v, (dict, list)):
            _slots(v, acc)
    return acc


def _fuzz_files(data: bytes, rng: np.random.Generator):
    """(kind, bytes): truncations at every section boundary, flips, hostile re-signed headers."""
    import struct

    magic, version, hlen, dlen = struct.unpack_from("<8sIIQ", data)
    header = json.loads(data[24 : 24 + hlen])
    blob = data[24 + hlen : -32]
    arrays = [o[k] for o, k in _slots(header) if isinstance(o[k], dict) and "nbytes" in o[k]]
    cuts = {0, 8, 12, 16, 24, 24 + hlen, len(data) - 32, len(data)}
    cuts |= {24 + hlen + a["offset"] + end for a in arrays for end in (0, a["nbytes"])}
    for c in sorted(cuts):
        for n in (c - 1, c, c + 1):
            if 0 <= n < len(data):
                yield "truncated", data[:n]
                if n >= 24 + hlen:  # a hostile writer fixes the sizes and the checksum too
                    body = struct.pack("<8sIIQ", magic, version, hlen, n - 24 - hlen)
                    yield "truncated+resigned", resign(body + data[24:n])
    for _ in range(600):
        b = bytearray(data)
        for pos in rng.integers(0, len(b), rng.integers(1, 5)):
            b[pos] = int(rng.integers(0, 256))
        if bytes(b) != data:
            yield "flipped", bytes(b)
    body = bytearray(data[:-32])
    for _ in range(1000):  # flips in the JSON header, checksum fixed
        b = bytearray(body)
        for pos in rng.integers(24, 24 + hlen, rng.integers(1, 4)):
            b[pos] = int(rng.integers(32, 127))
        yield "header-flipped+resigned", resign(bytes(b))
    for _ in range(200):  # flips in the data blob, checksum fixed
        b = bytearray(body)
        for pos in rng.integers(24 + hlen, len(body), rng.integers(1, 4)):
            b[pos] = int(rng.integers(0, 256))
        yield "blob-flipped+resigned", resign(bytes(b))
    evil = [-1, 0, 1, 3, 2**31, 2**63, -(2**63), 1e308, 0.5, "x", None, True, [], {}, [2**40]]
    for _ in range(1200):  # one JSON value replaced by a hostile one or deleted, checksum fixed
        h = json.loads(json.dumps(header))
        slots = _slots(h)
        o, k = slots[int(rng.integers(len(slots)))]
        if rng.random() < 0.2:  # or deleted
            del o[k]
        else:
            o[k] = evil[int(rng.integers(len(evil)))]
        text = json.dumps(h).encode()
        text += b" " * (-(24 + len(text)) % 64)
        yield (
            "value-replaced+resigned",
            resign(struct.pack("<8sIIQ", magic, version, len(text), len(blob)) + text + blob),
        )


def fuzz_runner(model_path: str, work: str) -> None:
    """Load thousands of damaged copies; every failure must be FormatError; prints a summary."""
    import resource
    import traceback

    import dorefa.runtime as rt
    from dorefa.runtime import FormatError

    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # absurd sizes -> MemoryError
    data = Path(model_path).read_bytes()
    bad_path = Path(work) / "fuzz.dorefa"
    counts, failures, t0 = {}, [], time.process_time()  # CPU time: a loaded host waits
    for i, (kind, blob) in enumerate(_fuzz_files(data, np.random.default_rng(FUZZ_SEED))):
        print(i, kind, flush=True)  # the last line names the culprit of a crash
        bad_path.write_bytes(blob)
        outcome = "loaded"
        try:
            model = rt.load(bad_path)
            if math.prod(model.input_shape) <= 1 << 20:
                y = model(np.full((1, *model.input_shape), 0.5, np.float32))
                assert y.shape == (1, model.num_classes), y.shape
                outcome = "loaded+ran"
        except FormatError as e:
            outcome = "FormatError"
            if not str(e).startswith(str(bad_path)):
                failures.append(f"{i} {kind}: FormatError without the file name: {e}")
        except BaseException as e:  # MemoryError, IndexError, ... anything else is a bug
            outcome = type(e).__name__
            tb = traceback.format_exc(limit=-2).strip().splitlines()
            failures.append(f"{i} {kind}: {type(e).__name__}: {e} at {tb[-3:]}"[:600])
        counts[f"{kind}: {outcome}"] = counts.get(f"{kind}: {outcome}", 0) + 1
    summary = dict(n=i + 1, seconds=time.process_time() - t0, counts=counts, failures=failures)
    print("SUMMARY " + json.dumps(summary))


# ------------------------------------------------------------------ runtime API
def api_runner(model_path: str) -> None:
    """Call a loaded model with odd inputs; prints one JSON line per case."""
    import dorefa.runtime as rt

    m = rt.load(model_path)
    c, h, w = m.input_shape
    x = np.random.default_rng(0).random((3, c, h, w), dtype=np.float32)
    ref = m(x)
    big = np.zeros((3, c, 2 * h, 2 * w), np.float32)
    big[..., ::2, ::2] = x
    nan, inf, frozen = x.copy(), x.copy(), x.copy()
    nan[1, 0, 3, 3], inf[2, 0, 5, 5] = np.nan, np.inf
    frozen.setflags(write=False)
    cases = {
        "float32": lambda: m(x),
        "float64": lambda: m(x.astype(np.float64)),
        "non-contiguous": lambda: m(
            np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        ),
        "strided": lambda: m(big[..., ::2, ::2]),
        "fortran-order": lambda: m(np.asfortranarray(x)),
        "read-only": lambda: m(frozen),
        "int": lambda: m((x > 0.5).astype(np.int64)),
        "list": lambda: m(x.tolist()),
        "wrong-rank-3": lambda: m(x[0]),
        "wrong-rank-5": lambda: m(x[None]),
        "wrong-channels": lambda: m(np.zeros((3, c + 2, h, w), np.float32)),
        "wrong-size": lambda: m(np.zeros((3, c, h - 1, w), np.float32)),
        "empty-batch": lambda: m(x[:0]),
        "nan": lambda: m(nan),
        "inf": lambda: m(inf),
        "threads-0": lambda: m(x, threads=0),
        "load-threads-0": lambda: rt.load(model_path, threads=0),
    }
    for name, fn in cases.items():
        print(f"# {name}", file=sys.stderr, flush=True)
        x_before = x.copy()
        try:
            y = fn()
            y = np.zeros(0) if hasattr(y, "num_classes") else np.asarray(y)  # load: a Model
            r = dict(outcome="ok", shape=list(y.shape), dtype=str(y.dtype))
            if name in ("int", "list"):
                want = m(np.asarray(x > 0.5, np.float32)) if name == "int" else ref
                r["same"] = bool(y.shape == want.shape and np.array_equal(y, want))
            else:
                r["same"] = bool(y.shape == ref.shape and np.array_equal(y, ref))
        except Exception as e:
            r = dict(outcome=type(e).__name__, message=str(e))
        r["input_untouched"] = bool(np.array_equal(x, x_before))
        print(json.dumps(dict(r, name=name)), flush=True)
    print(json.dumps(dict(name="_meta", classes=m.num_classes)))


MODES = {"fork-runner": fork_runner, "fuzz": fuzz_runner, "api": api_runner}

if __name__ == "__main__":
    MODES[sys.argv[1]](*sys.argv[2:])

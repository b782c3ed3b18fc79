"""Atomic file writes: one helper for every file that a crash must not leave half-written
(checkpoints, ``.dorefa`` models, sweep records, tables and plots).

The data goes to a temporary file in the destination's folder, is flushed and fsynced, then
renamed over the destination (``os.replace`` is atomic on POSIX within one file system), so a
reader sees either the old file or the whole new one. A failed write removes its temporary file.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()  # what open() would give a new file (mkstemp gives 0600)


def resolved_path(path: str | os.PathLike) -> str:
    """``path`` as one spelling of its place: ``~`` expanded, absolute, links resolved (how a
    run records a folder, and how two spellings are compared)."""
    return str(Path(path).expanduser().resolve())


class WriteError(OSError):
    """A file :func:`atomic_write` could not create; its message is whole (the file, the reason,
    what to do), so callers pass it on as it is."""


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a temporary binary file, fsync it, and rename it to ``path``."""
    path = Path(path)
    if path.exists() and not path.is_file():  # os.replace would put a file in a device's place
        raise _not_a_file(path)
    try:
        folder = next((p for p in path.parents if p.exists()), None)
        if folder is not None and not folder.is_dir():  # mkdir would say "File exists"
            raise WriteError(
                f"cannot write {path}: {folder} is a file, not a folder; give a path in a folder"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except WriteError:
        raise
    except OSError as exc:  # name the file asked for, not the temporary one
        raise WriteError(
            f"cannot write {path}: {exc.strerror or exc}; give a path in a writable folder"
        ) from exc
    try:
        os.fchmod(fd, _MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.replace(tmp, path)
        except IsADirectoryError as exc:  # a folder made there since the check above
            raise _not_a_file(path) from exc
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _not_a_file(path: Path) -> ValueError:
    return ValueError(
        f"{path} exists and is not a regular file (a folder, a device or a pipe); give the path "
        "of a file to write"
    )


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def atomic_savefig(fig, path: str | os.PathLike, **kwargs) -> Path:
    """``fig.savefig`` through :func:`atomic_write` (the format is taken from ``path``'s suffix)."""
    fmt = kwargs.pop("format", Path(path).suffix.lstrip(".") or "png")
    return atomic_write(path, lambda f: fig.savefig(f, format=fmt, **kwargs))


# The lock files this process holds open. A forked child (a DataLoader worker) closes its
# copies at once: the flock belongs to the open file, so a child keeping one would hold the
# folder after its parent was killed, until the child noticed and ended (seconds).
_HELD_LOCKS: set[int] = set()


def _close_held_locks_in_child() -> None:
    for fd in _HELD_LOCKS:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_locks_in_child)


class FolderLock:
    """An exclusive lock on a folder while one process writes it (``flock`` on ``folder/.lock``,
    which names the holder: its pid and what it is): a second writer stops before it writes
    anything. Released by :meth:`release` or when the process ends (the kernel drops the lock
    with the file; forked children close their copy of it, so they never hold it). Where the
    file system cannot lock, or the lock file is not ours to open, the writer warns and goes on
    unlocked, as it did before there was a lock."""

    NAME = ".lock"

    def __init__(self, folder: str | os.PathLike, what: str):
        self.folder = Path(folder)
        self.what = what  # the writer, for the message: "`dorefa train`"
        self._fd: int | None = None
        self._pid = 0  # the process that took the lock
        self._made = False  # acquire() made the folder
        self._made_file = False  # ... and the lock file

    def acquire(self) -> None:
        """Create the folder if needed and take the lock; ValueError names the holder."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        self._made = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / self.NAME
        self._made_file = not path.exists()
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:  # another user's lock file: flock works on a read-only open
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                return self._unlocked(exc)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip().split(" ", 1)
            os.close(fd)
            who = f"{holder[1]} (process {holder[0]})" if len(holder) == 2 else "another process"
            raise ValueError(
                f"{self.folder} is being written by {who}; wait for it to end, or choose "
                "another --out"
            ) from None
        except OSError as exc:  # no flock here (some network file systems)
            os.close(fd)
            return self._unlocked(exc)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {self.what}\n".encode())
        except OSError:
            pass  # locked all the same; the holder goes unnamed
        self._fd, self._pid = fd, os.getpid()
        _HELD_LOCKS.add(fd)

    def _unlocked(self, exc: OSError) -> None:
        print(
            f"warning: cannot lock {self.folder} ({exc.strerror or exc}): a second writer into "
            "it would not be stopped",
            file=sys.stderr,
        )

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Leaving a ``with`` block releases the lock, tidying after an error (release)."""
        self.release(tidy=exc_type is not None)

    def release(self, tidy: bool = False) -> None:
        """Let go of the lock; ``tidy`` (the writer stopped before writing anything): also
        remove the lock file and the folder if acquire() made them and nothing else is there."""
        if self._fd is None or self._pid != os.getpid():  # a forked child has no lock to drop
            return
        if tidy and self._made_file:  # unlinked while held: a newcomer makes a fresh file
            (self.folder / self.NAME).unlink(missing_ok=True)
        _HELD_LOCKS.discard(self._fd)
        os.close(self._fd)  # closing the file releases the flock
        self._fd = None
        if tidy and self._made and not any(self.folder.iterdir()):
            self.folder.rmdir()


def read_json(path: str | os.PathLike, kind: type = dict) -> object:
    """The JSON value of ``path``, which must be a ``kind``; ValueError names the file."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: not a JSON file ({exc}); move it away or delete it") from None
    if not isinstance(value, kind):
        raise ValueError(
            f"{path}: holds a JSON {type(value).__name__}, not the {kind.__name__} expected; "
            "move it away or delete it"
        )
    return value

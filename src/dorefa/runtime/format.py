"""The ``.dorefa`` file: a bit-packed, BN-folded DoReFa network for :mod:`dorefa.runtime`.

Layout (all integers little-endian; no pickle anywhere)::

    offset 0   magic        8 bytes  b"\\x89DOREFA\\n"
           8   version      uint32   FORMAT_VERSION
          12   header_len   uint32   bytes of the JSON header (space-padded so data is 64-aligned)
          16   data_len     uint64   bytes of the data blob
          24   header       JSON (UTF-8): {"format", "input_shape", "num_classes", "bits",
                            "nodes": [...], "output", "meta": {...}} (version 2, a graph;
                            version 1 had a chain "layers": [...] instead of nodes and
                            output, still read); every array is an entry
                            {"dtype", "shape", "offset", "nbytes"} pointing into the blob
     24+hlen   data         raw little-endian arrays, each 64-byte aligned
         end   sha256       32 bytes: SHA-256 of every byte before it

A reader trusts nothing: the file size must be exactly what the fixed header says, the
checksum must match, every size is bounded before anything is allocated, and every array
entry must lie inside the blob with ``nbytes == prod(shape) * itemsize``. Anything else raises
:class:`FormatError` naming the file. This module imports numpy and :mod:`dorefa.fileio` only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import struct
from pathlib import Path

import numpy as np

from ..fileio import atomic_write_bytes

MAGIC = b"\x89DOREFA\n"
FORMAT_VERSION = 2  # written: a graph of named nodes (dorefa.runtime.loader)
FORMAT_VERSION_CHAIN = 1  # still read: a chain of layers, converted to a graph at load
READ_VERSIONS = (FORMAT_VERSION_CHAIN, FORMAT_VERSION)
FORMAT_NAME = "dorefa-runtime"
_FIXED = struct.Struct("<8sIIQ")  # magic, version, header_len, data_len
_DIGEST = 32
ALIGN = 64
MAX_FILE_BYTES = 1 << 32  # 4 GiB: far above any model this runtime targets
MAX_HEADER_BYTES = 1 << 22  # 4 MiB of JSON
DTYPES = {"<f4": np.float32, "<i4": np.int32, "|u1": np.uint8, "|i1": np.int8}


AGAIN = "copy it again, or make it again with `dorefa export`"  # what a damaged file needs


class FormatError(ValueError):
    """A ``.dorefa`` file is missing, truncated, altered, or not one this runtime can run."""


# ----------------------------------------------------------------------------- writing
def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def write(
    path: str | os.PathLike,
    header: dict,
    arrays: dict[str, np.ndarray],
    version: int = FORMAT_VERSION,
) -> int:
    """Write ``header`` (JSON-able; arrays referenced as ``{"array": name}``) and ``arrays``.

    Each ``{"array": name}`` placeholder in the header is replaced by its blob entry. The file
    is written atomically (:func:`dorefa.fileio.atomic_write_bytes`: temp file, fsync,
    rename). ``version`` goes into the fixed header (tests write version-1 chains with it).
    Returns the file's size.
    """
    blob = bytearray()
    entries: dict[str, dict] = {}
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        key = dt.str
        if key not in DTYPES:
            raise ValueError(
                f"array {name!r} has dtype {a.dtype}; the format stores {', '.join(DTYPES)}"
            )
        data = a.astype(dt, copy=False).tobytes()
        blob += b"\0" * (_align(len(blob)) - len(blob))
        entries[name] = {
            "dtype": key,
            "shape": [int(s) for s in a.shape],
            "offset": len(blob),
            "nbytes": len(data),
        }
        blob += data

    def resolve(obj):
        if isinstance(obj, dict):
            if set(obj) == {"array"}:
                return entries[obj["array"]]
            return {k: resolve(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [resolve(v) for v in obj]
        return obj

    text = json.dumps(
        resolve(header), sort_keys=True, allow_nan=False, separators=(",", ":")
    ).encode()
    text += b" " * (_align(_FIXED.size + len(text)) - _FIXED.size - len(text))
    if len(text) > MAX_HEADER_BYTES:  # the reader refuses it: never write it
        raise ValueError(
            f"the header would take {len(text)} bytes, past the format's {MAX_HEADER_BYTES}-byte "
            "limit: shorten the meta given to export (a very long class-name list?)"
        )
    body = _FIXED.pack(MAGIC, version, len(text), len(blob)) + text + bytes(blob)
    payload = body + hashlib.sha256(body).digest()
    atomic_write_bytes(path, bytes(payload))
    return len(payload)


# ----------------------------------------------------------------------------- reading
class Reader:
    """A checked, parsed ``.dorefa`` file: ``header`` (dict) and ``array(entry)``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.size = 0
        self.version = FORMAT_VERSION
        self.header: dict = {}
        self._blob = memoryview(b"")
        self._read()

    def error(self, what: str) -> FormatError:
        return FormatError(f"{self.path}: {what}")

    def _read_bytes(self) -> bytes:
        """The whole file, after checking it is a regular file of a plausible size."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise self.error(f"cannot open model file ({exc.strerror or exc})") from None
        if not stat.S_ISREG(st.st_mode):  # a folder, a FIFO (would block), a device
            raise self.error("not a regular file; give the .dorefa file `dorefa export` wrote")
        size = st.st_size
        if size > MAX_FILE_BYTES:
            raise self.error(f"file is {size} bytes, above the {MAX_FILE_BYTES}-byte limit")
        if size < _FIXED.size + _DIGEST:
            raise self.error(
                f"file is {size} bytes, too short to be a .dorefa model "
                "(truncated, or not made by `dorefa export`)"
            )
        try:
            with open(self.path, "rb") as f:
                self._check_fixed(f.read(_FIXED.size), size)  # before the rest is read: a
                f.seek(0)  # 1 GB file that is not a model had been read whole first
                raw = f.read(size + 1)  # +1: notice a file that grew since stat
        except OSError as exc:
            raise self.error(f"cannot read model file ({exc.strerror or exc})") from None
        if len(raw) != size:
            raise self.error("file changed while it was being read")
        return raw

    def _check_fixed(self, head: bytes, size: int) -> tuple[int, int, int]:
        """(version, header_len, data_len) of the fixed header, checked against the file's
        ``size``."""
        if len(head) < _FIXED.size:
            raise self.error("file changed while it was being read")
        magic, version, hlen, dlen = _FIXED.unpack_from(head)
        if magic != MAGIC:
            raise self.error(
                "not a .dorefa model (bad magic bytes); make one with "
                "`dorefa export CKPT -o model.dorefa`"
            )
        if version not in READ_VERSIONS:
            raise self.error(
                f"format version {version} is not supported (this runtime reads "
                f"versions {', '.join(map(str, READ_VERSIONS))}); export it again with this "
                "dorefa, or run it with the dorefa that wrote it"
            )
        if hlen > MAX_HEADER_BYTES:
            raise self.error(f"header length {hlen} exceeds the {MAX_HEADER_BYTES}-byte limit")
        expected = _FIXED.size + hlen + dlen + _DIGEST
        if expected != size:
            raise self.error(
                f"file is {size} bytes but its header describes {expected} (truncated or "
                f"altered): {AGAIN}"
            )
        return version, hlen, dlen

    def _read(self) -> None:
        raw = self._read_bytes()
        size = len(raw)
        version, hlen, _ = self._check_fixed(raw[: _FIXED.size], size)
        body = memoryview(raw)[: size - _DIGEST]
        if hashlib.sha256(body).digest() != raw[size - _DIGEST :]:
            raise self.error(f"checksum mismatch: the file is corrupt or was altered: {AGAIN}")
        try:
            header = json.loads(bytes(body[_FIXED.size : _FIXED.size + hlen]).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise self.error(f"header is not valid JSON ({type(exc).__name__})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
            raise self.error(f"header does not describe a '{FORMAT_NAME}' model")
        self.size = size
        self.version = version
        self.header = header
        self._blob = body[_FIXED.size + hlen :]

    def array(
        self, entry: object, name: str, dtype: type | None = None, ndim: int | None = None
    ) -> np.ndarray:
        """The array an entry points to (a read-only view of the file bytes), fully checked."""
        if not isinstance(entry, dict):
            raise self.error(f"array {name!r}: entry is not an object")
        dt, shape, off, nbytes = (entry.get(k) for k in ("dtype", "shape", "offset", "nbytes"))
        if not isinstance(dt, str) or dt not in DTYPES:
            raise self.error(f"array {name!r}: dtype {dt!r} is not one of {', '.join(DTYPES)}")
        if dtype is not None and DTYPES[dt] is not dtype:
            raise self.error(f"array {name!r}: dtype {dt} where {np.dtype(dtype)} is required")
        if not isinstance(shape, list) or not all(_is_int(s) and 0 <= s < 1 << 40 for s in shape):
            raise self.error(f"array {name!r}: shape must be a list of non-negative ints")
        if ndim is not None and len(shape) != ndim:
            raise self.error(f"array {name!r}: {len(shape)}-D where {ndim}-D is required")
        if not (_is_int(off) and _is_int(nbytes) and off >= 0 and nbytes >= 0):
            raise self.error(f"array {name!r}: offset/nbytes must be non-negative ints")
        itemsize = np.dtype(DTYPES[dt]).itemsize
        if math.prod(shape) * itemsize != nbytes:
            raise self.error(f"array {name!r}: shape {shape} x {itemsize} bytes != nbytes {nbytes}")
        if off + nbytes > len(self._blob) or off % itemsize:
            raise self.error(
                f"array {name!r}: bytes [{off}, {off + nbytes}) lie outside the "
                f"{len(self._blob)}-byte data blob or are misaligned"
            )
        if nbytes == 0:
            return np.zeros(shape, DTYPES[dt])
        a = np.frombuffer(self._blob, dtype=np.dtype(dt), count=math.prod(shape), offset=off)
        return a.reshape(shape)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)

"""The .dorefa format's defences: truncated files, bit flips, hostile headers and fixed
headers, and graphs past the loader's bounds on memory and work, all refused with a
FormatError naming the file before anything is allocated."""

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest

import dorefa.runtime as rt
from calibrated import calibrated
from dorefa.exporter import export
from dorefa.runtime import FormatError
from dorefa.runtime import format as fmt


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    """A tiny valid .dorefa file (svhn width 0.125, 1,2,6) for the fuzzers."""
    path = tmp_path_factory.mktemp("fuzz") / "small.dorefa"
    export(calibrated("svhn", "1,2,6", 0.125, 1, 40), path)
    return path


def test_truncated_files_are_refused(small_file, tmp_path):
    data = small_file.read_bytes()
    lengths = sorted(
        set(
            list(range(0, 64))
            + list(range(0, len(data), 97))
            + [len(data) - k for k in range(1, 40)]
        )
    )
    bad = tmp_path / "t.dorefa"
    for n in lengths:
        bad.write_bytes(data[:n])
        with pytest.raises(FormatError, match="t.dorefa"):
            rt.load(bad)
    bad.write_bytes(data + b"\0")
    with pytest.raises(FormatError, match="truncated or altered.*copy it again, or make it"):
        rt.load(bad)


def test_a_large_file_that_is_not_a_model_is_refused_before_it_is_read(tmp_path):
    """A hostile review: a 1 GB file given by mistake was read whole (1 GB, 5 s) before its
    first 8 bytes said it is not a model."""
    import tracemalloc

    big = tmp_path / "big.dorefa"
    with open(big, "wb") as f:
        f.truncate(256 << 20)  # sparse: no disk used
    tracemalloc.start()
    with pytest.raises(FormatError, match="bad magic bytes"):
        rt.load(big)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20, peak


def test_bit_flips_are_refused(small_file, tmp_path):
    data = bytearray(small_file.read_bytes())
    rng = np.random.default_rng(0)
    bad = tmp_path / "f.dorefa"
    positions = list(rng.integers(0, len(data), 300)) + list(range(0, 40)) + [len(data) - 1]
    for pos in positions:
        flipped = bytearray(data)
        flipped[pos] ^= 1 << int(rng.integers(0, 8))
        bad.write_bytes(bytes(flipped))
        with pytest.raises(FormatError):
            rt.load(bad)


def _rewrite(
    src: Path, dst: Path, edit=None, raw_header: bytes | None = None, fixed: tuple | None = None
) -> None:
    """Copy a .dorefa file with an edited header and a *valid* checksum (a hostile writer)."""
    data = src.read_bytes()
    magic, version, hlen, dlen = struct.unpack_from("<8sIIQ", data)
    header = json.loads(data[24 : 24 + hlen])
    blob = data[24 + hlen : len(data) - 32]
    text = raw_header if raw_header is not None else json.dumps(edit(header)).encode()
    fields = fixed or (magic, version, len(text), len(blob))
    body = struct.pack("<8sIIQ", *fields) + text + blob
    dst.write_bytes(body + hashlib.sha256(body).digest())


def _first(header, op):
    return next(la for la in header["nodes"] if la["op"] == op)


HOSTILE = {
    "huge weight_shape": lambda h: (
        _first(h, "bitconv").update(weight_shape=[2**40, 2**40, 3, 3]),
        h,
    )[1],
    "weight_shape vs bytes": lambda h: (
        _first(h, "bitconv").update(weight_shape=[4096, 4096, 3, 3]),
        h,
    )[1],
    "huge array shape": lambda h: (
        _first(h, "conv_float")["weight"].update(shape=[2**39, 2**39], nbytes=2**80),
        h,
    )[1],
    "offset outside blob": lambda h: (_first(h, "conv_float")["weight"].update(offset=2**62), h)[1],
    "huge input": lambda h: h | {"input_shape": [1, 10**9, 10**9]},
    "big input": lambda h: h | {"input_shape": [1, 60000, 60000]},
    "wrong dtype": lambda h: (_first(h, "bitconv")["thresholds"].update(dtype="<f8"), h)[1],
    "bad direction": lambda h: (_first(h, "bitconv").update(out_bits=3), h)[1],
    "unknown op": lambda h: (
        h["nodes"].insert(1, {"op": "__import__", "name": "x", "inputs": ["input"]}),
        h,
    )[1],
    "input defined later": lambda h: (h["nodes"][0].update(inputs=[h["output"]]), h)[1],
    "cycle": lambda h: (h["nodes"][1].update(inputs=[h["nodes"][1]["name"]]), h)[1],
    "duplicate name": lambda h: (h["nodes"][1].update(name=h["nodes"][0]["name"]), h)[1],
    "unknown output": lambda h: h | {"output": "nowhere"},
    "output is input": lambda h: h | {"output": "input"},
    "add of one input": lambda h: (
        h["nodes"].append({"op": "add", "name": "s", "inputs": [h["output"]]}),
        h | {"output": "s"},
    )[1],
    "x_bits mismatch": lambda h: (_first(h, "bitconv").update(x_bits=4), h)[1],
    "string stride": lambda h: (_first(h, "bitconv").update(stride="1"), h)[1],
    "no nodes": lambda h: h | {"nodes": []},
    "nodes not list": lambda h: h | {"nodes": {"a": 1}},
    "wrong classes": lambda h: h | {"num_classes": 11},
    "not a model": lambda h: [1, 2, 3],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_headers_are_refused(case, small_file, tmp_path):
    bad = tmp_path / "h.dorefa"
    _rewrite(small_file, bad, HOSTILE[case])
    with pytest.raises(FormatError, match="h.dorefa"):
        rt.load(bad)


def test_an_input_past_the_element_bound_is_refused_before_any_allocation(small_file, tmp_path):
    bad = tmp_path / "h.dorefa"
    _rewrite(small_file, bad, lambda h: h | {"input_shape": [64, 1025, 1025]})
    with pytest.raises(FormatError, match=r"'input_shape' \[64, 1025, 1025\] exceeds"):
        rt.load(bad)


def _float_graph(path, convs: list[tuple[int, int, int]], keep_all: bool):
    """A file of float convs (out channels, kernel, padding) sharing their weights: in a chain,
    or all on the input and summed at the end (``keep_all``: every output alive at once)."""
    arrays, nodes, prev, c = {}, [], "input", 1
    for i, (o, k, pad) in enumerate(convs):
        w, b = f"w{o}x{c}x{k}", f"b{o}"
        arrays.setdefault(w, np.ones((o, c, k, k), np.float32))
        arrays.setdefault(b, np.zeros(o, np.float32))
        conv = {"op": "conv_float", "weight": {"array": w}, "bias": {"array": b}, "stride": 1}
        src = "input" if keep_all else prev
        nodes.append(conv | {"name": f"c{i}", "inputs": [src], "padding": pad})
        prev, c = f"c{i}", (c if keep_all else o)
    for i in range(1, len(convs) if keep_all else 0):
        nodes.append({"name": f"a{i}", "op": "add", "inputs": [prev, f"c{i}"]})
        prev = f"a{i}"
    fc = {"op": "linear_float", "weight": {"array": "fcw"}, "bias": {"array": "fcb"}}
    nodes += [
        {"name": "g", "op": "global_avgpool", "inputs": [prev]},
        {"name": "f", "op": "flatten", "inputs": ["g"]},
        fc | {"name": "fc", "inputs": ["f"]},
    ]
    arrays |= {"fcw": np.zeros((10, convs[-1][0]), np.float32), "fcb": np.zeros(10, np.float32)}
    header = {"format": fmt.FORMAT_NAME, "input_shape": [1, 40, 40], "num_classes": 10}
    header |= {"bits": "32,32,32", "nodes": nodes, "output": "fc", "meta": {}}
    fmt.write(path, header, arrays)


def test_a_graph_past_the_memory_or_work_bounds_is_refused_before_it_runs(tmp_path):
    """Each value below the element bound, the whole past what the loader lets run: a 60 KB
    file took 4.9 GB to load (40 outputs of 115 MB kept for a chain of adds), one of 100 convs
    of 8.5 GMAC sharing one weight 17 s; both are refused from the header."""
    _float_graph(tmp_path / "mem.dorefa", [(1024, 1, 64)] * 10, keep_all=True)
    with pytest.raises(FormatError, match="bytes of values at once"):
        rt.load(tmp_path / "mem.dorefa")
    _float_graph(tmp_path / "mem3.dorefa", [(16, 1, 0)] * 3, keep_all=True)  # small: it runs
    assert rt.load(tmp_path / "mem3.dorefa")(np.zeros((1, 1, 40, 40), np.float32)).shape == (1, 10)
    _float_graph(tmp_path / "work.dorefa", [(64, 1, 60)] + [(64, 9, 4)] * 20, keep_all=False)
    with pytest.raises(FormatError, match=r"MACs and 0 other operations per image by here"):
        rt.load(tmp_path / "work.dorefa")


def test_pools_past_the_work_bound_are_refused_before_they_run(tmp_path):
    """A hostile review: a 544-byte file of three 64 x 64 average pools on 2048 x 2048 (0 MACs)
    took 17 s to load; its pools' windows are now counted (2049^2 x 64^2 > 2^32)."""
    pools = [
        {"name": f"p{i}", "op": "avgpool", "inputs": [f"p{i - 1}" if i else "input"],
         "kernel": 64, "stride": 1, "padding": 32}
        for i in range(3)
    ]  # fmt: skip
    nodes = pools + [
        {"name": "g", "op": "global_avgpool", "inputs": ["p2"]},
        {"name": "f", "op": "flatten", "inputs": ["g"]},
        {"name": "fc", "op": "linear_float", "inputs": ["f"], "weight": {"array": "w"},
         "bias": {"array": "b"}},
    ]  # fmt: skip
    header = {"format": fmt.FORMAT_NAME, "input_shape": [1, 2048, 2048], "num_classes": 2}
    header |= {"bits": "32,32,32", "nodes": nodes, "output": "fc", "meta": {}}
    arrays = {"w": np.zeros((2, 1), np.float32), "b": np.zeros(2, np.float32)}
    fmt.write(tmp_path / "pools.dorefa", header, arrays)
    with pytest.raises(FormatError, match=r"node 0: .* 0 MACs and 17196650496 other operations"):
        rt.load(tmp_path / "pools.dorefa")


def test_hostile_fixed_header_and_json(small_file, tmp_path):
    bad = tmp_path / "h.dorefa"
    data = small_file.read_bytes()
    magic, version, hlen, dlen = struct.unpack_from("<8sIIQ", data)
    for fixed in [
        (magic, version, 2**32 - 1, dlen),
        (magic, version, hlen, 2**63),
        (magic, 99, hlen, dlen),
        (magic, 1, hlen, dlen),  # a graph header in a version-1 (chain) file
        (b"PK\x03\x04\0\0\0\0", version, hlen, dlen),
    ]:
        _rewrite(small_file, bad, lambda h: h, fixed=fixed)
        with pytest.raises(FormatError):
            rt.load(bad)
    for raw in [b"[" * 200000 + b"]" * 200000, b"\xff\xfe", b"{}", b"null"]:
        _rewrite(small_file, bad, raw_header=raw)
        with pytest.raises(FormatError):
            rt.load(bad)
    with pytest.raises(FormatError, match="cannot open"):
        rt.load(tmp_path / "missing.dorefa")

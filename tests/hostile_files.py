"""The hostile files of tests/test_hostile.py: broken IDX folders and image folders, and
checkpoints that are truncated, empty, of a future version, of another model, edited (saved
with their digest, so that each check is reached) or hostile pickles."""

from __future__ import annotations

import gzip
import itertools
import os
from pathlib import Path

import numpy as np


def _write_idx_dir(root: Path, n=40, size=28, labels=None, test_n=20, gz=False) -> Path:
    from data_files import write_idx

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, k in (("train", n), ("t10k", test_n)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (k, size, size)), gz)
        lab = np.arange(k) % 10 if labels is None else np.resize(labels, k)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", lab, gz)
    return root


def _edit(path: Path, fn) -> None:
    path.write_bytes(fn(path.read_bytes()))


def make_data(tmp: Path) -> dict[str, Path]:
    """Folders of broken IDX files and image folders, each named after what is wrong."""
    from data_files import save_image

    d = {k: tmp / k for k in ("d_empty", "d_trunc", "d_trunc_gz", "d_count", "d_label10")}
    d["d_empty"].mkdir(parents=True)
    _edit(_write_idx_dir(d["d_trunc"]) / "train-images-idx3-ubyte", lambda b: b[: len(b) // 2])
    _write_idx_dir(d["d_trunc_gz"], gz=True)
    _edit(d["d_trunc_gz"] / "train-images-idx3-ubyte.gz", lambda b: b[: len(b) // 2])
    _edit(_write_idx_dir(d["d_count"]) / "train-labels-idx1-ubyte", lambda b: b[:-3])
    _edit(d["d_count"] / "train-labels-idx1-ubyte", lambda b: b[:7] + bytes([37]) + b[8:])
    _write_idx_dir(d["d_label10"], labels=np.arange(12) % 12)  # fashion-mnist: 10 classes
    d["d_magic"] = _write_idx_dir(tmp / "d_magic")  # images file with the labels' magic
    _edit(d["d_magic"] / "train-images-idx3-ubyte", lambda b: b"\0\0\x08\x01" + b[4:])
    d["d_zero"] = _write_idx_dir(tmp / "d_zero", n=0, test_n=0)
    d["d_one_class"] = _write_idx_dir(tmp / "d_one_class", labels=[0])
    d["d_huge_dims"] = _write_idx_dir(tmp / "d_huge_dims")
    _edit(d["d_huge_dims"] / "train-images-idx3-ubyte", lambda b: b[:4] + b"\xff" * 12 + b[16:])
    d["d_3class"] = _write_idx_dir(tmp / "d_3class", labels=[0, 1, 2])
    d["d_bomb"] = _write_idx_dir(tmp / "d_bomb", gz=True)  # claims 2^44 bytes, gives 2^26
    bomb = bytes([0, 0, 8, 3]) + np.array([1 << 20, 1 << 12, 1 << 12], ">u4").tobytes()
    (d["d_bomb"] / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(bomb + bytes(1 << 26)))
    rng, two = np.random.default_rng(1), ["cat", "dog"]
    for name, classes, n in [("d_img_one", ["cat"], 3), ("d_img_ok", two, 3)] + [
        (name, two, 1) for name in ("d_img_garbage", "d_img_cut")
    ]:
        for split, c, k in itertools.product(("train", "val"), classes, range(n)):
            img = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)
            save_image(tmp / name / split / c / f"{k}.png", img)
        d[name] = tmp / name
    (d["d_img_ok"] / "train" / "cat" / "notes.txt").write_text("not an image\n")
    (d["d_img_ok"] / "val" / "dog" / "README").write_bytes(b"\0\1\2")
    (d["d_img_garbage"] / "train" / "dog" / "bad.jpg").write_bytes(b"GIF89a but not really")
    png = (d["d_img_cut"] / "train" / "cat" / "0.png").read_bytes()
    (d["d_img_cut"] / "train" / "dog" / "cut.png").write_bytes(png[: len(png) // 2])
    return d


def make_checkpoints(tmp: Path, good: Path) -> dict[str, Path]:
    """Checkpoints that are truncated, empty, of a future version, of another model, hostile."""
    import pickle

    import torch

    from dorefa import checkpoint
    from dorefa.models import create_model

    ckpt = torch.load(good, weights_only=True)
    tmp.mkdir(parents=True, exist_ok=True)
    c = {k: tmp / f"{k[2:]}.pt" for k in ("c_truncated", "c_empty", "c_evil", "c_garbage")}
    c["c_truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    c["c_empty"].write_bytes(b"")
    c["c_garbage"].write_bytes(os.urandom(5000))

    class Evil:  # unpickling it would run `touch pwned`
        def __reduce__(self):
            return (os.system, (f"touch {tmp / 'pwned'}",))

    c["c_evil"].write_bytes(pickle.dumps(dict(ckpt, model=Evil(), meta=Evil())))
    no_size = {k: v for k, v in ckpt["meta"].items() if k != "image_size"}
    alex = create_model("alexnet", bits="1,2,6", num_classes=10, in_channels=1, width=0.125)
    variants = {
        "c_future": dict(ckpt, version=99),
        "c_renamed": dict(ckpt, model={"x." + k: v for k, v in ckpt["model"].items()}),
        "c_no_meta_size": dict(ckpt, meta=no_size),
        "c_huge_width": dict(ckpt, meta=dict(ckpt["meta"], width=1e6)),
        "c_strings": dict(ckpt, model={k: "w" for k in ckpt["model"]}),
        "c_alexnet": dict(ckpt, model=alex.state_dict(), meta=dict(ckpt["meta"], model="alexnet")),
        # metas that had made a 1.6 KB file allocate 3.8 GB, or ask for 256 GB, before the
        # weights were checked against them
        "c_wide_meta": dict(ckpt, model={}, meta=dict(ckpt["meta"], model="alexnet", width=4.0)),
        "c_many_classes": dict(ckpt, model={}, meta=dict(ckpt["meta"], num_classes=10**9)),
        "c_keep_words": dict(ckpt, meta=dict(ckpt["meta"], keep_first_last="false")),
        "c_epoch_word": dict(ckpt, epoch="x"),
    }
    for k, obj in variants.items():
        c[k] = tmp / f"{k[2:]}.pt"
        checkpoint.save_atomic(obj, c[k])  # edits saved with their digest: each check is reached
    for name, source in (("d_resume_alexnet", "c_alexnet"), ("d_resume_cut", "c_truncated")):
        c[name] = tmp / name[2:]  # a run folder holding that checkpoint
        c[name].mkdir()
        (c[name] / "checkpoint.pt").write_bytes(c[source].read_bytes())
    return c

"""dorefa.summary / `dorefa summary`: per-layer bits, bytes, MACs and bit-ops, checked against
hand formulas (svhn Model A), the parameter count, the sweep's cost columns, the three kinds
of input (model name, checkpoint, .dorefa file) and every registered model."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

import dorefa
from dorefa import kernels
from dorefa.bits import Bits
from dorefa.cli import main
from dorefa.exporter import export
from dorefa.kernels import choose
from dorefa.model_summary import Summary, summary, summary_file
from dorefa.models import create_model, list_models
from dorefa.sweep import Cell, cell_costs

SRC = os.path.join(os.path.dirname(__file__), "..", "src")


def _rows(s: Summary) -> dict:
    return {r.name: r for r in s.rows}


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _pixels(row) -> int:
    """Output pixels of a row at batch 1 (a linear layer's: 1)."""
    return math.prod(row.shape[1:])


def test_kernel_column_is_the_runtimes_pick():
    """The kernel column: the cost model's pick per layer when nothing is forced (an int8
    kernel for W8A8 where this CPU has one, popcount for W1A2 unless it has AMX, or lut where
    it has AVX2 only), the forced kernel otherwise."""
    rows = summary(create_model("svhn", bits="8,8,8", num_classes=10)).rows
    bit_rows = [r for r in rows if r.w == 8]
    forced = kernels.forced_kernel()
    assert bit_rows and all(
        r.kernel == (forced or choose.model_pick(8, 8, r.macs, _pixels(r))) for r in bit_rows
    )
    if forced is None and any(k.startswith("int8-") for k in kernels.available_kernels()):
        assert all(r.kernel.startswith("int8-") for r in bit_rows)
    rows = summary(create_model("svhn", bits="1,2,6", num_classes=10)).rows
    avail = kernels.available_kernels()
    w1 = ("popcount-", "reference")  # AVX-512: VPOPCNTQ; AMX: int8 for every bit pair
    if not any(k.startswith("popcount-avx512") for k in avail):
        w1 += ("lut-",)  # AVX2 only: lut-avx2 is priced below the nibble-table popcount
    for r in (r for r in rows if r.w == 1):  # AMX where a call fills over 3/4 of its tile
        # rows (int8-amx at 600 GMAC/s against W1A2 popcount's 900 / 2); else w1
        amx = "int8-amx" in avail and choose.amx_rows_used(_pixels(r)) > 0.75
        assert r.kernel.startswith(("int8-",) if amx else w1)
    for kernel in kernels.available_kernels():
        with kernels.use_kernel(kernel):
            rows = summary(create_model("svhn", bits="8,8,8", num_classes=10)).rows
        assert all(r.kernel == kernel for r in rows if r.w == 8)


def test_svhn_model_a_by_hand():
    """Model A (width 1), 3x40x40, bits (1,2,6): shapes, bits, MACs, bytes, bit-ops, kernels."""
    model = create_model("svhn", bits="1,2,6", num_classes=10, in_channels=3)
    s = summary(model)
    rows = _rows(s)
    conv0, conv1, conv4 = rows["features.conv0"], rows["features.conv1"], rows["features.conv4"]
    # first conv: 48 5x5 valid over 3 channels -> 48x36x36; float (W = A = G = 32), with bias
    assert conv0.shape == (48, 36, 36) and (conv0.w, conv0.a, conv0.g) == (32, 32, 32)
    assert conv0.macs == (48 * 36 * 36) * (3 * 5 * 5)
    assert conv0.params == 48 * 3 * 25 + 48 and conv0.bytes == 4 * conv0.params
    assert conv0.bitops == conv0.macs * 32 * 32 and conv0.kernel == "conv_float"
    # 3x3 layers: conv1 48 -> 64 at 18x18 (same), conv4 128 -> 128 at 7x7 (same)
    assert conv1.shape == (64, 18, 18) and (conv1.w, conv1.a, conv1.g) == (1, 2, 6)
    assert conv1.macs == (64 * 18 * 18) * (48 * 3 * 3)
    assert conv4.shape == (128, 7, 7) and conv4.macs == (128 * 7 * 7) * (128 * 3 * 3)
    assert conv1.bytes == 64 * 48 * 9 * 1 / 8  # 1 bit per weight, no bias
    assert conv4.bitops == conv4.macs * 1 * 2
    assert conv4.train_bitops == conv4.macs * (1 * 2 + 1 * 6 + 2 * 6)
    picked = choose.model_pick(1, 2, conv1.macs, _pixels(conv1))
    assert conv1.kernel == (kernels.forced_kernel() or picked)
    assert rows["features.bn1"].params == 128 and rows["features.bn1"].bytes == 128 * 4
    assert rows["features.act1"].a == 2 and rows["features.act6"].a == 32  # clip only
    fc = rows["fc"]
    assert fc.shape == (10,) and fc.macs == 512 * 10 and fc.a == 32 and fc.kernel == "linear"

    t = s.totals
    macs = [(48 * 36 * 36) * 75, (64 * 18 * 18) * 432, (64 * 18 * 18) * 576, (128 * 7 * 7) * 576]
    macs += [(128 * 7 * 7) * 1152, (128 * 5 * 5) * 1152, 512 * 128 * 25, 512 * 10]
    assert t["macs"] == sum(macs) and t["float_macs"] == macs[0] + macs[-1]
    assert t["params"] == _params(model)
    assert t["bitops"] == (macs[0] + macs[-1]) * 1024 + sum(macs[1:-1]) * 2
    assert t["reference_bytes"] == 4 * _params(model) and t["reference_bitops"] == sum(macs) * 1024
    assert t["memory_ratio"] == pytest.approx(4 * _params(model) / t["bytes"])
    assert t["float_share_macs"] == pytest.approx((macs[0] + macs[-1]) / sum(macs))
    bn = sum(r.bytes for r in s.rows if r.type == "BatchNorm2d")
    assert t["bytes"] == pytest.approx(t["weight_bytes"] + bn)
    assert t["float_share_bytes"] == pytest.approx((conv0.bytes + fc.bytes + bn) / t["bytes"])


@pytest.mark.parametrize("name, width", [("svhn", 1.0), ("alexnet", 0.25)])
@pytest.mark.parametrize("bits", ["1,2,6", "2,4,32"])
def test_totals_equal_the_sweeps_cost_columns(name, width, bits):
    model = create_model(name, bits=bits, num_classes=10, in_channels=1, width=width)
    t = summary(model, model.input_size).totals
    costs = cell_costs(name, Cell(Bits.parse(bits), width), 10, 1)
    assert costs == {
        "macs": t["macs"],
        "float_macs": t["float_macs"],
        "infer_bitops": t["bitops"],
        "train_bitops": t["train_bitops"],
        "weight_bytes": t["weight_bytes"],
    }
    assert t["params"] == _params(model)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model(name):
    model = create_model(name, bits="1,2,6", width=0.25)
    model.train()
    s = summary(model)
    assert model.training  # the mode is restored
    assert s.totals["params"] == _params(model)
    assert all(r.shape is not None for r in s.rows)  # every layer ran
    weights = [r for r in s.rows if r.is_weight]
    assert weights[0].kernel == "conv_float" and weights[-1].kernel == "linear"
    forced = kernels.forced_kernel()
    picks = [forced or choose.model_pick(1, 2, r.macs, _pixels(r)) for r in weights[1:-1]]
    assert [r.kernel for r in weights[1:-1]] == picks
    assert s.totals["bitop_ratio"] > 1 and s.totals["memory_ratio"] > 1
    json.dumps(s.to_dict())


@pytest.mark.parametrize("name", list_models())
def test_the_runtime_counts_the_summarys_macs(name, tmp_path):
    """`dorefa run --compare` refuses a checkpoint by its MACs per image against the file's:
    the two counts must agree on every model."""
    import dorefa.runtime as rt

    model = create_model(name, bits="1,2,6", width=0.125, in_channels=1).eval()
    size = {"svhn": 40, "alexnet": 224}.get(name, 32)  # the sizes their heads take
    export(model, tmp_path / "m.dorefa", input_size=size)
    assert rt.load(tmp_path / "m.dorefa").macs == summary(model, size).totals["macs"]


def test_resnet18_full_width():
    """tensorpack's ResNet-18 at 224: 7x7/2 float conv, 16 3x3 + 4 projection 1x1 bit convs."""
    model = create_model("resnet18", bits="1,4,32", num_classes=1000)
    s = summary(model)
    rows = _rows(s)
    assert rows["conv0"].macs == (64 * 112 * 112) * (3 * 49)
    assert rows["blocks.7.conv_b"].shape == (512, 7, 7)
    assert rows["blocks.7.conv_b"].macs == (512 * 7 * 7) * (512 * 9)
    assert rows["blocks.2.shortcut.0"].macs == (128 * 28 * 28) * 64
    assert (rows["blocks.2.shortcut.0"].a, rows["blocks.2.shortcut.0"].g) == (4, 32)
    assert rows["fc"].shape == (1000,) and rows["fc"].macs == 512 * 1000
    assert sum(r.type == "QConv2d" for r in s.rows) == 1 + 16 + 4
    assert s.totals["params"] == _params(model)
    assert "blocks.7.conv_b" in str(s) and "vs float (32,32,32)" in str(s)


def test_quantize_model_net_and_errors():
    """A user's quantize_model net: input_size is required (no attribute), channels from the
    first conv; a residual module with direct parameters still adds up."""
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 4),
    )
    dorefa.quantize_model(net, "1,2,6")
    with pytest.raises(ValueError, match="no input_size attribute; pass input_size"):
        summary(net)
    s = summary(net, 12)
    assert s.input_shape == (1, 12, 12) and s.totals["params"] == _params(net)
    mid = _rows(s)["2.0"]  # the quantized conv inside Sequential(QConv2d, GradQuant)
    assert (mid.w, mid.a, mid.g) == (1, 2, 6) and mid.macs == (8 * 10 * 10) * (8 * 9)
    with pytest.raises(ValueError, match="input_size must be"):
        summary(net, 0)


def test_package_exports_the_function():
    model = create_model("svhn", bits="1,2,6", width=0.125)
    assert dorefa.summary is summary and isinstance(dorefa.summary(model), Summary)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, fashion_dir):
    """A checkpoint written by a tiny `dorefa train` run (svhn width 0.125, 1-channel 40x40)."""
    out = tmp_path_factory.mktemp("run")
    args = ["train", "--model", "svhn", "--bits", "1,2,6", "--width", "0.125", "--epochs", "1"]
    args += ["--subset", "64", "--test-subset", "32", "--batch-size", "32", "--threads", "1"]
    assert main(args + ["--out", str(out)]) == 0
    return out / "checkpoint.pt"


def test_three_input_kinds(checkpoint, tmp_path, capsys):
    """A model name, a checkpoint and its .dorefa export give the same MACs and bit-ops."""
    from dorefa.checkpoint import load_checkpoint, model_from_checkpoint

    assert main(["summary", "svhn", "--width", "0.125", "--in-channels", "1", "--json"]) == 0
    by_name = json.loads(capsys.readouterr().out)
    assert main(["summary", str(checkpoint), "--json"]) == 0
    by_ckpt = json.loads(capsys.readouterr().out)
    model = model_from_checkpoint(load_checkpoint(checkpoint), checkpoint)
    path = tmp_path / "m.dorefa"
    export(model, path)
    assert main(["summary", str(path), "--json"]) == 0
    by_file = json.loads(capsys.readouterr().out)
    assert by_ckpt["input_shape"] == by_name["input_shape"] == by_file["input_shape"] == [1, 40, 40]
    for key in ("macs", "float_macs", "bitops", "train_bitops", "reference_bitops"):
        assert by_name["totals"][key] == by_ckpt["totals"][key] == by_file["totals"][key], key
    # the file folds BN into thresholds; its float reference adds BN's 2 floats per channel
    assert by_file["totals"]["reference_bytes"] == by_ckpt["totals"]["reference_bytes"]
    assert by_ckpt["totals"]["params"] == _params(model)
    assert [r["type"] for r in by_file["rows"]][:3] == ["conv_float", "maxpool", "quantize"]
    assert sum(r["bytes"] for r in by_file["rows"]) <= path.stat().st_size

    assert main(["summary", str(path)]) == 0
    text = capsys.readouterr().out
    assert "bitconv" in text and "vs float (32,32,32)" in text and "BatchNorm is folded" in text


def test_dorefa_file_summary_imports_no_torch(tmp_path):
    model = create_model("svhn", bits="1,2,6", width=0.125, in_channels=1).eval()
    export(model, tmp_path / "m.dorefa")
    want = summary_file(tmp_path / "m.dorefa").totals["bitops"]
    code = (
        "import sys\n"
        "from dorefa.summary_cli import load_summary\n"
        f"s = load_summary({str(tmp_path / 'm.dorefa')!r})\n"
        "assert 'torch' not in sys.modules, 'the .dorefa summary imported torch'\n"
        "print(s.totals['bitops'])\n"
    )
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert int(res.stdout) == want


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["summary", "nosuchmodel"]) == 2
    assert "neither a file nor a model name" in capsys.readouterr().err
    model = create_model("svhn", bits="1,2,6", width=0.125, in_channels=1).eval()
    export(model, tmp_path / "m.dorefa")
    assert main(["summary", str(tmp_path / "m.dorefa"), "--bits", "1,1,1"]) == 2
    assert "--bits apply to a model name" in capsys.readouterr().err
    (tmp_path / "junk.dorefa").write_bytes(b"\x89DOREFA\n" + b"\0" * 10)
    assert main(["summary", str(tmp_path / "junk.dorefa")]) == 2
    assert "too short" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["summary", "svhn", "--bits", "1,2,9"])


def test_table_and_json_agree():
    s = summary(create_model("alexnet", bits="1,2,6", width=0.25))
    text, d = str(s), s.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert len(d["rows"]) == len(s.rows) and d["totals"]["params"] == s.totals["params"]
    for r in s.rows:
        assert r.name in text
    assert f"{s.totals['params']:,} params" in text


def test_version_1_chain_file(tmp_path):
    """A version-1 file (a chain "layers" instead of graph "nodes") gives the same figures."""
    import hashlib
    import struct

    from dorefa.runtime.format import MAGIC, Reader

    model = create_model("svhn", bits="1,2,6", width=0.125, in_channels=1).eval()
    export(model, tmp_path / "v2.dorefa")
    r = Reader(tmp_path / "v2.dorefa")
    header = {k: v for k, v in r.header.items() if k not in ("nodes", "output")}
    header["layers"] = r.header["nodes"]
    text = json.dumps(header).encode()
    text += b" " * (-(24 + len(text)) % 64)
    blob = bytes(r._blob)
    body = struct.pack("<8sIIQ", MAGIC, 1, len(text), len(blob)) + text + blob
    (tmp_path / "v1.dorefa").write_bytes(body + hashlib.sha256(body).digest())
    v1, v2 = summary_file(tmp_path / "v1.dorefa"), summary_file(tmp_path / "v2.dorefa")
    assert [r.name for r in v1.rows][:2] == ["layer0", "layer1"]  # read as a chain
    assert v1.totals == v2.totals
    assert v1.totals["macs"] == summary(model).totals["macs"]


@pytest.mark.parametrize("name", list_models())
def test_the_meta_pass_gives_the_real_pass_rows(name):
    """The summary's pass runs on the meta device; on a real input it finds the same rows
    (bits, shapes, MACs, kernels), and the model's own parameters are untouched."""
    from dorefa.summary_torch import _traced_pass

    model = create_model(name, bits="1,2,6", width=0.25, num_classes=10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    meta = summary(model).rows
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    model.eval()
    real = _traced_pass(model, summary(model).input_shape, meta=False).rows
    assert [vars(r) for r in real] == [vars(r) for r in meta if r.shape is not None]


def test_any_input_size_costs_no_memory():
    """Shapes only: ResNet-18 at 4096 x 4096 (a 0.6 TMAC pass) in about a second; a size the
    model cannot take is refused as quickly, with one punctuation."""
    import resource
    import time

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.monotonic()
    s = summary(create_model("resnet18", bits="1,2,6", num_classes=10), 4096)
    assert s.totals["macs"] > 6e11 and time.monotonic() - t < 30
    with pytest.raises(ValueError, match=r"cannot run on a \(3, 4096, 4096\) input \([^)]*\]\); "):
        summary(create_model("svhn", bits="1,2,6", width=0.125), 4096)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 2**20  # KiB: < 1 GiB


def test_a_layer_without_a_meta_kernel_runs_for_real():
    class NoMeta(torch.nn.Module):
        def forward(self, x):
            if x.is_meta:
                raise NotImplementedError("no meta kernel")
            return x * 1.0

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), NoMeta(), torch.nn.Flatten())
    s = summary(model, (1, 6, 6))
    assert [r.shape for r in s.rows] == [(4, 4, 4), (4, 4, 4), (64,)]
    assert s.rows[0].macs == 4 * 4 * 4 * 9


def test_output_cut_short_by_its_reader_is_quiet():
    """`dorefa summary ... | head -1`: the exit status of a SIGPIPE, nothing on stderr. (The
    reader goes before the first write: a table that fits the pipe's buffer would otherwise
    be written whole.)"""
    env = dict(os.environ, PYTHONPATH=SRC)
    code = "import sys; from dorefa.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, "summary", "resnet18"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as p:
        p.stdout.close()
        err = p.stderr.read().decode()
        assert p.wait(timeout=120) == 141 and err == "", err


def test_models_the_meta_pass_cannot_run_are_run_for_real():
    """A plain tensor attribute, a data-dependent branch: the meta pass fails on them, and a
    small input runs on the model's own device (they had become "cannot run on" errors)."""

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.fc = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 2)
            self.scale = torch.ones(1, 4, 1, 1)  # not a buffer

        def forward(self, x):
            y = self.c(x) * self.scale
            if y.abs().max() > 100:  # data-dependent
                y = y / 2
            return self.fc(y.mean((2, 3)))

    rows = summary(Scaled(), (3, 8, 8)).rows
    assert [r.shape for r in rows] == [(4, 6, 6), (2,)] and rows[0].macs == 4 * 36 * 27

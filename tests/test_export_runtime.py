"""Export -> .dorefa -> torch-free bit runtime: agreement with torch on real Fashion-MNIST,
threshold folding, the file format's defences (truncation, bit flips, hostile headers), and
clear errors for models the runtime cannot run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dorefa.runtime as rt
from calibrated import calibrated
from dorefa import kernels
from dorefa.cli import main
from dorefa.data import get_dataset, to_model_input
from dorefa.exporter import ExportError, export, fold_thresholds
from dorefa.kernels.reference import requantize
from dorefa.models import create_model
from dorefa.runtime import format as fmt
from dorefa.train import TrainConfig, train
from runtime_promise import STEP_TOL, check_runtime_matches_torch, explain_difference

SRC = str(Path(__file__).resolve().parents[1] / "src")
N_TEST = 1000


@pytest.fixture(scope="module")
def test_inputs(fashion_dir):
    test = get_dataset("fashion-mnist", "test").subset(N_TEST)
    x = to_model_input(test.images, 40, train=False, augment="none", generator=None)
    return x, test.labels.numpy()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fashion_dir):
    """svhn width 0.25 trained for 1 epoch on 2000 real images, per bits; (model, ckpt path)."""
    cache = {}

    def get(bits):
        if bits not in cache:
            out = tmp_path_factory.mktemp("runs") / bits.replace(",", "-")
            train(
                TrainConfig(
                    model="svhn",
                    data="fashion-mnist",
                    bits=bits,
                    width=0.25,
                    epochs=1,
                    batch_size=32,
                    subset=2000,
                    test_subset=100,
                    threads=1,
                    progress=False,
                    out=str(out),
                ),
                log=lambda m: None,
            )
            from dorefa.checkpoint import load_checkpoint, model_from_checkpoint

            ckpt = out / "checkpoint.pt"
            cache[bits] = (model_from_checkpoint(load_checkpoint(ckpt), ckpt), ckpt)
        return cache[bits]

    return get


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    """A tiny valid .dorefa file (svhn width 0.125, 1,2,6) for the fuzzers."""
    path = tmp_path_factory.mktemp("fuzz") / "small.dorefa"
    export(calibrated("svhn", "1,2,6", 0.125, 1, 40), path)
    return path


# ----------------------------------------------------------------------------- agreement
@pytest.mark.parametrize("bits", ["1,2,6", "2,2,32", "1,1,32"])
def test_runtime_matches_torch(bits, trained, test_inputs, tmp_path):
    """The promise of docs/runtime.md on 1000 real images (see runtime_promise.py): same class
    on >= 99.9%, logits within 1e-3 relative except on images with a code flip at a step."""
    model, _ = trained(bits)
    x, labels = test_inputs
    path = tmp_path / "m.dorefa"
    export(model, path)
    res = check_runtime_matches_torch(rt.load(path), model, x)
    assert res["got"].shape == (N_TEST, 10)
    assert (res["got"].argmax(1) == labels).mean() > 0.2  # it learned something: chance is 0.1


def _nearest_step(model, x):
    """(channel, signed distance) of the first f_a's activation nearest a quantization step
    (in activation units), over the one image x; n = 2^A - 1 levels."""
    pre = []
    hook = model.features.act0.register_forward_hook(lambda m, i, o: pre.append(i[0][0]))
    with torch.no_grad():
        model(x)
    hook.remove()
    n = (1 << model.bits.a) - 1
    v = pre[0].double()  # (C, H, W)
    dist = (v * n - (torch.floor(v * n) + 0.5)) / n
    dist = torch.where((v > 0) & (v < 1), dist, torch.full_like(dist, 1.0))
    flat = int(dist.abs().argmin())
    return flat // (v.shape[1] * v.shape[2]), float(dist.reshape(-1)[flat])


def test_promise_check_accepts_flips_at_a_step_and_nothing_else(tmp_path):
    """The check of runtime_promise.py itself: a code flip at a step is explained, a flip far
    from a step or a difference with every code equal is not."""
    model = calibrated("svhn", "1,2,6", 0.25, 1, 40)
    export(model, tmp_path / "m.dorefa")
    runtime = rt.load(tmp_path / "m.dorefa")
    x = torch.rand(1, 1, 40, 40, generator=torch.Generator().manual_seed(3))
    ((ok, why),) = explain_difference(runtime, model, x)
    assert not ok and why.startswith("every activation code is equal"), why
    channel, dist = _nearest_step(model, x)
    bias = model.features.conv0.bias
    with torch.no_grad():  # move that activation just past its step: torch flips one code
        bias[channel] -= dist + np.sign(dist) * STEP_TOL / 10
    ((ok, why),) = explain_difference(runtime, model, x)
    assert ok and why.startswith("activation map 0"), why
    with torch.no_grad():  # far past it: codes flip where no rounding explains it
        bias[channel] -= np.sign(dist) * 0.05
    ((ok, why),) = explain_difference(runtime, model, x)
    assert not ok and why.startswith("activation map 0"), why
    with torch.no_grad():
        bias[channel] += dist + np.sign(dist) * (STEP_TOL / 10 + 0.05)  # back as exported
        model.fc.bias += 1.0  # same classes, every code equal, logits off
    with pytest.raises(AssertionError, match="every activation code is equal"):
        check_runtime_matches_torch(runtime, model, torch.rand(4, 1, 40, 40))


def test_backends_and_threads_give_identical_logits(small_file):
    """Every native backend and thread count gives the same logits (the integer layers are
    exact, the float last layer sums in one fixed order); the NumPy reference sums the float
    last layer in float64: within float32 rounding, the same classes."""
    x = np.random.default_rng(0).random((3, 1, 40, 40), dtype=np.float32)
    model = rt.load(small_file)
    base = model(x)
    assert np.array_equal(model(x, threads=2), base)
    for name in kernels.available_backends():
        with kernels.use_backend(name):
            got = rt.load(small_file)(x)
        if name == "reference":
            np.testing.assert_allclose(got, base, rtol=1e-5, atol=1e-5)
            assert np.array_equal(got.argmax(1), base.argmax(1))
        else:
            assert np.array_equal(got, base), name


@pytest.mark.parametrize(
    ("name", "bits", "width", "in_channels", "size"),
    [
        ("svhn", "1,2,6", 0.125, 1, 40),
        ("svhn", "8,8,8", 0.125, 1, 40),
        ("svhn", "2,4,32", 0.25, 1, 40),
        ("alexnet", "1,2,6", 0.0625, 3, 224),
        ("resnet18", "1,2,6", 0.125, 3, 224),
    ],
)
def test_code_runs_equal_the_nodes_one_by_one(name, bits, width, in_channels, size, tmp_path):
    """Runs of code-to-code nodes as one native call (runtime/chain.py) give the nodes' own
    codes bit for bit (the `keep` mode runs them one by one), at batch 1 and 8 (two batch
    classes), 1 and 2 threads, on the choice and on every forced kernel."""
    from dorefa.runtime.chain import CodesRun

    export(calibrated(name, bits, width, in_channels, size), tmp_path / "m.dorefa")
    model = rt.load(tmp_path / "m.dorefa")
    runs = [step[0] for step in model._run_steps if isinstance(step[0], CodesRun)]
    rng = np.random.default_rng(1)
    if name == "resnet18":  # its residual stream is float: no code runs, the graph unchanged
        assert not runs and len(model._run_steps) == len(model._steps)
        x = rng.random((1, in_channels, size, size), dtype=np.float32)
        assert np.array_equal(model(x), model.run(x, keep=True)[0])
        return
    assert runs and all(len(run.layers) >= 2 for run in runs)
    # the run binds each convolution to the kernel it runs alone: the last one ran last
    x1 = rng.random((1, in_channels, size, size), dtype=np.float32)
    values = model.run(x1, keep=True)[1]
    last = [la for la in runs[-1].layers if hasattr(la, "convs")][-1]
    runs[-1].forward(values[runs[-1].inputs[0]], 1)
    hw = values[last.inputs[0]].shape[2:]
    assert kernels.last_kernel() == last.convs[0].choice(hw, 1).kernel
    for n in (1, 8):
        x = rng.random((n, in_channels, size, size), dtype=np.float32)
        for threads in (1, 2):
            got = model(x, threads=threads)
            expected, _ = model.run(x, threads=threads, keep=True)
            assert np.array_equal(got, expected), (n, threads)
    x = rng.random((2, in_channels, size, size), dtype=np.float32)
    expected, _ = model.run(x, keep=True)
    for kernel in kernels.available_kernels():
        if kernel == "reference" and name != "svhn":
            continue  # slow on the larger models; svhn covers the fallback
        with kernels.use_kernel(kernel):
            got = model(x)
            one_by_one, _ = model.run(x, keep=True)
        assert np.array_equal(got, one_by_one), kernel
        if kernel != "reference":
            assert np.array_equal(got, expected), kernel


def test_a_grouped_bitconv_refuses_channels_that_do_not_fit():
    """Found by a hostile review: BitConv (public in runtime.executor) with groups > 1 sliced
    each group's channels from x and dropped the rest (9 channels for 2 x 3 gave the 6-channel
    result), and 5 output channels in 2 groups lost the fifth."""
    from dorefa.runtime.bitconv import BitConv

    def grouped(o):
        ones, zeros = np.ones(o, np.float32), np.zeros(o, np.float32)
        codes = np.ones((o, 3, 3, 3), np.uint8)
        return BitConv(codes, 2, 1, 1, 1, 2, "float", alpha=ones, beta=zeros, clip=False)

    layer = grouped(4)
    assert layer.forward(np.ones((1, 6, 5, 5), np.uint8), 1).shape == (1, 4, 5, 5)
    with pytest.raises(ValueError, match="x has 9 channels but this convolution takes 3 x 2"):
        layer.forward(np.ones((1, 9, 5, 5), np.uint8), 1)
    with pytest.raises(ValueError, match="5 output channels do not split into 2 groups"):
        grouped(5)


def test_chain_steps_join_only_sole_readers():
    """chain_steps on a branching graph: a node whose output a second node also reads ends the
    run; the model's output is never inside one (it may end one); a max-pool never starts
    one."""
    from dorefa.runtime.bitconv import BitConv
    from dorefa.runtime.chain import CodesRun, chain_steps
    from dorefa.runtime.ops import MaxPool

    def conv(name, src):
        layer = BitConv(
            np.zeros((2, 2, 1, 1), np.uint8), 1, 1, 1, 0, 1, "codes", 1,
            np.zeros((2, 1), np.int32), np.ones(2, np.int8),
        )  # fmt: skip
        layer.name, layer.inputs = name, (src,)
        return layer

    pool = MaxPool(2, 2, 0)
    pool.name, pool.inputs = "p", ("input",)
    a, b, c, d, e = conv("a", "p"), conv("b", "a"), conv("c", "b"), conv("d", "b"), conv("e", "d")
    # (layer, inputs, values done after it); b is read by c and d, so it is done after d
    steps = [
        (pool, ("input",), ("input",)),
        (a, ("p",), ("p",)),
        (b, ("a",), ("a",)),
        (c, ("b",), ()),
        (d, ("b",), ("b",)),
        (e, ("d",), ("d",)),
    ]
    got = chain_steps(steps, output="e")
    kinds = [
        [la.name for la in s[0].layers] if isinstance(s[0], CodesRun) else s[0].name for s in got
    ]
    assert kinds == ["p", ["a", "b"], "c", ["d", "e"]]
    assert got[1][2] == ("p",)  # the run frees what its first node freed
    got = chain_steps(steps[:3], output="a")
    assert [s[0].name for s in got] == ["p", "a", "b"]  # a is the output: no run through it


def test_code_chain_rejects_bad_steps():
    native = kernels._native
    if native is None:
        pytest.skip("no native extension")
    with pytest.raises(ValueError, match="PreparedBitConv or a max-pool"):
        native.CodesChain([5])
    with pytest.raises(ValueError, match="at least one step"):
        native.CodesChain([])
    with pytest.raises(ValueError, match="PreparedBitConv or a max-pool"):
        native.CodesChain([(2, 2)])
    with pytest.raises(ValueError, match="PreparedBitConv or a max-pool"):
        native.CodesChain([(3, 0, 1)])
    pw = kernels.pack_weights(np.ones((2, 3, 3, 3), np.uint8), 1)
    signed = native.PreparedBitConv(kernels.available_kernels()[0], pw.words, 2, 3, 3, 3, 2, 1, 1,
                                    1, "signed")  # fmt: skip
    with pytest.raises(ValueError, match="output codes"):
        native.CodesChain([signed, (2, 2, 0)])
    pooled = native.CodesChain([(2, 2, 0), (3, 1, 1)])
    x = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    expected = kernels.maxpool_codes(kernels.maxpool_codes(x, 2, 2, 0), 3, 1, 1)
    assert np.array_equal(pooled(x, 1), expected)


def test_runtime_imports_no_torch(small_file, tmp_path):
    x = np.random.default_rng(1).random((4, 1, 40, 40), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "want.npy", rt.load(small_file)(x))
    code = (
        "import sys, numpy as np, dorefa.runtime\n"
        f"m = dorefa.runtime.load({str(small_file)!r})\n"
        f"y = m(np.load({str(tmp_path / 'x.npy')!r}))\n"
        f"assert np.array_equal(y, np.load({str(tmp_path / 'want.npy')!r}))\n"
        "assert 'torch' not in sys.modules, 'the runtime imported torch'\n"
        "print('ok', m.bits, m.size)\n"
    )
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ok 1,2,6")


def test_weights_are_bit_packed_and_file_is_small(tmp_path):
    model = calibrated("svhn", "1,2,6", 1.0, 1, 40)
    info = export(model, tmp_path / "m.dorefa")
    reader = fmt.Reader(tmp_path / "m.dorefa")
    for layer in reader.header["nodes"]:
        if layer["op"] == "bitconv":
            count = int(np.prod(layer["weight_shape"]))
            assert layer["weight"]["nbytes"] == layer["w_bits"] * -(-count // 8)
    # 1-bit weights: ~32x smaller than float32, minus float first/last layers and thresholds
    assert info["float_bytes"] / info["size"] > 20
    assert (
        rt.load(tmp_path / "m.dorefa").size
        == info["size"]
        == os.path.getsize(tmp_path / "m.dorefa")
    )


def test_alexnet_grouped_convs_and_fc_as_conv(tmp_path):
    model = calibrated("alexnet", "1,2,6", 0.0625, 3, 224)
    export(model, tmp_path / "a.dorefa")
    runtime = rt.load(tmp_path / "a.dorefa")
    assert any(getattr(la, "groups", 1) == 2 for la in runtime.layers)
    check_runtime_matches_torch(runtime, model, torch.rand(3, 3, 224, 224))


# ----------------------------------------------------------------------------- thresholds
@pytest.mark.parametrize("out_bits", [1, 2, 3, 8])
def test_thresholds_equal_brute_force(out_bits):
    """#{j: D >= t_j} (or <=) equals round(clip(alpha D + beta, 0, 1) n) for every D."""
    rng = np.random.default_rng(out_bits)
    dmax = 300
    alpha = rng.normal(0, 0.01, 40)
    alpha[:5] = 0  # constant code channels
    alpha[5:10] = -np.abs(alpha[5:10])
    beta = rng.normal(0.5, 0.8, 40)
    t, d = fold_thresholds(alpha, beta, out_bits, dmax)
    assert t.dtype == np.int32 and d.dtype == np.int8 and t.shape == (40, 2**out_bits - 1)
    dd = np.arange(-dmax, dmax + 1)
    got = requantize(np.broadcast_to(dd, (1, 40, 1, len(dd))).astype(np.int32), t, d)[0, :, 0]
    n = 2**out_bits - 1
    want = np.rint(np.clip(alpha[:, None] * dd[None] + beta[:, None], 0, 1) * n)
    assert np.array_equal(got, want)


# ----------------------------------------------------------------------------- unsupported
@pytest.mark.parametrize(
    "name,bits,kwargs,match",
    [
        ("resnet18", "1,32,32", {}, "A = 32"),
        ("svhn", "1,32,32", {}, "A = 32"),
        ("svhn", "32,2,32", {}, "W = 32"),
        ("svhn", "1,2,6", {"keep_first_last": False}, "quantize-first-last"),
    ],
)
def test_unsupported_models_fail_clearly(name, bits, kwargs, match, tmp_path):
    model = create_model(name, bits=bits, in_channels=1, width=0.125, **kwargs)
    with pytest.raises(ExportError, match=match):
        export(model, tmp_path / "x.dorefa")
    assert not (tmp_path / "x.dorefa").exists()


# ----------------------------------------------------------------------------- CLI
def test_cli_export_and_run_compare(trained, tmp_path, capsys):
    _, ckpt = trained("1,2,6")
    out = tmp_path / "m.dorefa"
    assert main(["export", str(ckpt), "-o", str(out)]) == 0
    assert (
        main(
            ["run", str(out), "--compare", str(ckpt), "--test-subset", "300", "--batch-size", "128"]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "test accuracy:" in text and "max logit difference:" in text
    agreement = float(text.split("agreement: ")[1].split("%")[0])
    assert agreement >= 99.9
    out.write_bytes(out.read_bytes()[:-5])
    assert main(["run", str(out)]) == 2
    assert "m.dorefa" in capsys.readouterr().err


def test_run_scores_the_models_own_data_and_compare_reads_header_bits(
    trained, tmp_path, capsys, monkeypatch, fashion_dir
):
    """`dorefa run` without --data had scored any model on Fashion-MNIST (a model that learnt
    MNIST got a meaningless accuracy); --compare with a file exported by the Python API (no
    meta) had accepted a checkpoint of other bits (10% agreement, no word)."""
    from dorefa.checkpoint import load_checkpoint, save_atomic

    monkeypatch.chdir(tmp_path)  # where the registry looks for MNIST: nothing there
    model, ckpt = trained("1,2,6")
    state = load_checkpoint(ckpt)
    mnist = tmp_path / "mnist.pt"
    save_atomic(dict(state, meta=dict(state["meta"], data="mnist")), mnist)
    assert main(["export", str(mnist), "-o", str(tmp_path / "mnist.dorefa")]) == 0
    capsys.readouterr()
    assert main(["run", str(tmp_path / "mnist.dorefa"), "--test-subset", "8"]) == 2
    assert "as its file records it" in capsys.readouterr().err  # MNIST is not here
    # a recorded folder that is not here: --data-dir gives another (the spec's name is kept)
    moved = tmp_path / "moved.pt"
    save_atomic(dict(state, meta=dict(state["meta"], data=f"fashion-mnist:{tmp_path}/x")), moved)
    assert main(["export", str(moved), "-o", str(tmp_path / "moved.dorefa")]) == 0
    argv = ["run", str(tmp_path / "moved.dorefa"), "--test-subset", "8"]
    assert main(argv) == 2 and "give --data or --data-dir" in capsys.readouterr().err
    assert main([*argv, "--data-dir", fashion_dir]) == 0, capsys.readouterr().err
    api = tmp_path / "api.dorefa"
    export(model, api)  # meta: none
    other = tmp_path / "other.pt"
    save_atomic(dict(state, meta=dict(state["meta"], bits="2,2,6")), other)
    assert main(["run", str(api), "--compare", str(other), "--test-subset", "8"]) == 2
    assert "has bits 2,2,6 but" in capsys.readouterr().err
    assert main(["run", str(api), "--compare", str(ckpt), "--test-subset", "8"]) == 0
    assert "8 images of fashion-mnist" in capsys.readouterr().out


def test_version_1_chain_files_still_load_and_give_the_same_logits(small_file, tmp_path):
    """A version-1 file (a chain of "layers", each feeding the next) is converted to a graph at
    load: same logits, bit for bit, as the version-2 file of the same model."""
    reader = fmt.Reader(small_file)
    header = json.loads(json.dumps(reader.header))
    arrays, layers = {}, []
    for node in header.pop("nodes"):
        spec = {k: v for k, v in node.items() if k not in ("name", "inputs", "source", "clip")}
        for key, entry in list(spec.items()):
            if isinstance(entry, dict) and "offset" in entry:
                arrays[f"{len(layers)}.{key}"] = np.array(reader.array(entry, key))
                spec[key] = {"array": f"{len(layers)}.{key}"}
        layers.append(spec)
    header.pop("output")
    old = tmp_path / "v1.dorefa"
    fmt.write(old, header | {"layers": layers}, arrays, version=fmt.FORMAT_VERSION_CHAIN)
    x = np.random.default_rng(2).random((5, 1, 40, 40), dtype=np.float32)
    v1 = rt.load(old)
    assert v1.version == 1 and rt.load(small_file).version == fmt.FORMAT_VERSION == 2
    assert np.array_equal(v1(x), rt.load(small_file)(x))


def test_package_exports_the_export_function():
    import dorefa
    import dorefa.exporter

    assert dorefa.export is dorefa.exporter.export and callable(dorefa.export)


@pytest.mark.parametrize("bits", ["1,2,6", "2,2,6", "4,4,32"])
def test_nan_weights_are_refused_at_export(tmp_path, bits):
    """A NaN weight gives scale NaN (every W): export refuses it rather than folding it into
    thresholds that make a layer output one code."""
    from dorefa.nn import QConv2d

    m = calibrated("svhn", bits, 0.125, 1, 40)
    conv = next(mod for mod in m.modules() if isinstance(mod, QConv2d) and mod.w_bits < 32)
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ExportError, match=r"conv1 \(QConv2d\): its weights are not finite"):
        export(m, tmp_path / "m.dorefa")
    if conv.w_bits > 1:  # all zero: f_w is 0 / 0 (had been said to be "not finite")
        with torch.no_grad():
            conv.weight.zero_()
        with pytest.raises(ExportError, match=r"features.conv1 \(QConv2d\): .* all zero"):
            export(m, tmp_path / "m.dorefa")
    if conv.w_bits == 1:  # finite, but mean|w| overflows (it had been said to be all zero)
        with torch.no_grad():
            conv.weight.fill_(3e38)
        with pytest.raises(ExportError, match=r"scale overflows float32 \(max \|w\| = 3e\+38"):
            export(m, tmp_path / "m.dorefa")


def test_a_file_larger_than_the_float_weights_is_said_to_be_larger():
    from dorefa.exporter import size_ratio

    assert size_ratio(8_328_104, 2_627_784) == "3.2x smaller"
    assert size_ratio(488, 5092) == "10.4x larger"  # it had said "0.1x smaller"


def test_an_export_past_the_readers_header_limit_is_refused(tmp_path, capsys):
    """A meta the reader would refuse (a header over 4 MiB) had been written: export said it
    was done, `dorefa run` refused the file."""
    m = calibrated("svhn", "1,2,6", 0.125, 1, 40)
    with pytest.raises(ExportError, match="past the format's 4194304-byte limit"):
        export(m, tmp_path / "m.dorefa", meta={"classes": ["x" * 100] * 50_000})
    assert not (tmp_path / "m.dorefa").exists()

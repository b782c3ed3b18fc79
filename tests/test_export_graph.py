"""Graph export: networks that are not plain chains (ResNet-18's float residual stream and
average-pool shortcuts, a quantize_model user CNN with a residual block and average pooling)
run on the bit runtime as their torch models do (the promise of runtime_promise.py), and
modules the runtime cannot run give a one-line ExportError naming them."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import dorefa.runtime as rt
from dorefa import quantize_model
from dorefa.data import get_dataset, to_model_input
from dorefa.exporter import ExportError, export, exportable
from dorefa.models import create_model
from dorefa.nn import ActQuant, QConv2d
from dorefa.runtime.loader import GraphBuilder
from runtime_promise import check_runtime_matches_torch

N_TEST = 1000
SIZE = 32  # Fashion-MNIST resized to 32x32: ResNet-18 downsamples 32x to a 1x1 map


@pytest.fixture(scope="module")
def fashion(fashion_dir):
    """{size: (train x, train y, test x, test y)}: 4000 training and 1000 test images."""
    cache = {}

    def get(size):
        if size not in cache:
            tr = get_dataset("fashion-mnist", "train").subset(4000)
            te = get_dataset("fashion-mnist", "test").subset(N_TEST)
            prep = dict(train=False, augment="none", generator=None)
            cache[size] = (
                to_model_input(tr.images, size, **prep),
                tr.labels.long(),
                to_model_input(te.images, size, **prep),
                te.labels.numpy(),
            )
        return cache[size]

    return get


def _train(model, x, y, steps=150, batch=64, lr=3e-3):
    """A brief Adam run (enough to learn Fashion-MNIST well above chance); eval mode after."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _check(model, x_test, y_test, path, size):
    export(model, path, input_size=size)
    res = check_runtime_matches_torch(rt.load(path), model, x_test)
    accuracy = float((res["got"].argmax(1) == y_test).mean())
    assert accuracy > 0.5, accuracy  # it learned something: chance is 0.1
    print(
        f"{path.name}: agreement {res['agreement']:.4f}, max rel {res['max_rel']:.2g}, "
        f"{len(res['flipped'])} images beyond 1e-3 (code flips), accuracy {accuracy:.3f}"
    )
    return res


@pytest.mark.parametrize("bits", ["1,4,32", "1,2,6"])
def test_resnet18_matches_torch(bits, fashion, tmp_path):
    """tensorpack's pre-activation ResNet-18 (width 0.25): float residual stream, avg-pool +
    1x1 projection shortcuts, global pooling; >= 99.9% same class on 1000 test images."""
    assert exportable("resnet18", bits) is None
    x, y, xt, yt = fashion(SIZE)
    model = create_model("resnet18", bits=bits, num_classes=10, in_channels=1, width=0.25)
    _train(model, x, y)
    _check(model, xt, yt, tmp_path / f"resnet18-{bits.replace(',', '-')}.dorefa", SIZE)


class _Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu2 = nn.ReLU()

    def forward(self, x):
        y = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(x + self.bn2(self.conv2(y)))


def _user_cnn():
    """A float CNN as a user writes it: stem, residual block (its add on codes and a BN output),
    strided conv, average and global pooling (quantize a conv's input, not an average)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 28 -> 14
        _Residual(16),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),  # 14 -> 7
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AvgPool2d(2),  # 7 -> 3, on the clipped float input of the classifier
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def test_quantize_model_user_cnn_matches_torch(fashion, tmp_path):
    x, y, xt, yt = fashion(28)
    model = quantize_model(_user_cnn(), "2,2,32")
    _train(model, x, y)
    _check(model, xt, yt, tmp_path / "user.dorefa", 28)
    assert rt.load(tmp_path / "user.dorefa").bits == "2,2"


class _Gelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.act = nn.GELU()
        self.fc = nn.Linear(4 * 26 * 26, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.act(self.conv(x)), 1))


class _FunctionalRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 26 * 26, 10)

    def forward(self, x):
        return self.fc(torch.flatten(F.relu(self.conv(x)), 1))


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 26 * 26, 10)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:  # data-dependent control flow: fx cannot trace it
            y = -y
        return self.fc(torch.flatten(y, 1))


def _seq(*mid):
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        *mid,
        nn.Flatten(),
        nn.LazyLinear(10),
    )


UNSUPPORTED = {
    "float ReLU (not quantized)": (lambda: _seq(nn.Conv2d(8, 8, 3)), None, "2: ReLU is an A = 32"),
    "GELU module": (_Gelu, "1,2,32", "act: GELU is not supported"),
    "functional relu": (_FunctionalRelu, "1,2,32", "function relu"),
    "dilated conv": (
        lambda: _seq(nn.Conv2d(8, 8, 3, dilation=2), nn.BatchNorm2d(8), nn.ReLU()),
        "1,2,32",
        "3.0: .*dilation",
    ),
    "adaptive pool to 2x2": (
        lambda: _seq(nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2)),
        "1,2,32",
        "6: AdaptiveAvgPool2d to 2",
    ),
    "A = 32": (lambda: _seq(nn.Conv2d(8, 8, 3)), "1,32,32", "2: ActQuant with A = 32"),
    "data-dependent branch": (_Branchy, "1,2,32", "_Branchy: torch.fx cannot trace"),
}


@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_unsupported_modules_give_one_line_export_error(case, tmp_path):
    make, bits, match = UNSUPPORTED[case]
    model = make()
    model(torch.rand(1, 1, 28, 28))  # materialise lazy layers
    if bits is not None:
        model = quantize_model(model, bits)
    with pytest.raises(ExportError, match=match) as info:
        export(model.eval(), tmp_path / "x.dorefa", input_size=28)
    assert "\n" not in str(info.value), str(info.value)
    assert not (tmp_path / "x.dorefa").exists()


def test_fused_nodes_give_the_same_logits(tmp_path, monkeypatch):
    """ResNet-18's fusions (stem + max-pool, BatchNorm + quantize, a bit convolution's float
    output + the residual add) change no bit of the logits, at one and two threads."""
    torch.manual_seed(0)
    model = create_model("resnet18", bits="1,2,6", num_classes=10, in_channels=1, width=0.25)
    model.train()
    with torch.no_grad():  # BatchNorm statistics from random batches: an untrained network
        for _ in range(3):
            model(torch.rand(16, 1, SIZE, SIZE))
    path = tmp_path / "resnet18.dorefa"
    export(model.eval(), path, input_size=SIZE)
    fused = rt.load(path)
    monkeypatch.setattr(GraphBuilder, "fuse", False)
    alone = rt.load(path)
    text = fused.summary()
    for what in ("maxpool 3x3 /2 pad 1 (fused)", "quantize -> 2-bit codes (fused)", "residual"):
        assert what in text, what
    assert len(fused.layers) < len(alone.layers)
    with pytest.raises(TypeError, match="cannot be pickled: pass the file's path"):
        __import__("pickle").dumps(fused)  # it had raised about PreparedBitConv
    nodes = [row.node for row in fused.plan()]  # a conv with the add fused in named as itself
    assert "blocks.0.conv_b (+ add)" in nodes and "blocks.0.conv_a" in nodes, nodes
    x = np.random.default_rng(0).random((3, 1, SIZE, SIZE), dtype=np.float32)
    for threads in (1, 2):
        np.testing.assert_array_equal(fused(x, threads), alone(x, threads))


def test_two_max_pools_after_a_float_conv_are_both_applied(tmp_path, monkeypatch):
    """A hostile review: a 3x3/1 pad-1 max-pool fused into the float conv, then a 2x2/2 one:
    the second was fused too, over the first, which the conv then ignored (logits off by up to
    15%)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.MaxPool2d(3, 1, 1), nn.MaxPool2d(2), nn.BatchNorm2d(8),
        nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip
    q = quantize_model(net, "1,2,32").eval()
    path = tmp_path / "pools.dorefa"
    export(q, path, input_size=16)
    x = torch.rand(16, 1, 16, 16)
    fused = rt.load(path)
    monkeypatch.setattr(GraphBuilder, "fuse", False)
    alone = rt.load(path)
    np.testing.assert_array_equal(fused(x.numpy()), alone(x.numpy()))
    with torch.no_grad():
        np.testing.assert_allclose(fused(x.numpy()), q(x).numpy(), rtol=1e-4, atol=1e-5)


def test_a_pooled_float_conv_takes_its_batch_in_parts(monkeypatch):
    """A hostile review: the GEMM path of a float conv + k x k / k max-pool with a float output
    held every image's im2col columns at once (979 MB for 12 MB of input); it takes images in
    parts of at most COLS_BYTES, with the same values."""
    import tracemalloc

    from dorefa.runtime import ops

    rng = np.random.default_rng(0)
    conv = ops.FloatConv(
        rng.standard_normal((8, 3, 7, 7)).astype(np.float32), np.ones(8, np.float32), 1, 3
    )
    conv.pool = 2
    x = rng.random((16, 3, 32, 32), dtype=np.float32)
    tracemalloc.start()
    whole = conv.forward(x, 1)
    peak_whole = tracemalloc.get_traced_memory()[1]
    monkeypatch.setattr(ops, "COLS_BYTES", 1 << 20)  # one image a part here
    tracemalloc.reset_peak()
    parts = conv.forward(x, 1)
    peak_parts = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(parts, whole)
    assert parts.shape == (16, 8, 16, 16) and peak_parts * 4 < peak_whole, (peak_parts, peak_whole)


def test_batch_shares_give_the_same_logits(tmp_path, monkeypatch):
    """A batch on several threads as shares of images, one thread each (executor.SPLIT_MACS,
    here lowered so that a small ResNet-18 takes that path): the same logits as one thread, a
    kernel forced in the calling thread forced in every share, and a share's error raised in
    the caller."""
    from dorefa import kernels as K
    from dorefa.runtime import executor

    torch.manual_seed(1)
    model = create_model("resnet18", bits="1,4,32", num_classes=10, in_channels=1, width=0.25)
    path = tmp_path / "resnet18.dorefa"
    export(model.eval(), path, input_size=SIZE)
    m = rt.load(path)
    assert 0 < m.macs < executor.SPLIT_MACS
    x = np.random.default_rng(0).random((5, 1, SIZE, SIZE), dtype=np.float32)
    one = m(x, 1)
    monkeypatch.setattr(executor, "SPLIT_MACS", 0)
    monkeypatch.setattr(executor, "usable_threads", lambda t: t)  # the shares, on any CPU count
    seen, fail = [], []
    forward = m._forward

    def spy(part, threads, *rest):
        seen.append((len(part), threads, K.forced_kernel()))
        if fail and len(part) == 3:  # the second share of 5 images (bounds 0, 2, 5)
            raise RuntimeError("a share failed")
        return forward(part, threads, *rest)

    monkeypatch.setattr(m, "_forward", spy)
    for threads, shares in ((2, [(3, 1), (2, 1)]), (3, [(2, 1), (1, 1), (2, 1)]), (8, None)):
        seen.clear()
        np.testing.assert_array_equal(m(x, threads), one)
        if shares is not None:
            assert sorted(s[:2] for s in seen) == sorted(shares)
    np.testing.assert_array_equal(m(x[:2], 4), one[:2])  # 2 shares of 2 threads
    assert sorted(s[:2] for s in seen[-2:]) == [(1, 2), (1, 2)]
    with K.use_kernel("popcount-scalar/portable") as name:
        seen.clear()
        np.testing.assert_array_equal(m(x, 2), one)
    assert [s[2] for s in seen] == [name, name]
    fail.append(True)
    with pytest.raises(RuntimeError, match="a share failed"):
        m(x, 2)


class _AliasedIadd(nn.Module):
    """`skip = x; x += f(x)`, then skip read: eager torch changes skip too."""

    def __init__(self, alias: bool):
        super().__init__()
        self.alias = alias
        self.stem, self.bn0, self.r0 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.c1, self.b1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.r1, self.r2 = nn.ReLU(), nn.ReLU()
        self.fc = nn.Linear(2 * 8 * 8 * 8 if alias else 8 * 8 * 8, 10)

    def forward(self, x):
        x = self.bn0(self.stem(x))
        skip = x
        x += self.b1(self.c1(self.r0(x)))
        if self.alias:
            x = torch.cat([self.r1(x), self.r2(skip)], 1)
        else:
            x = self.r1(x)
        return self.fc(torch.flatten(x, 1))


def _agree(model, tmp_path, size=8, bits="2,2,32"):
    """Export ``model`` (quantized with ``bits``) and return the largest |logit| difference
    between the runtime and torch on random images."""
    model = quantize_model(model, bits).eval()
    export(model, tmp_path / "m.dorefa", input_size=size)
    x = torch.rand(16, model.stem.in_channels if hasattr(model, "stem") else 1, size, size)
    with torch.no_grad():
        want = model(x).numpy()
    return float(np.abs(rt.load(tmp_path / "m.dorefa")(x.numpy()) - want).max())


def test_an_in_place_add_read_under_another_name_is_refused(tmp_path):
    """fx records `x += y` as `x + y`: the export gave skip its old value (logits 0.39 apart,
    no error). An in-place add whose x is read later is refused; one that is not exports."""
    torch.manual_seed(0)
    with pytest.raises(ExportError, match=r"`x \+= y` where x is used again after it"):
        _agree(_AliasedIadd(alias=True), tmp_path)
    assert _agree(_AliasedIadd(alias=False), tmp_path) < 1e-4


class _OneInputCat(nn.Module):
    """``torch.cat([x], 1)``: a list of branches of length one."""

    def __init__(self):
        super().__init__()
        self.stem, self.r0 = nn.Conv2d(1, 8, 3, padding=1), nn.ReLU()
        self.c1, self.b1, self.r1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        x = torch.cat([self.r0(self.stem(x))], 1)
        return self.fc(torch.flatten(self.r1(self.b1(self.c1(x))), 1))


def test_a_one_input_concat_runs(tmp_path):
    """The exporter wrote it and the loader took it, but the runtime raised NotImplementedError
    (a one-input node runs ``forward``; concat had only ``run``)."""
    torch.manual_seed(0)
    assert _agree(_OneInputCat(), tmp_path) < 1e-4


class _StemPool(nn.Module):
    """A float stem, then a 2x2 max-pool the loader fuses into it, its output float."""

    def __init__(self):
        super().__init__()
        self.stem, self.pool = nn.Conv2d(1, 8, 3, padding=1), nn.MaxPool2d(2)
        self.bn, self.fc = nn.BatchNorm2d(8), nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.bn(self.pool(self.stem(x))), 1))


def test_a_float_stem_with_a_pool_takes_an_empty_batch(tmp_path):
    """Found by a hostile review: the fused stem + pool reshaped its output to (0, -1, 4, 4)
    for no images, which numpy cannot size (ValueError); every other op takes N = 0."""
    torch.manual_seed(0)
    assert _agree(_StemPool(), tmp_path) < 1e-4
    model = rt.load(tmp_path / "m.dorefa")
    assert model(np.zeros((0, 1, 8, 8), np.float32)).shape == (0, 10)


def test_weight_norm_weights_are_current_at_export(tmp_path):
    """weight_norm computes the weight in a forward pre-hook: trained and exported without a
    forward in between, the runtime ran the weights of the last forward (6% agreement)."""
    torch.manual_seed(0)
    model = _seq(nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    model(torch.rand(2, 1, 8, 8))  # materialise the lazy classifier
    model[0] = torch.nn.utils.weight_norm(model[0])
    model = quantize_model(model, "2,2,32")
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(torch.rand(4, 1, 8, 8)), torch.arange(4)).backward()
        opt.step()
    model.eval()
    export(model, tmp_path / "m.dorefa", input_size=8)
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(rt.load(tmp_path / "m.dorefa")(x.numpy()) - want).max() < 1e-4


def test_quantize_model_refuses_a_shared_relu_and_names_what_it_leaves_float():
    class Shared(nn.Module):  # torchvision's BasicBlock calls self.relu twice
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3)
            self.relu, self.fc = nn.ReLU(), nn.Linear(4, 2)

        def forward(self, x):
            x = self.relu(self.b(self.relu(self.a(x))))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    with pytest.raises(ValueError, match="relu .an nn.ReLU. is called 2 times in forward"):
        quantize_model(Shared(), "1,2,32")

    class Counting(nn.Sequential):  # the check's traced forward leaves no trace on the model
        calls = 0

        def forward(self, x):
            self.calls += 1
            self.feat = super().forward(x)
            return self.feat

    net = quantize_model(Counting(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)), "1,2,32")
    assert net.calls == 0 and "feat" not in vars(net)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU6(), nn.Conv2d(4, 4, 3), nn.ReLU())
    net.append(torch.nn.utils.parametrizations.weight_norm(nn.Conv2d(4, 4, 1)))
    with pytest.warns(UserWarning, match=r"nn.ReLU only; 1, 4 stay float"):
        quantize_model(net, "1,2,32")


def test_quantize_model_keeps_shared_modules_and_the_models_parameters():
    """Found by a hostile review: a conv registered under two names had been split (one name
    quantized, the other float); the converted layers had new Parameters (tied weights untied,
    frozen layers trainable, a meta model refused); a second call with other bits kept the
    first's silently; a ReLU after the last layer clipped the outputs to [0, 1] unsaid."""
    shared = nn.Conv2d(4, 4, 3, padding=1)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), shared, nn.ReLU(), shared)
    m.append(nn.ReLU())
    m.extend([nn.Flatten(), nn.Linear(4 * 8 * 8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU()])
    m.extend([nn.Linear(8, 8), nn.ReLU()])
    m[9].weight.requires_grad_(False)  # frozen
    m[11].weight = m[9].weight  # tied (both quantized: keep_first_last is False)
    tied, params = m[9].weight, sum(p.numel() for p in m.parameters())
    with pytest.warns(UserWarning, match=r"12 \(nn.ReLU\) acts on the model's outputs"):
        quantize_model(m, "1,2,6", keep_first_last=False)
    assert m[2] is m[4] and isinstance(m[2][0], QConv2d)
    assert m[9][0].weight is tied and m[11][0].weight is tied and not tied.requires_grad
    assert sum(p.numel() for p in m.parameters()) == params
    assert isinstance(m[12], ActQuant)  # on the outputs: f_a as before, and said (above)
    assert m(torch.rand(2, 1, 8, 8)).shape == (2, 8)
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(m, "4,4,8")
    with torch.device("meta"):
        meta = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
    assert isinstance(quantize_model(meta, "1,2,6", keep_first_last=False)[0][0], QConv2d)


def test_quantize_model_says_what_it_cannot_check_or_convert():
    class Branchy(nn.Module):  # a data-dependent forward: fx cannot trace it
        def __init__(self):
            super().__init__()
            self.c0, self.c1, self.relu = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.ReLU()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x = self.relu(self.c0(x))
            if x.mean() > -1:
                x = self.relu(self.c1(x))
            return self.fc(x.mean((2, 3)))

    with pytest.warns(UserWarning, match="cannot trace this model's forward"):
        quantize_model(Branchy(), "1,2,6")
    conv1d = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(24, 2))
    with pytest.warns(UserWarning, match=r"nn.ReLU only; 0 stay float"):  # it had said nothing
        quantize_model(conv1d, "1,2,6")
    hooked = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
    hooked.append(nn.Flatten())
    hooked.append(nn.Linear(4 * 4 * 4, 2))
    for layer in (hooked[0], hooked[2]):  # the first stays float: its hook stays with it
        layer.register_forward_hook(lambda *args: None)
    with pytest.warns(UserWarning, match=r"replaces 2, whose hooks"):
        quantize_model(hooked, "1,2,6")

    class Functional(nn.Module):  # F.relu, x.relu(): no module to convert (it said nothing)
        def __init__(self):
            super().__init__()
            self.c0, self.c1, self.c2 = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x = self.c1(F.relu(self.c0(x))).relu()
            return self.fc(torch.relu(self.c2(x)).mean((2, 3)))

    with pytest.warns(UserWarning, match=r"calls ReLU as a function \(relu, relu_1, relu_2\)"):
        quantize_model(Functional(), "1,2,6")


def test_export_names_a_bad_input_size(tmp_path):
    model = quantize_model(_seq(), "1,2,32")
    model(torch.rand(1, 1, 8, 8))
    for bad in ((8, 12), 0, 2.5):
        with pytest.raises(ExportError, match="input_size must be one int >= 1, the side of"):
            export(model.eval(), tmp_path / "m.dorefa", input_size=bad)

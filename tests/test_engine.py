"""Integer training (dorefa.engine): the int engine's three products equal the torch engine's
within float32 rounding on every model (per layer and a whole step), its fallbacks and refusals,
linear layers, activation tags, dropout factors, NaN inputs, the max-pool and the float first
layer, and its native passes (f_a, BatchNorm, the float finishing passes, f_g's codes, the
forward scaling) against torch or the spec. The backward kernels against the spec:
test_grad_kernels.py.

Tolerance of int engine vs torch engine (same inputs, same f_g noise, so the same codes): the
int engine sums integers exactly and rounds once (scale x integer in float64, then float32);
the torch engine rounds its operands (f_w, f_g values: a few roundings each, within
8 * 2**-24 relative to m or |w|) and accumulates K terms in float32 (recursive summation: at
most K * 2**-24 of the sum of absolute values, blocked sums do better). So
``|int - torch| <= (K + 10) * 2**-24 * B``, B the same product on absolute values, K the number
of terms of one output (C*KH*KW forward, O*KH*KW input gradient, N*H'*W' weight gradient).
The weight gradient's scales sit on an integer grid (reference_grad.grid_scales: each within
``M / (2Q)`` of m_b, M the batch's largest, Q = 2**24 - 1), which adds ``M / (2Q) * sum |f_a|``
over a weight's terms.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.nn.grad import conv2d_input, conv2d_weight

from dorefa import kernels as K
from dorefa.bits import Bits
from dorefa.engine import IntLayer, engine_summary
from dorefa.kernels import reference_grad as R
from dorefa.models import create_model, list_models
from dorefa.nn import ActQuant, GradQuant, QConv2d, QLinear, set_engine, set_grad_generator
from dorefa.quantizers import quantize_gradient
from kernel_cases import KERNELS, fresh_process

U32 = 2.0**-24
TRIPLES = [(1, 2, 6), (1, 1, 4), (2, 2, 6), (1, 4, 8)]
WGRAD = K._native.wgrad_kernels() if K._native is not None else []


# ---------------------------------------------------------- int engine == torch engine, per layer
def _products(conv, gq, x, dy, seed):
    """(y, dx, dW) of ``gq(conv(x))`` with gradient dy and f_g noise from Generator(seed); dW is
    the gradient of the quantized weight f_w(W) (the product; autograd then takes it through
    f_w to the latent weight the same way on both engines)."""
    x = x.detach().requires_grad_()
    wq = conv.quantized_weight().detach().requires_grad_()
    conv.quantized_weight = lambda: wq  # the instance attribute shadows the method
    conv.weight.grad = None
    try:
        gq.generator = torch.Generator().manual_seed(seed)
        y = gq(conv(x))
        y.backward(dy)
    finally:
        del conv.quantized_weight
    # W = 1 on the int engine routes the product to the weight itself (f_w's gradient is the
    # identity there): the same dL/d f_w(W)
    dw = wq.grad if wq.grad is not None else conv.weight.grad
    return y.detach(), x.grad.detach(), dw.detach()


def _bounds(conv, gq, x, dy, seed):
    """(B, K, grid) of y, dx and dW: B the product on absolute values (float64), K its terms,
    grid the weight gradient's scale-grid term (0 for y and dx). The
    operands' own rounding errors are relative to m_b (f_g's c (2m/n) - m cancels near c = n/2)
    and to max|f_w| (2 p/n - 1), so those are added to the absolute values."""
    wq = conv.quantized_weight().detach().double().abs()
    wq = wq + wq.max()
    g = quantize_gradient(dy, gq.k, torch.Generator().manual_seed(seed)).double()
    m = g.reshape(len(g), -1).abs().amax(1).reshape((-1,) + (1,) * (g.dim() - 1))
    g = g.abs() + m
    x64 = x.detach().double().abs()
    if isinstance(conv, torch.nn.Linear):
        x64, wq, g = x64[:, :, None, None], wq[:, :, None, None], g[:, :, None, None]
        stride, padding = 1, 0
    else:
        stride, padding = conv.stride, conv.padding
    n, o, oh, ow = g.shape
    c, kh, kw = wq.shape[1:]
    # the weight gradient's scales on their grid (reference_grad.grid_scales): each within
    # M / (2Q) of m_b, times the sum of |f_a| over a weight's terms
    ones = torch.ones(g.shape, dtype=torch.float64)
    grid = float(dy.abs().max()) / (2 * R.GRID) * conv2d_weight(x64, wq.shape, ones, stride=stride,
                                                                 padding=padding)  # fmt: skip
    return (
        (F.conv2d(x64, wq, stride=stride, padding=padding), c * kh * kw, 0.0),
        (conv2d_input(x64.shape, wq, g, stride=stride, padding=padding), o * kh * kw, 0.0),
        (conv2d_weight(x64, wq.shape, g, stride=stride, padding=padding), n * oh * ow, grid),
    )


def _check_close(name, got, want, bound, terms, grid=0.0):
    if not isinstance(grid, float):
        grid = grid.reshape(want.shape)
    tol = (terms + 10) * U32 * bound.reshape(want.shape) + grid + 1e-30
    err = (got.double() - want.double()).abs()
    worst = float((err / tol).max())
    assert worst <= 1.0, f"{name}: error {worst:.2f}x the float32 rounding bound"


def _layer_inputs(model, bits, x):
    """For every int-engine layer of ``model``: (module, its GradQuant, input x, output grad dy)
    captured from one int-engine training step (tensor hooks only: module identities unchanged)."""
    report = set_engine(model, "int")
    layers = {name: mod for name, mod in model.named_modules() if report.get(name) == "int"}
    seen = {}

    def pre(mod, args, name=None):
        seen[name] = [args[0].detach().clone(), None]

    def post(mod, args, out, name=None):
        out.register_hook(lambda g, name=name: seen[name].__setitem__(1, g.detach().clone()))

    handles = []
    for name, mod in layers.items():
        handles.append(mod.register_forward_pre_hook(lambda m, a, name=name: pre(m, a, name)))
        handles.append(mod.register_forward_hook(lambda m, a, o, name=name: post(m, a, o, name)))
    set_grad_generator(model, torch.Generator().manual_seed(11))
    model.train()
    out = model(x)
    F.cross_entropy(out, torch.arange(len(x)) % out.shape[1]).backward()
    for h in handles:
        h.remove()
    return report, {name: (layers[name], mod_gq(layers[name]), *seen[name]) for name in layers}


def mod_gq(module):
    return module.int_engine.grad_quant


MODEL_SETUPS = {"svhn": (0.125, 40, 4), "alexnet": (0.0625, 224, 2), "resnet18": (0.125, 224, 2)}


@pytest.mark.parametrize("model_name", list_models())
@pytest.mark.parametrize("bits", TRIPLES)
def test_int_engine_equals_torch_engine_per_layer(model_name, bits):
    """Every quantized layer of every registered model: the same input and output gradient give
    the same y, dx and dW on both engines within the float32 bound of the module docstring."""
    torch.manual_seed(0)
    width, size, batch = MODEL_SETUPS[model_name]
    model = create_model(model_name, bits=Bits(*bits), width=width, in_channels=1)
    x = torch.rand(batch, 1, size, size)
    report, layers = _layer_inputs(model, Bits(*bits), x)
    assert "int" in report.values() and layers, report
    for name, (module, gq, xin, dy) in layers.items():
        assert dy is not None, f"{name}: no gradient reached it"
        set_engine(model, "int")
        got = _products(module, gq, xin, dy, seed=5)
        set_engine(model, "torch")
        want = _products(module, gq, xin, dy, seed=5)
        for what, g, w, (bound, terms, grid) in zip(
            ("y", "dx", "dW"), got, want, _bounds(module, gq, xin, dy, seed=5), strict=True
        ):
            _check_close(f"{model_name} {bits} {name} {what}", g, w, bound, terms, grid)


@pytest.mark.parametrize("bits", TRIPLES)
def test_int_engine_model_step_matches_torch(bits):
    """A whole svhn training step (every quantized conv on the int engine, conv6 behind the
    Dropout included): the logits and the loss agree within float32 rounding, and so does the
    gradient of the float last layer (it depends on forward values only). The quantized
    layers' gradients are not compared here: the int engine's outputs are exact and discrete,
    so a BatchNorm output can tie exactly with f_a's clip boundary (seen: bn6's output at 0,
    where the torch engine has +-7e-7 of rounding noise), and one element on the other side
    changes the whole channel's gradient through BatchNorm's backward. The per-layer test
    above is the exact check of the three products."""
    torch.manual_seed(0)
    runs = []
    for engine in ("torch", "int"):
        torch.manual_seed(0)
        model = create_model("svhn", bits=Bits(*bits), width=0.125, in_channels=1)
        set_engine(model, engine)
        set_grad_generator(model, torch.Generator().manual_seed(3))
        x = torch.rand(6, 1, 40, 40, generator=torch.Generator().manual_seed(1))
        on_int: list[bool] = []

        def note(module, inputs, output, on_int=on_int):
            on_int.append(hasattr(output, "_dorefa_fg"))

        for i in range(1, 7):
            getattr(model.features, f"conv{i}").register_forward_hook(note)
        out = model(x)
        assert on_int == [engine == "int"] * 6
        loss = F.cross_entropy(out, torch.arange(6) % 10)
        loss.backward()
        runs.append((out.detach(), loss.item(), model.fc.weight.grad.clone()))
    (o1, l1, g1), (o2, l2, g2) = runs
    assert torch.allclose(o1, o2, rtol=1e-5, atol=1e-5) and abs(l1 - l2) < 1e-5
    assert float((g1 - g2).norm() / g1.norm()) < 1e-5


def test_set_engine_reports_and_falls_back():
    model = create_model("svhn", bits=Bits(1, 2, 32), width=0.125)
    report = set_engine(model, "int")
    assert report["features.conv1"] == "torch: G=32: a float gradient"
    assert report["features.conv0"].startswith("torch: W=32")
    assert "0 of 8 quantized layers" in engine_summary(report)
    model = create_model("svhn", bits=Bits(1, 2, 6), width=0.125)
    line = engine_summary(set_engine(model, "int"))
    assert "6 of 8 quantized layers" in line and "features.conv0 (W=32, A=2: float" in line
    with pytest.raises(ValueError, match="engine must be one of torch, int"):
        set_engine(model, "fast")
    # a call whose input is not A-bit codes runs on torch, with f_g done by the GradQuant
    conv, gq = QConv2d(3, 4, 3, w_bits=1), GradQuant(4)
    net = torch.nn.Sequential(conv, gq)
    assert set_engine(net, "int", bits=Bits(1, 2, 4)) == {"0": "int"}
    x = torch.rand(2, 3, 5, 5)  # not codes
    y = net(x.requires_grad_())
    assert "GradQuantFn" in type(y.grad_fn).__name__
    xq = ActQuant(2)(x.detach())
    y = net(xq.requires_grad_())
    assert "IntConvFn" in type(y.grad_fn.next_functions[0][0]).__name__
    set_engine(net, "torch")
    assert conv.int_engine is None and gq.fused is None


def test_linear_layers_run_as_1x1_convolutions():
    torch.manual_seed(0)
    lin, gq = QLinear(12, 5, w_bits=2), GradQuant(6)
    net = torch.nn.Sequential(lin, gq)
    x = ActQuant(3)(torch.rand(4, 12))
    dy = torch.randn(4, 5)
    set_engine(net, "int", bits=Bits(2, 3, 6))
    got = _products(lin, gq, x, dy, seed=2)
    set_engine(net, "torch")
    want = _products(lin, gq, x, dy, seed=2)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert torch.allclose(g, w, rtol=1e-5, atol=1e-6)


def test_codes_come_from_the_activation_tag_until_it_changes():
    """An ActQuant of the int engine tags its output with its codes: the layer takes them
    without checking; an in-place change drops the tag (the tensor's version moved)."""
    layer = IntLayer(2, 1, 6, 1, 0, GradQuant(6))
    act = ActQuant(2)
    act.emit_codes = True
    y = act(torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(0)) * 1.4 - 0.2)
    q, factor = layer.codes(y)
    assert q is y._dorefa_codes[2] and factor == 1.0
    assert np.array_equal(q, torch.round(y * 3).to(torch.uint8).numpy())
    y.mul_(0.5)  # now holds 1/6 steps: not codes / 3
    assert layer.codes(y) is None
    assert layer.codes(torch.full((1, 2, 3, 3), 0.4)) is None  # untagged and not codes


def test_codes_behind_a_dropout_carry_its_factor():
    """A layer after Dropout(p) takes inputs codes * 1/(1-p) / n_a (training) and codes / n_a
    (eval), and its products use the factor."""
    layer = IntLayer(2, 1, 6, 1, 0, GradQuant(6), input_factor=2.0)
    codes = torch.randint(0, 4, (2, 3, 5, 5), generator=torch.Generator().manual_seed(1))
    for factor in (2.0, 1.0):
        q, got = layer.codes(codes / 3 * factor)
        assert got == factor and np.array_equal(q, codes.to(torch.uint8).numpy())
    model = create_model("svhn", bits=Bits(1, 2, 6), width=0.125, in_channels=1)
    set_engine(model, "int")
    assert model.features.conv6.int_engine.input_factor == 2.0  # Dropout(0.5) before it
    assert model.features.conv5.int_engine.input_factor == 1.0


@pytest.mark.parametrize("w_bits", [1, 2, 4])
def test_a_nan_weight_makes_the_int_engine_output_nan_as_torch(w_bits):
    """A diverged layer is not hidden: at W >= 2 the NaN weight had become code 0 with the scale
    1/n, and the int engine's outputs were finite where the torch engine's are all NaN."""
    outs = {}
    for engine in ("torch", "int"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            ActQuant(2), QConv2d(3, 4, 3, padding=1, bias=False, w_bits=w_bits), GradQuant(4)
        )
        with torch.no_grad():
            model[1].weight[1, 2, 0, 0] = float("nan")
        set_engine(model, engine, Bits(w_bits, 2, 4))
        outs[engine] = model(torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(1)))
    assert torch.isnan(outs["torch"]).all() and torch.isnan(outs["int"]).all()


def test_nan_activations_reach_the_output_and_inference_mode_runs():
    """A NaN input is not tagged with code 0: the layer goes to torch and the NaN propagates;
    inference_mode (tensors without a version counter) runs the model."""
    model = torch.nn.Sequential(
        ActQuant(2), QConv2d(3, 4, 3, padding=1, bias=False, w_bits=2), GradQuant(4)
    )
    set_engine(model, "int", Bits(2, 2, 4))
    x = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    x[0, 1, 2, 2] = float("nan")
    y = model(x)
    assert torch.isnan(y[0]).any() and not torch.isnan(y[1]).any()
    with torch.inference_mode():
        z = model(x[1:])
    assert torch.allclose(z, y[1:], atol=1e-6)


# ------------------------------------------------------------------ the int engine's max-pool
@pytest.mark.skipif(not WGRAD, reason="needs the compiled kernels")
@pytest.mark.parametrize("k, hw", [(2, (9, 8)), (2, (36, 36)), (3, (7, 10)), (1, (3, 4))])
def test_int_max_pool_equals_torch_bit_for_bit(k, hw):
    """Values from a few levels (many ties), +-0.0, +-inf and NaN; odd sizes (floor mode);
    gradients with -0.0: the maxima, the gradient positions and their bits are torch's."""
    from dorefa.engine_pool import IntMaxPool2d

    rng = np.random.default_rng(k)
    levels = np.array([-np.inf, -1.0, -0.0, 0.0, 0.5, 1.0, np.inf, np.nan], np.float32)
    x = torch.from_numpy(levels[rng.integers(0, 8, (3, 5) + hw)])
    x[0] = torch.from_numpy(rng.integers(0, 3, (5,) + hw).astype(np.float32))  # ties, no NaN
    dy = torch.from_numpy(levels[rng.integers(1, 6, (3, 5, hw[0] // k, hw[1] // k))])
    outs = []
    for cls in (torch.nn.MaxPool2d, IntMaxPool2d):
        xi = x.clone().requires_grad_()
        y = cls(k)(xi)
        y.backward(dy)
        outs.append((y.detach().view(torch.int32), xi.grad.view(torch.int32)))
    assert torch.equal(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1], outs[1][1])


def test_int_engine_switches_plain_max_pools_only():
    from dorefa.engine_pool import IntMaxPool2d

    model = create_model("svhn", bits="1,2,6", num_classes=10, in_channels=1, width=0.25)
    overlapping = torch.nn.MaxPool2d(3, stride=2)
    model.add_module("extra", overlapping)
    set_engine(model, "int")
    pools = [m for m in model.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert sum(type(m) is IntMaxPool2d for m in pools) == len(pools) == 3
    x = torch.rand(2, 3, 9, 9, requires_grad=True)
    assert torch.equal(overlapping(x), torch.nn.functional.max_pool2d(x, 3, 2))  # torch's path
    set_engine(model, "torch")
    assert all(type(m) is torch.nn.MaxPool2d for m in pools)


@pytest.mark.parametrize("kernel", KERNELS)
def test_int_engine_float_conv_on_the_float_kernel(kernel):
    """A float-weight first layer (<= 4 input channels) under the int engine, stride 1, within
    float32 rounding of torch's convolution: where the backend in force is AVX-512 and the
    kernel 3x3 or 5x5, its forward and its weight and bias gradients on the training kernels
    (conv_float_train_forward, conv_float_weight_grad: their values, tested against float64
    sums in test_float_layers.py), else the forward on kernels.conv_float (every other kernel,
    the reference included) and torch's gradients; the input's gradient torch's own; a strided
    conv, one of 8 input channels, bf16 autocast and float64 inputs run torch's conv."""
    from dorefa.kernels import use_kernel
    from dorefa.kernels.extension import native
    from dorefa.kernels.selection import backend_of

    torch.manual_seed(0)
    with use_kernel(kernel):
        for c, o, k, pad, bias in [(1, 6, 5, 0, True), (3, 5, 3, 1, False), (2, 17, 1, 0, True)]:
            conv = QConv2d(c, o, k, padding=pad, bias=bias, w_bits=32)
            assert set_engine(torch.nn.Sequential(conv), "int", bits=Bits(32, 2, 6))["0"].endswith(
                "the forward on the float conv kernel"
            )
            x = torch.rand(3, c, 11, 10, requires_grad=True)
            y = conv(x)
            assert "FloatConvFn" in type(y.grad_fn).__name__
            want = F.conv2d(x.detach(), conv.weight.detach(), conv.bias, padding=pad)
            assert torch.allclose(y, want, rtol=1e-5, atol=1e-5)
            b = conv.bias.detach().numpy() if bias else np.zeros(o, np.float32)
            train_y = native.conv_float_train_forward(
                x.detach().numpy(), conv.weight.detach().numpy(), b, pad, 1
            )
            if backend_of(kernel) == "avx512" and k in (3, 5):  # the training kernel's forward
                assert train_y is not None and torch.equal(y.detach(), torch.from_numpy(train_y))
            dy = torch.randn_like(y)
            y.backward(dy)
            sums = native.conv_float_weight_grad(x.detach().numpy(), dy.numpy(), k, k, pad, bias, 1)
            if backend_of(kernel) == "avx512" and k in (3, 5):
                assert sums is not None  # every CPU with an AVX-512 kernel has the native path
                want_w = torch.from_numpy(sums[0])
                want_b = None if sums[1] is None else torch.from_numpy(sums[1])
            else:
                want_w = conv2d_weight(x.detach(), conv.weight.shape, dy, padding=pad)
                want_b = dy.sum((0, 2, 3))
            assert torch.equal(conv.weight.grad, want_w)
            assert torch.equal(x.grad, conv2d_input(x.shape, conv.weight.detach(), dy, padding=pad))
            if bias:
                assert torch.equal(conv.bias.grad, want_b)
    for other in (QConv2d(1, 4, 3, stride=2, w_bits=32), QConv2d(8, 4, 3, w_bits=32)):
        assert set_engine(torch.nn.Sequential(other), "int", bits=Bits(32, 2, 6))["0"] == (
            "torch: W=32, A=2: float weights or inputs"
        )
    conv = QConv2d(1, 4, 3, w_bits=32)
    set_engine(torch.nn.Sequential(conv), "int", bits=Bits(32, 2, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (
            "FloatConvFn"
            not in type(conv(torch.rand(2, 1, 6, 6, requires_grad=True)).grad_fn).__name__
        )
    conv.double()
    assert conv(torch.rand(2, 1, 6, 6, dtype=torch.float64)).dtype == torch.float64


_FA_CASE = """
import torch
from dorefa.engine_act import act_quant_train
from dorefa.quantizers import quantize_activation

for threads in (1, 3):
    torch.set_num_threads(threads)
    for k in range(1, 9):
        n = (1 << k) - 1
        ties = torch.arange(2 * n + 1, dtype=torch.float32) / (2 * n)
        special = torch.tensor([-0.0, 0.0, float("inf"), -float("inf"), 1e-40, -1e-40, 1.0, -1.0])
        near = torch.cat([ties, torch.nextafter(ties, ties + 1), torch.nextafter(ties, ties - 1)])
        x = torch.cat([special, near, torch.randn(70000) * 0.7 + 0.5])
        x = x[: x.numel() // 2 * 2].reshape(2, -1)
        for with_nan in (False, True):
            if with_nan:
                x = x.clone()
                x[1, 5] = float("nan")
            xa = x.clone().requires_grad_()
            y, codes = act_quant_train(xa, k)
            want_codes = []
            xb = x.clone().requires_grad_()
            want = quantize_activation(xb, k, True, want_codes)
            assert torch.equal(y.view(torch.int32), want.view(torch.int32)), (k, threads)
            assert codes is None if with_nan else torch.equal(codes, want_codes[0]), k
            dy = torch.randn_like(x)
            inf, nan = float("inf"), float("nan")
            dy[0, :8] = torch.tensor([inf, -inf, nan, -0.0, 0.0, 1, 2, 3])
            y.backward(dy)
            want.backward(dy)
            assert torch.equal(xa.grad.view(torch.int32), xb.grad.view(torch.int32)), k
torch.set_num_threads(1)
print("ok")
"""


@pytest.mark.skipif(not WGRAD, reason="needs the compiled kernels")
def test_int_engine_f_a_native_pass_equals_torch():
    """The int engine's f_a (engine_act.py, csrc/act_train.h) against quantize_activation, bit
    for bit, for A = 1..8 at 1 and 3 threads: outputs (with -0.0, NaN, +-inf, subnormals, every
    rounding tie k / (2n) and its float32 neighbours, values next to 0 and 1), codes, the NaN
    flag, and the gradient for finite, infinite and NaN output gradients; 70000 elements
    (several work items). Here (AVX-512 where the CPU has it), and with the features hidden
    down to AVX2 and to none (its other two compiled copies)."""
    exec(_FA_CASE, {})
    assert fresh_process(_FA_CASE, DOREFA_CPU_FEATURES="avx2,fma") == ["ok"]
    assert fresh_process(_FA_CASE, DOREFA_CPU_FEATURES="") == ["ok"]


_BN_CASE = """
import copy, torch
from dorefa.engine_bn import IntBatchNorm2d

torch.manual_seed(0)
for threads in (1, 3):
    torch.set_num_threads(threads)
    for shape in [(16, 5, 9, 9), (3, 17, 4, 3), (2, 3, 1, 1), (40, 6, 18, 18), (70, 7, 7, 7),
                  (33, 4, 8, 8)]:
        bn = torch.nn.BatchNorm2d(shape[1], momentum=0.3)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
        ib = copy.deepcopy(bn)
        ib.__class__ = IntBatchNorm2d
        for step in range(2):
            x = (torch.randn(*shape) * 3 + 2 + step).requires_grad_()
            x2 = x.detach().clone().requires_grad_()
            y, y2 = bn(x), ib(x2)
            assert "BatchNormTrain" in type(y2.grad_fn).__name__
            dy = torch.randn_like(y)
            y.backward(dy)
            y2.backward(dy)
            close = lambda a, b, tol=1e-5: bool((a - b).abs().max() <= tol * b.abs().max() + 1e-6)
            assert close(y2, y) and close(x2.grad, x.grad), shape
            assert close(ib.weight.grad, bn.weight.grad) and close(ib.bias.grad, bn.bias.grad)
            assert close(ib.running_mean, bn.running_mean) and close(ib.running_var, bn.running_var)
            assert int(ib.num_batches_tracked) == int(bn.num_batches_tracked) == step + 1
        ib.eval()
        bn.eval()
        x = torch.randn(*shape)
        assert "BatchNormTrain" not in type(ib(x.requires_grad_()).grad_fn).__name__  # eval
        assert close(ib(x), bn(x))
torch.set_num_threads(1)
print("ok")
"""


@pytest.mark.skipif(not WGRAD, reason="needs the compiled kernels")
def test_int_engine_batch_norm_within_float32_rounding_of_torch():
    """The int engine's BatchNorm2d (engine_bn.py, csrc/bn_train.h) against torch's in training:
    outputs, input, weight and bias gradients within 1e-5 of the largest value (float32
    rounding of sums taken in another order), the running statistics (momentum 0.3, the
    unbiased variance) and the batch count, two steps, 1 and 3 threads, planes of 1 to 324
    values (by columns below 64 values, over more than one block of 32 samples; by planes from
    64); eval mode runs torch's. Here and with the CPU features hidden down to AVX2 and to
    none (its three compiled copies). set_engine switches plain BatchNorm2d modules only."""
    exec(_BN_CASE, {})
    assert fresh_process(_BN_CASE, DOREFA_CPU_FEATURES="avx2,fma") == ["ok"]
    assert fresh_process(_BN_CASE, DOREFA_CPU_FEATURES="") == ["ok"]
    from dorefa.engine_bn import IntBatchNorm2d

    model = create_model("svhn", bits="1,2,6", num_classes=10, in_channels=1, width=0.25)
    set_engine(model, "int")
    assert sum(type(m) is IntBatchNorm2d for m in model.modules()) == 6
    set_engine(model, "torch")
    assert not any(isinstance(m, IntBatchNorm2d) for m in model.modules())


# ------------------------------------------- the float finishing passes, every compiled copy
_FINISH_CASE = """
import numpy as np
from dorefa.kernels import reference_grad as R, training as T
from dorefa.kernels.extension import native
rng = np.random.default_rng(0)
for n, c, h, o, k, pad, bits in [(5, 48, 18, 64, 3, 1, (1, 2, 6)), (3, 7, 9, 5, 3, 2, (4, 4, 8))]:
    wb, ab, gb = bits
    oh = h + 2 * pad - k + 1
    g = rng.integers(0, 1 << gb, (n, o, oh, oh), dtype=np.uint8)
    g[0] = (1 << gb) - 1  # the largest codes: |D| at its bound
    wc = rng.integers(0, 1 << wb, (o, c, k, k), dtype=np.uint8)
    m = (rng.random(n) * 10.0 ** rng.integers(-30, 30, n)).astype(np.float32)
    for threads in (1, 3):
        dx = T.conv_input_grad(g, m, gb, wc, 0.37, wb, 1, pad, (h, h), threads)
        want = R.conv_input_grad_codes(g, m, gb, wc, 0.37, wb, 1, pad, (h, h))
        assert np.array_equal(dx, R.input_grad_float(want).astype(np.float32)), (bits, threads)
d = rng.integers(-2**31, 2**31 - 1, 70001, dtype=np.int64).astype(np.int32)
for scale in (0.1, 3.0e-38, 7.5e30):
    y = native.scale_to_float(d, scale, 3)
    with np.errstate(over="ignore"):  # 7.5e30 * 2^31 is past float32: inf, as the kernel's
        want = (scale * d.astype(np.float64)).astype(np.float32)
    assert np.array_equal(y, want), scale
print("ok")
"""


@pytest.mark.skipif(not WGRAD, reason="needs the compiled kernels")
def test_float_finishing_passes_equal_the_spec_on_every_copy():
    """The input gradient's finish (float32(scale_b * (2 K1 - n_g K2))) and the forward's
    float32(scale * D), compiled for AVX-512, AVX2 and the baseline: bit for bit the spec's on
    each (here, and in fresh processes with the CPU features hidden to AVX2 and to none), with
    per-sample scales from 1e-30 to 1e30 (float32 subnormals and infinities) and the largest
    codes. (A wrong factor in the baseline copy alone failed the last process.)"""
    exec(_FINISH_CASE, {})
    assert fresh_process(_FINISH_CASE, DOREFA_CPU_FEATURES="avx2,fma") == ["ok"]
    assert fresh_process(_FINISH_CASE, DOREFA_CPU_FEATURES="") == ["ok"]


# ------------------------------------------------------------------- f_g's codes, native pass
_FG_CASE = """
import numpy as np, torch
from types import SimpleNamespace
from dorefa.engine import _gradient_codes
from dorefa.quantizers import gradient_codes
torch.manual_seed(0)
for k in (1, 2, 4, 6, 8):
    for shape in [(32, 16, 9, 9), (5, 7), (3, 2, 1, 1), (6, 37)]:
        scale = torch.rand(shape[0], *([1] * (len(shape) - 1))) ** 4
        g = torch.randn(*shape) * scale
        g[0] = 0  # a zero sample: m = 0
        g[-1] = (g[-1] * 8).round() / 8  # many equal values
        if shape == (6, 37):  # the vector max's body and tail (16 + 16 + 5)
            g[1, 20], g[2, 36], g[3, 5] = float("nan"), float("nan"), float("inf")
            g[4, 35] = -50.0  # the largest magnitude in the tail, negative
        layer = SimpleNamespace(g_bits=k, grad_quant=SimpleNamespace(
            generator=torch.Generator().manual_seed(k)))
        want_c, want_m = gradient_codes(g, k, torch.Generator().manual_seed(k))
        c, m = _gradient_codes(g, layer, 2)
        assert c.dtype == np.uint8 and c.shape == g.shape
        rows = [0, 4, 5] if shape == (6, 37) else slice(None)  # finite samples: torch's codes
        assert np.array_equal(c[rows], want_c.to(torch.uint8).numpy()[rows]), (k, shape)
        assert np.array_equal(np.abs(m[rows]), np.abs(want_m.reshape(-1).numpy()[rows])), k
        if shape == (6, 37):  # a NaN anywhere makes m NaN, an inf makes it inf
            assert np.isnan(m[1]) and np.isnan(m[2]) and m[3] == np.inf, m
print("ok")
"""


@pytest.mark.skipif(not WGRAD, reason="needs the compiled kernels")
def test_native_gradient_codes_equal_torch_f_g():
    """The int engine's one-pass f_g (csrc/grad_codes.h) against quantizers.gradient_codes,
    same generator: the same codes for G = 1..8 (m up to the sign of a zero), here (the FMA
    instruction where the CPU has one) and with every CPU feature hidden (libm's fmaf)."""
    exec(_FG_CASE, {})
    assert fresh_process(_FG_CASE, DOREFA_CPU_FEATURES="") == ["ok"]


@pytest.mark.skipif(not WGRAD, reason="needs the compiled kernels")
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_forward_scaling_rounds_once_like_numpy(threads):
    """The forward product's float output (csrc/input_grad.h, ScaleToFloat): float32 of the
    float64 product, the same bits as NumPy's cast-and-multiply, over the whole int32 range,
    scales that overflow float32 or go subnormal, zeros times a negative scale (-0), lengths
    that do and do not fill the per-thread chunks."""
    from dorefa.engine import _scaled

    rng = np.random.default_rng(threads)
    for shape in [(1,), (7, 3), (5, 64, 18, 18), (2, 16384 * 4 + 5)]:
        d = rng.integers(-(2**31), 2**31, shape, dtype=np.int64).astype(np.int32)
        d.reshape(-1)[: min(d.size, 5)] = [0, 1, -1, 2**31 - 1, -(2**31)][: min(d.size, 5)]
        for scale in [0.1 / 3, -0.25, 1e-42, 3.7e30, 1.0]:
            want = np.empty(d.shape, np.float32)
            np.multiply(d, scale, out=want, casting="unsafe")
            got = K._native.scale_to_float(d, scale, threads)
            assert got.shape == d.shape and got.dtype == np.float32
            np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))
            assert np.array_equal(_scaled(d, scale, threads).view(np.int32), want.view(np.int32))

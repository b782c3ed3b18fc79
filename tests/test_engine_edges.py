"""The int engine's edges (dorefa.engine): what it refuses rather than compute something the
torch engine would not (a gradient that did not come through the layer's GradQuant alone, a
gradient of a gradient), what it warns about (calls that run on torch), and what it keeps as
torch does (NaN, empty batches, pickling). Equality of the products: test_engine.py."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
from torch.nn.grad import conv2d_weight

from dorefa.bits import Bits
from dorefa.models import create_model
from dorefa.nn import ActQuant, GradQuant, QConv2d, QLinear, set_engine

ALONE = "did not come through that GradQuant alone"


def _block(padding=1, w_bits=1, **conv):
    conv = QConv2d(3, 4, 3, padding=padding, w_bits=w_bits, **conv)
    return torch.nn.Sequential(conv, GradQuant(4)), conv


def _codes(*shape):
    return ActQuant(2)(torch.rand(*shape, generator=torch.Generator().manual_seed(0)))


def test_int_engine_refuses_what_it_cannot_do_exactly():
    """A bias (its gradient would need f_g's values), a GradQuant not applied to the conv's
    output (f_g would run twice: raises), Linear inputs that are not (N, C), empty batches."""

    conv, gq = QConv2d(3, 4, 3, w_bits=1, bias=True), GradQuant(4)
    assert set_engine(torch.nn.Sequential(conv, gq), "int", bits=Bits(1, 2, 4)) == {
        "0": "torch: a bias (its gradient would need f_g's values)"
    }
    conv, gq, bn = QConv2d(3, 4, 3, w_bits=1), GradQuant(4), torch.nn.BatchNorm2d(4)
    net = torch.nn.Sequential(conv, gq, bn)
    assert set_engine(net, "int", bits=Bits(1, 2, 4)) == {"0": "int"}
    x = ActQuant(2)(torch.rand(2, 3, 6, 6)).requires_grad_()
    alone = "did not come through that GradQuant alone"
    with pytest.raises(RuntimeError, match=alone):
        gq(bn(conv(x))).sum().backward()  # conv -> bn -> gq: the wrong order for the int engine
    y1, y2 = conv(x), conv(x)  # the same conv twice, then its GradQuant on both: fine
    (gq(y1).sum() + gq(y2).sum()).backward()
    copy.deepcopy(net)  # the engine's bookkeeping does not stop a deepcopy
    lin, gql = QLinear(6, 5, w_bits=1), GradQuant(4)
    set_engine(torch.nn.Sequential(lin, gql), "int", bits=Bits(1, 2, 4))
    x3 = ActQuant(2)(torch.rand(2, 3, 6))
    assert lin(x3).shape == (2, 3, 5)  # (N, T, C): the torch path
    assert lin(ActQuant(2)(torch.rand(0, 6))).shape == (0, 5)


def test_a_gradient_that_skips_or_joins_the_grad_quant_is_refused():
    """Three ways a conv output's gradient does not come through its GradQuant alone: the
    GradQuant not applied (a flag in forward), the raw output used beside it, a module hook
    between them. The int engine's fused f_g would quantize what the torch engine does not
    (a reviewer's model trained silently on other gradients): each raises in backward."""
    net, conv = _block()
    set_engine(net, "int", bits=Bits(1, 2, 4))
    x = _codes(2, 3, 6, 6).requires_grad_()
    with pytest.raises(RuntimeError, match=ALONE):
        conv(x).sum().backward()  # GradQuant skipped
    with pytest.raises(RuntimeError, match=ALONE):
        y = conv(x)
        (net[1](y).sum() + y.sum()).backward()  # the raw output used as well
    net[1](conv(x)).sum().backward()  # its GradQuant alone: runs
    model = create_model("svhn", bits="1,2,6", width=0.125, in_channels=1)
    set_engine(model, "int")
    model.features.conv3.register_full_backward_hook(lambda *args: None)
    with pytest.raises(RuntimeError, match="a module hook between them"):
        model(torch.rand(2, 1, 40, 40)).sum().backward()


def test_a_gradient_of_a_gradient_is_refused():
    """create_graph=True (a gradient penalty) used to give a dx cut from the weights: the
    penalty's gradient was silently missing."""
    net, _ = _block()
    set_engine(net, "int", bits=Bits(1, 2, 4))
    x = _codes(2, 3, 6, 6).requires_grad_()
    with pytest.raises(RuntimeError, match="create_graph=True"):
        torch.autograd.grad(net(x).square().sum(), x, create_graph=True)


def test_a_model_on_the_int_engine_pickles_and_trains_after():
    model = create_model("svhn", bits="1,2,6", width=0.125, in_channels=1)
    set_engine(model, "int")
    model(torch.rand(2, 1, 40, 40)).sum().backward()
    again = pickle.loads(pickle.dumps(model))
    again(torch.rand(2, 1, 40, 40)).sum().backward()
    assert again.features.conv3.int_engine is not None and again.features.conv3.weight.grad.any()


@pytest.mark.parametrize("engine", ["torch", "int"])
def test_an_empty_batch_trains_to_empty_gradients(engine):
    model = create_model("svhn", bits="1,2,6", width=0.125, in_channels=1)
    set_engine(model, engine)
    x = torch.rand(0, 1, 40, 40, requires_grad=True)
    model(x).sum().backward()
    assert x.grad.shape == x.shape and not model.features.conv3.weight.grad.any()


def test_weights_all_zero_give_nan_on_both_engines():
    """At W >= 2 f_w is 0 / 0 for weights all 0: NaN on the torch engine; the int engine had
    given finite outputs (every code 0, i.e. every weight -1)."""
    outs = []
    for engine in ("torch", "int"):
        net, conv = _block(w_bits=2)
        torch.nn.init.zeros_(conv.weight)
        set_engine(net, engine, bits=Bits(2, 2, 4))
        x = _codes(2, 3, 6, 6).requires_grad_()
        y = net(x)
        y.sum().backward()
        outs.append((y, x.grad))
    for y, dx in outs:
        assert y.isnan().all() and dx.isnan().all()


def test_bits_as_text_and_same_padding():
    """set_engine(..., bits="1,2,6") had raised AttributeError; padding="same" (odd kernel,
    stride 1) and "valid" run on the integer path (they were "asymmetric")."""
    for padding in ("same", "valid", 1):
        net, _ = _block(padding=padding)
        assert set_engine(net, "int", bits="1,2,4") == {"0": "int"}
    even = torch.nn.Sequential(QConv2d(3, 4, 2, padding="same", w_bits=1), GradQuant(4))
    assert set_engine(even, "int", bits=(1, 2, 4)) == {"0": "torch: asymmetric stride or padding"}


def test_calls_that_run_on_torch_say_so_once_per_reason():
    """A layer set to int whose calls run on torch (a float64 model, inputs that are not
    codes) warns once per reason, not silently and not every call."""
    net, _ = _block()
    set_engine(net, "int", bits=Bits(1, 2, 4))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(3):
            net(torch.rand(2, 3, 6, 6))  # not 2-bit codes
        net.double()
        for _ in range(3):
            net(_codes(2, 3, 6, 6).double())
    said = [str(w.message) for w in seen if issubclass(w.category, RuntimeWarning)]
    assert len(said) == 2, said
    assert "ran on torch: an input that is not 2-bit codes" in said[0]
    assert "ran on torch: a torch.float64 input on cpu, not float32 on cpu" in said[1]
    lin = torch.nn.Sequential(QLinear(6, 5, w_bits=1), GradQuant(4))
    set_engine(lin, "int", bits=Bits(1, 2, 4))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for t in (3, 4, 5):  # one reason, whatever the shape
            lin(_codes(2, t, 6))
    assert ["a 3-D input, not (N, C)" in str(w.message) for w in seen] == [True]


def test_batch_norm_keeps_a_nan_batch_in_its_running_variance():
    """The int engine's BatchNorm clamped a NaN variance to 0 (running_var 0.9 where torch's
    is NaN)."""
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x[0, 0, 0, 0] = float("nan")
    stats = []
    for engine in ("torch", "int"):
        bn = torch.nn.BatchNorm2d(3)
        set_engine(torch.nn.Sequential(bn), engine)
        bn(x)
        stats.append(bn.running_var)
    assert stats[0][0].isnan() and stats[1][0].isnan()
    assert torch.allclose(stats[0][1:], stats[1][1:], rtol=1e-5)


def test_float_first_layer_weight_gradient_keeps_the_weights_layout():
    """--channels-last: a 1-channel first conv's weight is (O,1,k,k) with channels_last strides;
    its gradient had come back contiguous, and DDP warned 'Grad strides do not match bucket
    view strides' at every step (and copied)."""
    conv = QConv2d(1, 6, 5, w_bits=32).to(memory_format=torch.channels_last)
    set_engine(torch.nn.Sequential(conv), "int", bits=Bits(32, 2, 6))
    x = torch.rand(2, 1, 9, 9).to(memory_format=torch.channels_last).requires_grad_()
    y = conv(x)
    assert "FloatConvFn" in type(y.grad_fn).__name__
    y.sum().backward()
    assert conv.weight.grad.stride() == conv.weight.stride()
    want = conv2d_weight(x.detach(), conv.weight.shape, torch.ones_like(y))
    assert torch.allclose(conv.weight.grad, want, rtol=1e-5, atol=1e-4)


def test_set_engine_takes_a_quantize_model_network_by_its_activation_bits():
    """Found by a review: a quantize_model network has no .bits, so set_engine(net, "int")
    left every layer on torch, said only in the returned report. The bits of its ActQuant
    modules (one width) give A; several widths still ask for bits=."""
    from torch import nn

    from dorefa import quantize_model

    torch.manual_seed(0)
    float_net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 6 * 6, 3),
    )  # fmt: skip
    net = quantize_model(float_net, "1,2,6")
    report = set_engine(net, "int")
    assert list(report.values()).count("int") == 2, report  # the two quantized convs
    x = torch.rand(2, 1, 6, 6)
    y = net(x)
    assert y.shape == (2, 3)
    set_engine(net, "torch")
    assert torch.allclose(net(x), y, atol=1e-5)
    [m for m in net.modules() if isinstance(m, ActQuant) and m.quantize][-1].k = 4
    report = set_engine(net, "int")
    assert all("pass set_engine(model, 'int', bits=...)" in v for v in report.values()), report

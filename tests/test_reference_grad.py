"""The integer spec of DoReFa training's backward products (dorefa.kernels.reference_grad)
against torch: float64 (the algebra is exact) and the float32 torch engine (QConv2d + GradQuant,
same f_g noise).

Tolerances. (a) float64: the spec is integers times one rounded scale, torch float64 sums the
same products with roundings of 2**-53 each, so ``|diff| <= 1e-9 * B`` with ``B`` the same sum of
absolute values is far from tight. The weight gradient's scales sit on the integer grid of
``grid_scales`` (each within ``M / (2Q)`` of ``m_b``, M the batch's largest), which adds
``M / (2Q) * sum |f_a|`` over its terms (:func:`_grid_bound`) to both bounds. (b) float32: the
codes are identical (same noise, same float32 ops), so only float32 rounding separates the two:
the operands (f_g within 8 * 2**-24 * m, f_w and f_a within 2 * 2**-24 relative) and torch's
accumulation over K terms (at most K * 2**-24 of the absolute sum), hence
``|diff| <= (K + 10) * 2**-24 * B`` with ``B = sum m_b |operand|``.
"""

from fractions import Fraction

import numpy as np
import pytest
import torch
from torch.nn.grad import conv2d_input, conv2d_weight

from dorefa.geometry import conv_out_size
from dorefa.kernels.reference_grad import (
    GRID,
    _fma32,
    conv_input_grad_codes,
    conv_weight_grad_codes,
    gradient_codes,
    gradient_values,
    input_grad_float,
    weight_grad_float,
)
from dorefa.nn import QConv2d
from dorefa.quantizers import GradQuant, gradient_noise, quantize_gradient, weight_codes

TRIPLES = [(1, 2, 6), (1, 1, 4), (2, 2, 6), (1, 4, 8)]
U32 = 2.0**-24


def _shape(rng):
    """Random small conv geometry: (N, C, O, K, stride, padding, H, W) with H', W' >= 1."""
    n, c, o = int(rng.integers(1, 4)), int(rng.integers(1, 6)), int(rng.integers(1, 6))
    k, stride, padding = int(rng.integers(1, 4)), int(rng.integers(1, 3)), int(rng.integers(0, 2))
    h = int(rng.integers(max(1, k - 2 * padding), 8))
    w = int(rng.integers(max(1, k - 2 * padding), 8))
    return n, c, o, k, stride, padding, h, w


def _cases():
    rng = np.random.default_rng(2016)
    return [(bits, _shape(rng), seed) for bits in TRIPLES for seed in range(6)]


def _grad_codes(dy: torch.Tensor, g_bits: int, seed: int):
    """The spec's codes for dy with the noise f_g would draw from Generator(seed)."""
    noise = gradient_noise(dy, torch.Generator().manual_seed(seed))
    return gradient_codes(dy.numpy(), g_bits, noise.numpy())


def _fg64(c, m, g_bits):
    n = (1 << g_bits) - 1
    return (2 * m.astype(np.float64)[:, None, None, None] / n) * (c.astype(np.float64) - n / 2)


def _grid_bound(m, fa, w_shape, g_shape, stride, padding):
    """How far the scales' grid moves dW: ``max(m) / (2Q)`` times the sum of |f_a| over each
    weight's terms (``|2c - n_g| / n_g <= 1``)."""
    ones = torch.ones(g_shape, dtype=torch.float64)
    terms = conv2d_weight(fa.abs(), w_shape, ones, stride=stride, padding=padding).numpy()
    return float(np.max(m)) / (2 * GRID) * terms


# ----------------------------------------------------------------------------- (a) float64 algebra
@pytest.mark.parametrize("bits, shape, seed", _cases())
def test_integer_expansion_equals_float64_convolutions(bits, shape, seed):
    wb, ab, gb = bits
    n, c, o, k, stride, padding, h, w = shape
    gen = torch.Generator().manual_seed(seed)
    oh, ow = conv_out_size(h, k, stride, padding), conv_out_size(w, k, stride, padding)
    dy = torch.randn(n, o, oh, ow, generator=gen) * torch.rand(n, 1, 1, 1, generator=gen) * 3
    if n > 1 and seed % 3 == 0:
        dy[0] = 0  # a zero sample: m = 0, f_g = 0
    codes, m = _grad_codes(dy, gb, seed)
    p, s = weight_codes(torch.randn(o, c, k, k, generator=gen), wb)
    p = p.numpy()
    q = torch.randint(0, 1 << ab, (n, c, h, w), generator=gen, dtype=torch.uint8).numpy()
    nw, na = (1 << wb) - 1, (1 << ab) - 1

    fg = torch.from_numpy(_fg64(codes, m, gb))
    fw = torch.from_numpy(s * (2 * p.astype(np.float64) - nw))
    fa = torch.from_numpy(q.astype(np.float64) / na)
    dx = input_grad_float(conv_input_grad_codes(codes, m, gb, p, s, wb, stride, padding, (h, w)))
    dx_ref = conv2d_input(fa.shape, fw, fg, stride=stride, padding=padding).numpy()
    dx_abs = conv2d_input(fa.shape, fw.abs(), fg.abs(), stride=stride, padding=padding).numpy()
    assert np.all(np.abs(dx - dx_ref) <= 1e-9 * dx_abs + 1e-300)
    dw = weight_grad_float(conv_weight_grad_codes(codes, m, gb, q, ab, stride, padding, (k, k)))
    dw_ref = conv2d_weight(fa, fw.shape, fg, stride=stride, padding=padding).numpy()
    dw_abs = conv2d_weight(fa, fw.shape, fg.abs(), stride=stride, padding=padding).numpy()
    grid = _grid_bound(m, fa, fw.shape, fg.shape, stride, padding)
    assert np.all(np.abs(dw - dw_ref) <= 1e-9 * dw_abs + grid + 1e-300)
    if n > 1 and seed % 3 == 0:
        assert (
            m[0] == 0
            and not input_grad_float(
                conv_input_grad_codes(codes, m, gb, p, s, wb, stride, padding, (h, w))
            )[0].any()
        )


def test_integer_parts_against_float64_transposed_convolutions():
    """Each integer part is its transposed convolution (small integers: float64 is exact), and
    D = 4 T(c,p) - 2 n_w T(c,1) - 2 n_g T(1,p) + n_g n_w T(1,1) = T(2c - n_g, 2p - n_w)."""
    rng = np.random.default_rng(3)
    c = rng.integers(0, 64, (2, 3, 3, 3)).astype(np.uint8)
    p = rng.integers(0, 4, (3, 2, 3, 3)).astype(np.uint8)
    parts = conv_input_grad_codes(c, np.ones(2, np.float32), 6, p, 1 / 3, 2, 2, 1, (6, 6))

    def t(a, b, n_in):
        a, b = torch.from_numpy(a.astype(np.float64)), torch.from_numpy(b.astype(np.float64))
        out = conv2d_input((a.shape[0], n_in, 6, 6), b, a, stride=2, padding=1)
        return out.numpy().astype(np.int64)

    ones_c, ones_p = np.ones((1, 3, 3, 3)), np.ones((3, 1, 3, 3))
    assert parts.d.dtype == np.int64
    assert np.array_equal(parts.t_cp, t(c, p, 2))
    assert np.array_equal(parts.t_c1, t(c, ones_p, 1))
    assert np.array_equal(parts.t_1p, t(ones_c, p, 2))
    assert np.array_equal(parts.t_11, t(ones_c, ones_p, 1))
    assert np.array_equal(parts.d, t(2 * c.astype(np.int64) - 63, 2 * p.astype(np.int64) - 3, 2))
    assert parts.t_11.min() >= 1 and parts.t_11.max() <= 3 * 9  # taps reaching each pixel


# ----------------------------------------------------------------------------- (b) torch engine
@pytest.mark.parametrize("bits, shape, seed", _cases())
def test_matches_qconv2d_float32_engine(bits, shape, seed):
    wb, ab, gb = bits
    n, c, o, k, stride, padding, h, w = shape
    torch.manual_seed(seed)
    layer = QConv2d(c, o, k, stride=stride, padding=padding, w_bits=wb)
    gen = torch.Generator().manual_seed(100 + seed)
    fq = GradQuant(gb, generator=gen)
    q = torch.randint(0, 1 << ab, (n, c, h, w), dtype=torch.uint8)
    x = (q.float() / ((1 << ab) - 1)).requires_grad_()  # f_a's values, as _ActQuantFn makes them
    qw = QConv2d.quantized_weight(layer)
    layer.quantized_weight = lambda: qw  # the same forward, with a handle on f_w(W)
    y = fq(layer(x))
    r = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)) * (1 + seed)
    state = gen.get_state()
    dx_t, dqw_t = torch.autograd.grad((y * r).sum(), [x, qw])  # dy arriving at f_g is r

    noise = gradient_noise(r, torch.Generator().set_state(state))
    codes, m = gradient_codes(r.numpy(), gb, noise.numpy())
    p, s = weight_codes(layer.weight, wb)
    dx = input_grad_float(
        conv_input_grad_codes(codes, m, gb, p.numpy(), s, wb, stride, padding, (h, w))
    )
    dw = weight_grad_float(
        conv_weight_grad_codes(codes, m, gb, q.numpy(), ab, stride, padding, (k, k))
    )
    mm = torch.from_numpy(np.broadcast_to(m[:, None, None, None], r.shape).astype(np.float64))
    fw_abs = qw.detach().double().abs()
    fa = x.detach().double()
    b_dx = conv2d_input(x.shape, fw_abs, mm, stride=stride, padding=padding).numpy()
    b_dw = conv2d_weight(fa, qw.shape, mm, stride=stride, padding=padding).numpy()
    k_dx, k_dw = o * k * k, n * r.shape[2] * r.shape[3]
    assert np.all(np.abs(dx_t.double().numpy() - dx) <= (k_dx + 10) * U32 * b_dx)
    grid = _grid_bound(m, fa, qw.shape, r.shape, stride, padding)
    assert np.all(np.abs(dqw_t.double().numpy() - dw) <= (k_dw + 10) * U32 * b_dw + grid)


# ----------------------------------------------------------------------------- (c) f_g round trip
def _hard_fma_cases():
    """a * b + c whose exact value lies just below a float32 midpoint, so that rounding to
    float64 first lands on the midpoint and a second rounding to float32 goes the wrong way."""
    a = np.float32(1 + 2**-23) * np.array([1, -1, 4, 0.5], np.float32)
    b = np.full(4, 2**-24 * (1 - 2**-23), np.float32)
    c = np.float32(1 + 2**-23) * np.array([1, -1, 4, 0.5], np.float32)
    return a, b, c


def _torch_addcmul_fused() -> bool:
    a, b, c = _hard_fma_cases()
    got = torch.from_numpy(c).addcmul_(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    return np.array_equal(got, _fma32(a, b, c))


@pytest.mark.parametrize("g_bits", range(1, 9))
@pytest.mark.parametrize("shape", [(5,), (4, 17), (3, 4, 5, 6)])
def test_gradient_codes_round_trip(g_bits, shape):
    gen = torch.Generator().manual_seed(g_bits * 10 + len(shape))
    dy = (
        torch.randn(shape, generator=gen)
        * torch.rand(shape[0], generator=gen).view((-1,) + (1,) * (len(shape) - 1))
        * 10.0 ** (g_bits - 4)
    )
    dy[1] = 0  # a zero sample
    state = gen.get_state()
    out = quantize_gradient(dy, g_bits, gen)
    codes, m = gradient_codes(dy.numpy(), g_bits, gradient_noise(dy, gen.set_state(state)).numpy())
    n = (1 << g_bits) - 1
    assert codes.dtype == np.uint8 and codes.shape == shape and int(codes.max()) <= n
    spec = torch.from_numpy(gradient_values(codes, m, g_bits))
    if _torch_addcmul_fused():  # the spec's rounding is torch's: bit for bit
        assert torch.equal(out, spec)
    else:  # unfused addcmul rounds twice: a code may move by one step, rarely
        steps = ((out - spec).abs() / (2 * torch.from_numpy(m).clamp_min(1e-30) / n)[
            (slice(None),) + (None,) * (len(shape) - 1)]).round()  # fmt: skip
        assert steps.max() <= 1 and (steps > 0).float().mean() < 1e-3
    mm = m.astype(np.float64).reshape((-1,) + (1,) * (len(shape) - 1))
    exact = (2 * mm / n) * (codes.astype(np.float64) - n / 2)
    assert np.all(np.abs(spec.double().numpy() - exact) <= 8 * U32 * mm)
    assert m[1] == 0 and not out[1].any() and not exact[1].any()


def _round32(x: Fraction) -> np.float32:
    """Correct round-half-even of a rational to float32 (by comparing with both neighbours)."""
    f = np.float32(float(x))
    best = f
    for g in (np.nextafter(f, np.float32(-np.inf)), np.nextafter(f, np.float32(np.inf))):
        d, e = abs(Fraction(float(g)) - x), abs(Fraction(float(best)) - x)
        if d < e or (d == e and int(np.float32(g).view(np.int32)) % 2 == 0):
            best = g
    return np.float32(best)


def test_fma32_rounds_once():
    rng = np.random.default_rng(7)
    a = rng.standard_normal(3000).astype(np.float32)
    b = (rng.standard_normal(3000) * 2.0 ** rng.integers(-30, 8, 3000)).astype(np.float32)
    c = (rng.integers(0, 2**17, 3000) * 2.0**-17 + rng.integers(0, 255, 3000) / 2).astype(
        np.float32
    )
    c[:1000] = -np.float32(a[:1000].astype(np.float64) * b[:1000])  # near-cancellation
    ha, hb, hc = _hard_fma_cases()
    a, b, c = np.concatenate([a, ha]), np.concatenate([b, hb]), np.concatenate([c, hc])
    got = _fma32(a, b, c)
    exact = [
        Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))
        for x, y, z in zip(a, b, c, strict=True)
    ]
    assert np.array_equal(got, np.array([_round32(e) for e in exact], np.float32))
    twice = (ha.astype(np.float64) * hb + hc).astype(np.float32)  # float64 then float32
    assert not np.array_equal(twice, got[-4:])  # the hard cases do need the round-to-odd step


def test_errors_name_the_problem():
    c = np.zeros((1, 2, 3, 3), np.uint8)
    p = np.zeros((2, 1, 3, 3), np.uint8)
    with pytest.raises(ValueError, match="input_hw"):
        conv_input_grad_codes(c, np.ones(1, np.float32), 4, p, 1.0, 1, 1, 0, (6, 6))
    with pytest.raises(ValueError, match="2\\*\\*1"):
        conv_input_grad_codes(c, np.ones(1, np.float32), 4, p + 2, 1.0, 1, 1, 0, (5, 5))
    with pytest.raises(ValueError, match="noise has shape"):
        gradient_codes(np.zeros((2, 3), np.float32), 4, np.zeros((2, 4), np.float32))

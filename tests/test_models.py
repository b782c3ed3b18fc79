"""Every registered model: shapes, which layers are quantized, float first/last, layer order."""

import pytest
import torch
from torch import nn

import dorefa
from dorefa.models import create_model, input_size, list_models
from dorefa.nn import ActQuant, GradQuant, QConv2d, QLinear, quantize_model

BITS = dorefa.Bits(1, 2, 6)


def _weighted(model):
    return [m for m in model.modules() if isinstance(m, (QConv2d, QLinear))]


@pytest.fixture(scope="module", params=list_models())
def built(request):
    name = request.param
    torch.manual_seed(0)
    model = create_model(name, bits=BITS, num_classes=7, in_channels=3)
    return name, model


def test_registry_has_the_paper_models():
    assert {"svhn", "alexnet", "resnet18"} <= set(list_models())
    with pytest.raises(ValueError, match="unknown model 'vgg'.*svhn"):
        create_model("vgg")


def test_forward_backward_shapes(built):
    name, model = built
    size = input_size(name)
    x = torch.rand(2, 3, size, size, requires_grad=True)
    model.train()
    y = model(x)
    assert y.shape == (2, 7)
    y.sum().backward()
    assert x.grad.shape == x.shape
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, 7)


def test_first_and_last_float_rest_quantized(built):
    _, model = built
    layers = _weighted(model)
    assert layers[0].w_bits == 32 and layers[0].bias is not None  # first conv: float, bias
    assert isinstance(layers[-1], QLinear) and layers[-1].w_bits == 32  # classifier: float
    assert all(m.w_bits == BITS.w and m.bias is None for m in layers[1:-1])
    gqs = [m for m in model.modules() if isinstance(m, GradQuant)]
    assert len(gqs) == len(layers) - 2 and all(g.k == BITS.g for g in gqs)
    acts = [m for m in model.modules() if isinstance(m, ActQuant)]
    assert all(a.k == BITS.a for a in acts)
    assert [a.quantize for a in acts].count(False) == 1  # only the last layer's input


def test_quantize_first_last_option():
    model = create_model("svhn", bits=BITS, in_channels=1, keep_first_last=False)
    assert all(m.w_bits == 1 for m in _weighted(model))
    assert all(a.quantize for a in model.modules() if isinstance(a, ActQuant))


def test_svhn_layer_order_and_widths():
    model = create_model("svhn", bits=BITS, in_channels=1, width=0.5)
    names = list(model.features._modules)
    # conv -> f_g -> BN -> [pool] -> f_a  (docs/method.md section 2)
    assert names[:12] == [
        "conv0",
        "pool0",
        "act0",
        "conv1",
        "gq1",
        "bn1",
        "act1",
        "conv2",
        "gq2",
        "bn2",
        "pool2",
        "act2",
    ]
    convs = [m for m in model.modules() if isinstance(m, QConv2d)]
    assert [c.out_channels for c in convs] == [24, 32, 32, 64, 64, 64, 256]  # Model B
    shapes = []
    model.eval()
    x = torch.rand(1, 1, 40, 40)
    for name, module in model.features.named_children():
        x = module(x)
        if name.startswith("conv"):
            shapes.append(tuple(x.shape[2:]))
    assert shapes == [(36, 36), (18, 18), (18, 18), (7, 7), (7, 7), (5, 5), (1, 1)]


def test_float_model_has_no_quantization_and_state_dicts_match():
    f = create_model("svhn", bits="32,32,32", in_channels=1)
    q = create_model("svhn", bits="1,2,6", in_channels=1)
    assert f.state_dict().keys() == q.state_dict().keys()  # float checkpoint loads into DoReFa
    q.load_state_dict(f.state_dict())
    x = torch.rand(3, 1, 40, 40)
    f.eval()
    assert torch.equal(f(x), nn.Sequential(*[f])(x))


def test_quantize_model_converts_a_float_network():
    torch.manual_seed(0)
    float_model = nn.Sequential(
        nn.Conv2d(1, 8, 3),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 4),
    )
    w_before = float_model[2].weight.detach().clone()
    model = quantize_model(float_model, "1,2,6")
    assert type(model[0]) is nn.Conv2d and type(model[9]) is nn.Linear  # first/last stay float
    assert isinstance(model[2][0], QConv2d) and isinstance(model[2][1], GradQuant)
    assert model[2][0].w_bits == 1 and torch.equal(model[2][0].weight, w_before)
    assert isinstance(model[6][0], QLinear)
    assert isinstance(model[1], ActQuant) and model[1].quantize
    assert isinstance(model[8], ActQuant) and not model[8].quantize  # last layer's input: clip
    out = model(torch.rand(2, 1, 10, 10))
    out.sum().backward()
    assert out.shape == (2, 4)
    everything = quantize_model(
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 8 * 8, 3)),
        "2,2,32",
        keep_first_last=False,
    )
    assert isinstance(everything[0][0], QConv2d) and isinstance(everything[3][0], QLinear)
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        quantize_model(nn.Sequential(nn.ReLU()), "1,2,6")

"""QONNX export for FINN: `dorefa.export(model, path, format="qonnx")` and
`dorefa export CKPT --format qonnx`. The qonnx package itself checks the files: ModelWrapper +
cleanup_model + execute_onnx give torch's classes on >= 99.9% of 1000 Fashion-MNIST test images
(svhn 1,2,6, ResNet-18 1,4,32 and a quantize_model user CNN at 2,2,32), its inference-cost tool
reads the weight and activation bits, and the same models as the .dorefa format are refused."""

import json

import numpy as np
import pytest
import torch

import test_export_graph
from dorefa import quantize_model, quantizers, summary
from dorefa.checkpoint import save
from dorefa.cli import main
from dorefa.exporter import ExportError, export
from dorefa.models import create_model
from test_export_graph import UNSUPPORTED, _train, _user_cnn

pytest.importorskip("qonnx", reason="QONNX export tests need pip install 'dorefa[qonnx]'")
from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402
from qonnx.core.onnx_exec import execute_onnx  # noqa: E402
from qonnx.util.cleanup import cleanup_model  # noqa: E402
from qonnx.util.inference_cost import inference_cost  # noqa: E402

STANDARD_OPS = {
    "Conv", "MatMul", "Gemm", "Mul", "Add", "BatchNormalization", "MaxPool", "AveragePool",
    "GlobalAveragePool", "Flatten", "Concat", "Clip",
}  # fmt: skip
QONNX_OPS = {"Quant", "BipolarQuant"}
fashion = test_export_graph.fashion  # the fixture: 4000 training and 1000 test images per size


def _run_qonnx(path, x: torch.Tensor) -> np.ndarray:
    """Logits of the QONNX file on the batch ``x`` through qonnx's own executor (one batch)."""
    model = cleanup_model(ModelWrapper(str(path)), override_inpsize=len(x))
    out = execute_onnx(model, {model.graph.input[0].name: x.numpy()})
    return out[model.graph.output[0].name]


def _agreement(model, path, x, y, min_accuracy=0.5):
    got = _run_qonnx(path, x)
    with torch.no_grad():
        ref = model(x).numpy()
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    accuracy = float((got.argmax(1) == y).mean())
    rel = np.abs(got - ref).max(1) / np.abs(ref).max(1)
    print(
        f"{path.name}: agreement {agree:.4f} on {len(x)} images, accuracy {accuracy:.3f}, "
        f"median max-rel logit diff {np.median(rel):.2g}"
    )
    assert accuracy > min_accuracy, accuracy  # it learned something: chance is 0.1
    assert agree >= 0.999, agree
    assert np.median(rel) < 1e-4  # away from the rare code flips, the same arithmetic
    return got


def _graph(path):
    return ModelWrapper(str(path)).graph


def _quant_bits(graph) -> list[tuple[str, int, int]]:
    """(op, bit width, signed) of every QONNX quantizer, in graph order."""
    inits = {t.name: t for t in graph.initializer}
    out = []
    for n in graph.node:
        if n.op_type == "BipolarQuant":
            out.append(("BipolarQuant", 1, 1))
        elif n.op_type == "Quant":
            bits = int(np.frombuffer(inits[n.input[3]].raw_data, np.float32)[0])
            signed = next(a.i for a in n.attribute if a.name == "signed")
            out.append(("Quant", bits, signed))
    return out


def test_svhn_1_2_6_matches_torch_and_inference_cost_reads_it(fashion, tmp_path):
    x, y, xt, yt = fashion(40)
    model = _train(
        create_model("svhn", bits="1,2,6", num_classes=10, in_channels=1, width=0.25), x, y
    )
    path = tmp_path / "svhn.onnx"
    info = export(model, path, format="qonnx")
    assert set(info["weight_bits"].values()) == {1} and len(info["weight_bits"]) == 6
    graph = _graph(path)
    ops = {n.op_type for n in graph.node}
    assert ops <= STANDARD_OPS | QONNX_OPS and QONNX_OPS <= ops, ops
    assert all(n.domain == "qonnx.custom_op.general" for n in graph.node if n.op_type in QONNX_OPS)
    # 6 binary weight tensors; 6 unsigned 2-bit f_a (act0 after the first conv, conv1..conv5)
    assert sorted(_quant_bits(graph)) == [("BipolarQuant", 1, 1)] * 6 + [("Quant", 2, 0)] * 6
    _agreement(model, path, xt, yt)

    cost = inference_cost(str(path), cost_breakdown=False)["total_cost"]
    print(json.dumps({k: v for k, v in cost.items() if k.startswith(("op_mac", "mem_w"))}))
    assert cost["op_mac_SCALEDINT<2>_BIPOLAR"] > 0  # A = 2 activations times 1-bit weights
    assert cost["mem_w_BIPOLAR"] == sum(
        m.weight.numel() for m in model.modules() if getattr(m, "w_bits", 32) == 1
    )
    assert cost["mem_w_FLOAT32"] == model.features.conv0.weight.numel() + model.fc.weight.numel()
    totals = summary(model).totals  # the same MACs and bit-ops (MACs x W x A) as dorefa summary
    assert (cost["total_macs"], cost["total_bops"]) == (totals["macs"], totals["bitops"])


def test_resnet18_1_4_32_matches_torch(fashion, tmp_path):
    """Pre-activation ResNet-18 (width 0.25): residual Adds, AveragePool + 1x1 projection
    shortcuts, GlobalAveragePool; 1000 test images in one batch."""
    x, y, xt, yt = fashion(32)
    model = create_model("resnet18", bits="1,4,32", num_classes=10, in_channels=1, width=0.25)
    _train(model, x, y)
    path = tmp_path / "resnet18.onnx"
    export(model, path, input_size=32, format="qonnx")
    graph = _graph(path)
    assert {"Add", "AveragePool", "GlobalAveragePool", "MaxPool"} <= {n.op_type for n in graph.node}
    bits = _quant_bits(graph)
    assert bits.count(("BipolarQuant", 1, 1)) == 20 and ("Quant", 4, 0) in bits
    _agreement(model, path, xt, yt)
    cost = inference_cost(str(path))["total_cost"]
    assert cost["op_mac_SCALEDINT<4>_BIPOLAR"] > 0 and cost["mem_w_BIPOLAR"] > 0


def test_user_cnn_with_2_bit_weights_matches_torch(fashion, tmp_path):
    """quantize_model on a float CNN (residual block, strided conv, average and global pooling,
    clipped classifier input) at 2,2,32: W = 2 weights as 3-bit narrow signed Quant nodes."""
    x, y, xt, yt = fashion(28)
    model = _train(quantize_model(_user_cnn(), "2,2,32"), x, y)
    path = tmp_path / "user.onnx"
    export(model, path, input_size=28, format="qonnx")
    graph = _graph(path)
    assert "Clip" in {n.op_type for n in graph.node}
    assert ("Quant", 3, 1) in _quant_bits(graph)
    _agreement(model, path, xt, yt, min_accuracy=0.3)  # a small net: about 0.5 after 150 steps
    assert inference_cost(str(path))["total_cost"]["mem_w_INT3"] > 0


@pytest.mark.parametrize("w_bits", [1, 2, 3, 8])
def test_weight_quantizer_output_is_f_w(w_bits, tmp_path):
    """Quant/BipolarQuant output times the Mul scale after the Conv equals f_w(w)."""
    torch.manual_seed(w_bits)
    model = create_model("svhn", bits=f"{w_bits},2,32", num_classes=10, in_channels=1, width=0.125)
    path = tmp_path / "m.onnx"
    export(model.eval(), path, format="qonnx")
    wrapper = cleanup_model(ModelWrapper(str(path)))
    ctx = execute_onnx(wrapper, {"input": np.zeros((1, 1, 40, 40), np.float32)}, True)
    quants = [n for n in wrapper.graph.node if n.op_type in QONNX_OPS]
    layers = [m for m in model.modules() if getattr(m, "w_bits", 32) == w_bits]
    weight_quants = [n for n in quants if wrapper.get_initializer(n.input[0]) is not None]
    assert len(weight_quants) == len(layers) == 6
    for node, layer in zip(weight_quants, layers, strict=True):
        conv = wrapper.find_consumer(node.output[0])
        mul = wrapper.find_consumer(conv.output[0])
        scale = float(wrapper.get_initializer(mul.input[1]))
        got = ctx[node.output[0]] * scale
        want = quantizers.quantize_weight(layer.weight.detach(), w_bits).numpy()
        if got.shape != want.shape:
            got = got.T  # MatMul holds W^T
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-7)


@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_refuses_what_the_dorefa_format_refuses(case, tmp_path):
    make, bits, match = UNSUPPORTED[case]
    model = make()
    model(torch.rand(1, 1, 28, 28))  # materialise lazy layers
    if bits is not None:
        model = quantize_model(model, bits)
    with pytest.raises(ExportError, match=match) as info:
        export(model.eval(), tmp_path / "x.onnx", input_size=28, format="qonnx")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x.onnx").exists()


def test_unknown_format_and_missing_onnx(tmp_path, monkeypatch):
    model = create_model("svhn", bits="1,2,6", num_classes=10, in_channels=1, width=0.125).eval()
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        export(model, tmp_path / "m.x", format="tflite")
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)  # import onnx -> ImportError
    with pytest.raises(ExportError, match=r"pip install 'dorefa\[qonnx\]'"):
        export(model, tmp_path / "m.onnx", format="qonnx")
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_format_qonnx(tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model("svhn", bits="1,2,6", num_classes=10, in_channels=1, width=0.125)
    meta = {"model": "svhn", "bits": "1,2,6", "num_classes": 10, "in_channels": 1}
    meta |= {"width": 0.125, "keep_first_last": True, "image_size": 40}
    ckpt = tmp_path / "checkpoint.pt"
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save(ckpt, meta=meta, model=model, optimizer=opt, epoch=0, best_acc=0.0, config={})
    assert main(["export", str(ckpt), "--format", "qonnx"]) == 0
    assert "QONNX" in capsys.readouterr().out
    path = tmp_path / "checkpoint.onnx"  # the default name
    x = torch.rand(8, 1, 40, 40)
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    np.testing.assert_allclose(_run_qonnx(path, x), ref, rtol=1e-4, atol=1e-5)
    props = {p.key: p.value for p in ModelWrapper(str(path)).model.metadata_props}
    assert json.loads(props["dorefa.meta"])["bits"] == "1,2,6"

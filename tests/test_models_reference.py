"""The shape rule and the NumPy oracles agree with PyTorch (and ONNX Runtime) on random cases, including
stride larger than the kernel, even kernels and padding larger than the kernel."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from resnet_serve.models import reference
from resnet_serve.models.shapes import output_size, same_padding

CASES = settings(max_examples=150, deadline=None)


def _rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape)


@st.composite
def conv_cases(draw: st.DrawFn) -> dict[str, int]:
    groups = draw(st.integers(1, 3))
    case = {
        "n": draw(st.integers(1, 2)),
        "groups": groups,
        "cin": groups * draw(st.integers(1, 3)),
        "cout": groups * draw(st.integers(1, 3)),
        "h": draw(st.integers(1, 12)),
        "w": draw(st.integers(1, 12)),
        "kh": draw(st.integers(1, 6)),
        "kw": draw(st.integers(1, 6)),
        "sh": draw(st.integers(1, 7)),
        "sw": draw(st.integers(1, 7)),
        "ph": draw(st.integers(0, 8)),
        "pw": draw(st.integers(0, 8)),
        "dh": draw(st.integers(1, 3)),
        "dw": draw(st.integers(1, 3)),
        "seed": draw(st.integers(0, 2**31)),
    }
    assume(output_size(case["h"], case["kh"], case["sh"], 2 * case["ph"], case["dh"]) >= 1)
    assume(output_size(case["w"], case["kw"], case["sw"], 2 * case["pw"], case["dw"]) >= 1)
    return case


@CASES
@given(conv_cases())
def test_conv_oracle_and_shape_rule_match_torch_conv2d(c: dict[str, int]) -> None:
    rng = np.random.default_rng(c["seed"])
    x = _rand(rng, c["n"], c["cin"], c["h"], c["w"])
    w = _rand(rng, c["cout"], c["cin"] // c["groups"], c["kh"], c["kw"])
    b = _rand(rng, c["cout"])
    expected = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), (c["sh"], c["sw"]),
                        (c["ph"], c["pw"]), (c["dh"], c["dw"]), c["groups"]).numpy()  # fmt: skip
    got = reference.conv2d(x, w, b, (c["sh"], c["sw"]), (c["ph"], c["pw"]), (c["dh"], c["dw"]), c["groups"])
    assert expected.shape[2:] == (
        output_size(c["h"], c["kh"], c["sh"], 2 * c["ph"], c["dh"]),
        output_size(c["w"], c["kw"], c["sw"], 2 * c["pw"], c["dw"]),
    )
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(conv_cases(), st.integers(0, 5), st.integers(0, 5))
def test_conv_oracle_asymmetric_padding_matches_torch_pad_then_conv(c: dict[str, int], extra_h: int,
                                                                    extra_w: int) -> None:  # fmt: skip
    rng = np.random.default_rng(c["seed"])
    x = _rand(rng, c["n"], c["cin"], c["h"], c["w"])
    w = _rand(rng, c["cout"], c["cin"] // c["groups"], c["kh"], c["kw"])
    pad = ((c["ph"], c["ph"] + extra_h), (c["pw"] + extra_w, c["pw"]))
    padded = F.pad(torch.from_numpy(x), (pad[1][0], pad[1][1], pad[0][0], pad[0][1]))
    expected = F.conv2d(
        padded, torch.from_numpy(w), None, (c["sh"], c["sw"]), 0, (c["dh"], c["dw"]), c["groups"]
    )
    got = reference.conv2d(x, w, None, (c["sh"], c["sw"]), pad, (c["dh"], c["dw"]), c["groups"])
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-9, atol=1e-9)


@st.composite
def pool_cases(draw: st.DrawFn) -> dict[str, int]:
    k = draw(st.integers(1, 6))
    case = {
        "h": draw(st.integers(1, 14)),
        "w": draw(st.integers(1, 14)),
        "k": k,
        "s": draw(st.integers(1, 8)),
        "p": draw(st.integers(0, k // 2)),  # PyTorch refuses padding over half the kernel
        "seed": draw(st.integers(0, 2**31)),
    }
    assume(output_size(case["h"], k, case["s"], 2 * case["p"]) >= 1)
    assume(output_size(case["w"], k, case["s"], 2 * case["p"]) >= 1)
    return case


@CASES
@given(pool_cases(), st.integers(1, 2))
def test_max_pool_oracle_matches_torch(c: dict[str, int], dilation: int) -> None:
    assume(output_size(c["h"], c["k"], c["s"], 2 * c["p"], dilation) >= 1)
    assume(output_size(c["w"], c["k"], c["s"], 2 * c["p"], dilation) >= 1)
    x = _rand(np.random.default_rng(c["seed"]), 2, 3, c["h"], c["w"])
    expected = torch.nn.MaxPool2d(c["k"], c["s"], c["p"], dilation)(torch.from_numpy(x)).numpy()
    got = reference.max_pool2d(x, c["k"], c["s"], c["p"], dilation)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@CASES
@given(pool_cases(), st.booleans())
def test_avg_pool_oracle_matches_torch(c: dict[str, int], count_include_pad: bool) -> None:
    x = _rand(np.random.default_rng(c["seed"]), 2, 3, c["h"], c["w"])
    pool = torch.nn.AvgPool2d(c["k"], c["s"], c["p"], count_include_pad=count_include_pad)
    expected = pool(torch.from_numpy(x)).numpy()
    got = reference.avg_pool2d(x, c["k"], c["s"], c["p"], count_include_pad)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_avg_pool_counts_padding_by_default_like_torch() -> None:
    x = np.ones((1, 1, 2, 2))
    # A 3x3 window at the corner covers 4 real ones and 5 padded zeros.
    assert reference.avg_pool2d(x, 3, 1, 1)[0, 0, 0, 0] == pytest.approx(4 / 9)
    assert reference.avg_pool2d(x, 3, 1, 1, count_include_pad=False)[0, 0, 0, 0] == pytest.approx(1.0)


def test_pool_oracles_accept_padding_larger_than_torch_allows() -> None:
    x = np.arange(4.0).reshape(1, 1, 2, 2)
    # Kernel 2 with 3 pixels of padding per side: windows that see only padding give -inf / 0.
    out = reference.max_pool2d(x, 2, 2, 3)
    assert out.shape == (1, 1, 4, 4)
    assert out[0, 0, 1, 1] == 0.0 and out[0, 0, 2, 2] == 3.0 and np.isneginf(out[0, 0, 0, 0])
    assert reference.avg_pool2d(x, 2, 2, 3)[0, 0, 1, 1] == pytest.approx(0 / 4)
    assert reference.avg_pool2d(x, 2, 2, 3)[0, 0, 2, 2] == pytest.approx(3 / 4)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 5), st.integers(1, 5),
       st.floats(0.01, 0.9), st.integers(0, 2**31))  # fmt: skip
def test_batch_norm_oracles_match_torch_train_and_eval(n: int, c: int, h: int, w: int, momentum: float,
                                                      seed: int) -> None:  # fmt: skip
    assume(n * h * w > 1)
    rng = np.random.default_rng(seed)
    x = _rand(rng, n, c, h, w) * 3 + 1
    gamma, beta, mean = _rand(rng, c), _rand(rng, c), _rand(rng, c)
    var = rng.uniform(0.5, 2.0, c)
    bn = torch.nn.BatchNorm2d(c, momentum=momentum).double()
    bn.load_state_dict({"weight": torch.from_numpy(gamma), "bias": torch.from_numpy(beta),
                        "running_mean": torch.from_numpy(mean), "running_var": torch.from_numpy(var),
                        "num_batches_tracked": torch.tensor(0)})  # fmt: skip
    with torch.no_grad():
        y_eval = bn.eval()(torch.from_numpy(x)).numpy()
        y_train = bn.train()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(
        reference.batch_norm_eval(x, gamma, beta, mean, var), y_eval, rtol=1e-10, atol=1e-10
    )
    y, new_mean, new_var = reference.batch_norm_train(x, gamma, beta, mean, var, momentum)
    np.testing.assert_allclose(y, y_train, rtol=1e-9, atol=1e-9)
    state = bn.state_dict()
    np.testing.assert_allclose(new_mean, state["running_mean"].numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(new_var, state["running_var"].numpy(), rtol=1e-10, atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.integers(1, 7), st.integers(1, 6), st.integers(1, 3))
def test_same_padding_gives_ceil_n_over_s_and_puts_the_odd_pixel_first(
    n: int, k: int, s: int, d: int
) -> None:
    before, after = same_padding(n, k, s, d)
    assert output_size(n, k, s, before + after, d) == -(-n // s)
    assert before - after in (0, 1)
    assert same_padding(n, k, s, d, extra="after") == (after, before)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@settings(max_examples=100, deadline=None)
@given(st.integers(1, 12), st.integers(1, 6), st.integers(1, 3), st.integers(0, 2**31))
def test_same_padding_after_matches_torch_padding_same(n: int, k: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, w = _rand(rng, 1, 2, n, n + 1), _rand(rng, 3, 2, k, k)
    expected = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding="same", dilation=d).numpy()
    pad = (same_padding(n, k, 1, d, extra="after"), same_padding(n + 1, k, 1, d, extra="after"))
    np.testing.assert_allclose(reference.conv2d(x, w, None, 1, pad, d), expected, rtol=1e-9, atol=1e-9)


def _ort_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, **attrs: Any) -> np.ndarray:
    node = helper.make_node("Conv", ["X", "W", "B"], ["Y"], **attrs)
    graph = helper.make_graph(
        [node], "conv",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        initializer=[helper.make_tensor("W", TensorProto.FLOAT, w.shape, w.astype(np.float32).ravel()),
                     helper.make_tensor("B", TensorProto.FLOAT, b.shape, b.astype(np.float32).ravel())],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"X": x.astype(np.float32)})[0])


@settings(max_examples=60, deadline=None)
@given(conv_cases(), st.integers(0, 3))
def test_conv_oracle_matches_onnx_runtime(c: dict[str, int], extra: int) -> None:
    rng = np.random.default_rng(c["seed"])
    x = _rand(rng, c["n"], c["cin"], c["h"], c["w"])
    w = _rand(rng, c["cout"], c["cin"] // c["groups"], c["kh"], c["kw"])
    b = _rand(rng, c["cout"])
    pad = ((c["ph"], c["ph"] + extra), (c["pw"], c["pw"]))
    got = _ort_conv(x, w, b, strides=[c["sh"], c["sw"]], dilations=[c["dh"], c["dw"]], group=c["groups"],
                    pads=[pad[0][0], pad[1][0], pad[0][1], pad[1][1]])  # fmt: skip
    expected = reference.conv2d(x, w, b, (c["sh"], c["sw"]), pad, (c["dh"], c["dw"]), c["groups"])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 6), st.integers(1, 4), st.integers(0, 2**31))
def test_same_padding_before_matches_onnx_same_lower(n: int, k: int, s: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, w, b = _rand(rng, 1, 2, n, n + 2), _rand(rng, 3, 2, k, k), _rand(rng, 3)
    got = _ort_conv(x, w, b, strides=[s, s], auto_pad="SAME_LOWER", kernel_shape=[k, k])
    pad = (same_padding(n, k, s), same_padding(n + 2, k, s))
    np.testing.assert_allclose(got, reference.conv2d(x, w, b, s, pad), rtol=1e-4, atol=1e-4)

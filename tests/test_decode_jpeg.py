"""The JPEG decoders behind the one preprocessing pipeline: turbo (simplejpeg) gives Pillow's pixels at full
scale and stays within a grey level when it scales; nvImageCodec (GPU) is batched per request, and asked for
without the package or a GPU it stops the server with a clear message."""

from __future__ import annotations

import asyncio
import io
import sys
import types
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from PIL import Image

from resnet_serve.formats.errors import ImageError
from resnet_serve.formats.preprocess import IMAGENET, ImageLimits, Preprocessor, PreprocessSpec
from resnet_serve.server.decode import gpu as gpu_decode
from resnet_serve.server.decode.budget import DecodeBudget, preprocess_each

pytest.importorskip("simplejpeg")

SPEC = PreprocessSpec.from_dict(IMAGENET)
SMALL = PreprocessSpec.from_dict({**IMAGENET, "resize": 64, "crop": 56})


def photo(size: tuple[int, int], name: str = "china.jpg") -> Image.Image:
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image(name)).resize(size, Image.Resampling.BICUBIC)


def jpeg(img: Image.Image, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def pre(spec: PreprocessSpec = SPEC, **limits: Any) -> Preprocessor:
    return Preprocessor(spec, ImageLimits(**limits))


def grey_levels(a: np.ndarray, b: np.ndarray, spec: PreprocessSpec = SPEC) -> np.ndarray:
    std = np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    diff: np.ndarray = np.abs(a - b) * std * 255
    return diff


@pytest.mark.parametrize("name", ["china.jpg", "flower.jpg"])
def test_turbo_at_full_scale_gives_pillows_pixels_exactly(name: str) -> None:
    data = jpeg(photo((640, 427), name))
    turbo, pillow = pre(decoder="turbo", jpeg_draft=False), pre(decoder="pillow", jpeg_draft=False)
    np.testing.assert_array_equal(turbo(data), pillow(data))
    grey = jpeg(photo((300, 200), name).convert("L"))
    np.testing.assert_array_equal(turbo(grey), pillow(grey))
    grey_model = PreprocessSpec.from_dict({**IMAGENET, "color": "L", "mean": [0.5], "std": [0.25]})
    for data_ in (data, grey):
        np.testing.assert_array_equal(
            pre(grey_model, decoder="turbo", jpeg_draft=False)(data_),
            pre(grey_model, decoder="pillow", jpeg_draft=False)(data_),
        )


def test_turbo_scales_large_photos_and_stays_within_a_grey_level() -> None:
    data = jpeg(photo((1600, 1200)))
    fast, exact = pre(SMALL, decoder="turbo"), pre(SMALL, decoder="pillow", jpeg_draft=False)
    assert max(fast.inspect(data).size) < 1600 and fast.inspect(data).cost < exact.inspect(data).cost
    assert grey_levels(fast(data), exact(data), SMALL).mean() < 1.0


def test_turbo_applies_the_exif_orientation() -> None:
    img = photo((480, 320))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = jpeg(img, exif=exif)
    got = pre(decoder="turbo", jpeg_draft=False).decode(data)
    assert got.size == (320, 480)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(pre(decoder="pillow").decode(data)))


def test_cmyk_jpegs_take_pillows_path_under_turbo() -> None:
    data = jpeg(photo((200, 150)).convert("CMYK"))
    np.testing.assert_array_equal(pre(decoder="turbo")(data), pre(decoder="pillow")(data))


def test_corrupt_jpegs_are_invalid_input_under_turbo() -> None:
    data = jpeg(photo((400, 300)))
    for bad in (data[: len(data) // 3], data[:200] + b"\x00" * 50):
        with pytest.raises(ImageError):
            pre(decoder="turbo")(bad)


def test_without_simplejpeg_turbo_refuses_to_start_and_pillow_needs_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "simplejpeg", None)  # import simplejpeg now raises ImportError
    gpu_decode.require("pillow")
    with pytest.raises(gpu_decode.DecoderUnavailable, match="simplejpeg"):
        gpu_decode.require("turbo")


# ---------------------------------------------------------------------------------------- nvImageCodec


def test_nvimgcodec_without_the_package_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", None)
    gpu_decode.reset()
    with pytest.raises(gpu_decode.DecoderUnavailable) as info:
        gpu_decode.require("nvimgcodec")
    message = str(info.value)
    assert "nvidia-nvimgcodec-cu12" in message and "image_decoder=turbo" in message
    assert "\n" not in message


class _FakeImage:
    def __init__(self, array: np.ndarray) -> None:
        self._array = array

    def cpu(self) -> np.ndarray:
        return self._array


def fake_nvimgcodec(calls: list[int], gpu: bool = True) -> types.ModuleType:
    """A stand-in for nvidia.nvimgcodec: decodes with Pillow (EXIF applied), records each batch's size."""
    nv = types.ModuleType("nvidia.nvimgcodec")

    class Decoder:
        def __init__(self, backends: Sequence[Any] = ()) -> None:
            if not gpu:
                raise RuntimeError("no CUDA-capable device is detected\nmore")

        def decode(self, files: list[bytes], params: Any = None) -> list[_FakeImage | None]:
            calls.append(len(files))
            out: list[_FakeImage | None] = []
            for data in files:
                try:
                    img = Image.open(io.BytesIO(data))
                    img.load()
                except OSError:
                    out.append(None)
                    continue
                from PIL import ImageOps

                out.append(_FakeImage(np.asarray(ImageOps.exif_transpose(img).convert("RGB"))))
            return out

    nv.Decoder = Decoder  # type: ignore[attr-defined]
    nv.Backend = lambda kind: kind  # type: ignore[attr-defined]
    nv.BackendKind = types.SimpleNamespace(GPU_ONLY="gpu", HYBRID_CPU_GPU="hybrid")  # type: ignore[attr-defined]
    nv.DecodeParams = lambda **kw: kw  # type: ignore[attr-defined]
    nv.ColorSpec = types.SimpleNamespace(RGB="rgb")  # type: ignore[attr-defined]
    return nv


@pytest.fixture
def no_codec() -> Iterator[None]:
    gpu_decode.reset()
    yield
    gpu_decode.reset()


def test_nvimgcodec_without_a_gpu_gives_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, no_codec: None
) -> None:
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", fake_nvimgcodec([], gpu=False))
    with pytest.raises(gpu_decode.DecoderUnavailable) as info:
        gpu_decode.require("nvimgcodec")
    assert "no CUDA-capable device" in str(info.value) and "\n" not in str(info.value)


def test_nvimgcodec_decodes_a_requests_jpegs_as_one_batch_through_the_same_pipeline(
    monkeypatch: pytest.MonkeyPatch, no_codec: None
) -> None:
    calls: list[int] = []
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", fake_nvimgcodec(calls))
    gpu_decode.require("nvimgcodec")
    assert calls == [1]  # the start-up probe
    budget = DecodeBudget(1 << 30)
    gpu = Preprocessor(SPEC, ImageLimits(decoder="nvimgcodec", jpeg_draft=False), budget)
    cpu = pre(decoder="pillow", jpeg_draft=False)
    good = [jpeg(photo((640, 427))), jpeg(photo((300, 500), "flower.jpg")), png(photo((320, 240)))]
    truncated = jpeg(photo((400, 300)))  # its header parses; its pixels end half-way
    images = [good[0], b"\xff\xd8\xff\xe0 not a jpeg", good[1], good[2], truncated[: len(truncated) // 2]]

    async def run() -> list[np.ndarray | Exception]:
        with ThreadPoolExecutor(2) as pool:
            return await preprocess_each(gpu, pool, images, timeout=10.0)

    rows = asyncio.run(run())
    assert calls == [1, 3]  # the JPEGs whose headers parsed went to the GPU together; the PNG did not
    for i, data in ((0, good[0]), (2, good[1]), (3, good[2])):
        row = rows[i]
        assert isinstance(row, np.ndarray)
        np.testing.assert_array_equal(row, cpu(data))
    assert isinstance(rows[1], ImageError) and isinstance(rows[4], ImageError)
    assert budget.used == 0


@pytest.mark.slow
def test_the_gpu_checks_decode_step_measures_every_path_it_has(
    monkeypatch: pytest.MonkeyPatch, no_codec: None, tmp_path: Any
) -> None:
    from lab.gpu_check.decode import decode_check
    from lab.gpu_check.settings import Settings

    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", None)
    cfg = Settings(tmp_path, True, 60.0, 0.1, (1,), 1.0, (1,), None, False)
    result = decode_check(cfg)
    assert str(result["paths"]["nvimgcodec"]).startswith("absent (")
    for path in ("pillow", "turbo"):
        for name in ("jpeg_640x427", "jpeg_10mp"):
            cell = result["paths"][path][name]
            assert cell["images_per_s"] > 0 and cell["max_grey_levels_vs_pillow"] < 1.0
    assert len(result["lines"]) == 4


@pytest.mark.slow
def test_the_server_refuses_to_start_with_nvimgcodec_it_cannot_load(tiny_onnx: Any) -> None:
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    argv = ["resnet_serve", "serve", "--model", f"tiny={tiny_onnx}", "--host", "127.0.0.1",
            "--grpc-port", "0", "--metrics-port", "-1", "--image-decoder", "nvimgcodec"]  # fmt: skip
    # `resnet-serve serve` in a child where importing nvidia.nvimgcodec fails, installed here or not.
    code = (
        "import runpy, sys; sys.modules['nvidia.nvimgcodec'] = None; "
        f"sys.argv = {argv!r}; runpy.run_module('resnet_serve', run_name='__main__')"
    )
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, cwd=root
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "cannot start" in done.stderr and "nvidia-nvimgcodec-cu12" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr

"""Only the allowlisted formats are ever opened: EPS/PS (Pillow hands them to Ghostscript), PDF, ICO and XBM
are refused with INVALID_ARGUMENT on both APIs, and a fake `gs` on the server's PATH is never called."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from kserve_fixtures import KServeServer, start_server, stop_server
from PIL import Image

from resnet_serve.formats.decode import ALLOWED_FORMATS, DEFAULT_FORMATS
from resnet_serve.formats.errors import ImageError
from resnet_serve.formats.preprocess import ImageLimits, Preprocessor, PreprocessSpec

SPEC = PreprocessSpec.from_dict(
    {"color": "RGB", "resize": 16, "crop": 16, "interpolation": "bilinear",
     "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
)  # fmt: skip
EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
    b"newpath 0 0 moveto 8 0 lineto 8 8 lineto closepath fill\nshowpage\n%%EOF\n"
)
PS = b"%!PS-Adobe-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n0 0 moveto showpage\n%%EOF\n"
PDF = (
    b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
    b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
)
XBM = b"#define im_width 8\n#define im_height 8\nstatic char im_bits[] = {\n" + b"0xff," * 8 + b"\n};\n"
SHELL_OUT = {"eps": EPS, "ps": PS, "pdf": PDF}


def encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))


def ico() -> bytes:
    return encode(photo(), "ICO", sizes=[(16, 16)])


def preprocessor(**limits: Any) -> Preprocessor:
    return Preprocessor(SPEC, ImageLimits(**limits))


@pytest.mark.parametrize("fmt", DEFAULT_FORMATS)
def test_every_default_format_decodes(fmt: str) -> None:
    assert preprocessor()(encode(photo(), fmt)).shape == (3, 16, 16)


@pytest.mark.parametrize(
    ("name", "data"), [("eps", EPS), ("ps", PS), ("pdf", PDF), ("xbm", XBM), ("ico", None)]
)
def test_formats_outside_the_allowlist_are_refused_with_the_accepted_list(
    name: str, data: bytes | None
) -> None:
    with pytest.raises(ImageError) as info:
        preprocessor()(data if data is not None else ico())
    message = str(info.value)
    assert "accepted format" in message and "JPEG, PNG, WebP, GIF or BMP" in message, name


@pytest.mark.parametrize(("fmt", "mode"), [("TIFF", "LA"), ("PPM", "RGB"), ("PPM", "L")])
def test_tiff_and_ppm_are_off_by_default_and_decode_when_listed(fmt: str, mode: str) -> None:
    data = encode(photo().convert(mode), fmt)
    with pytest.raises(ImageError, match="accepted format"):
        preprocessor()(data)
    assert preprocessor(formats=ALLOWED_FORMATS)(data).shape == (3, 16, 16)


def test_an_animation_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (20, 20), colour) for colour in ((250, 0, 0), (0, 0, 250))]
    for fmt in ("GIF", "WEBP"):
        data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], lossless=True)
        img = preprocessor().decode(data)
        red, _, blue = (float(np.asarray(c).mean()) for c in img.split())
        assert red > 200 and blue < 50, fmt


def test_opening_refused_formats_loads_no_other_plugin() -> None:
    # In a fresh interpreter: decoding EPS and ICO bytes must not make Pillow import its EPS or ICO plugin.
    code = (
        "import sys\n"
        "from resnet_serve.formats.preprocess import ImageLimits, Preprocessor, PreprocessSpec\n"
        "from resnet_serve.formats.errors import ImageError\n"
        "spec = PreprocessSpec.from_dict({'color': 'L', 'resize': 8, 'crop': 8, 'interpolation': 'bilinear',"
        " 'mean': [0.5], 'std': [0.5]})\n"
        "for data in (sys.stdin.buffer.read(), b'\\x00\\x00\\x01\\x00' + bytes(40)):\n"
        "    try:\n"
        "        Preprocessor(spec, ImageLimits())(data)\n"
        "    except ImageError:\n"
        "        pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('PIL.') and m.endswith('ImagePlugin')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", code], input=EPS, capture_output=True, check=True, env=env, timeout=60
    ).stdout.decode()
    assert "EpsImagePlugin" not in out and "IcoImagePlugin" not in out, out


# ----------------------------------------------------------------------- the server, with a fake Ghostscript


def fake_ghostscript(folder: Path) -> Path:
    """A `gs` that records each call (its arguments) in calls.log and fails."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "calls.log"
    script = folder / "gs"
    script.write_text(f'#!/bin/sh\necho "gs $*" >> "{log}"\nexit 1\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return log


@pytest.fixture(scope="module")
def trapped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KServeServer, Path]]:
    tmp = tmp_path_factory.mktemp("gs")
    calls = fake_ghostscript(tmp / "bin")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", f"{tmp / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
        server = start_server(tmp)
    try:
        yield server, calls
    finally:
        stop_server(server)


@pytest.mark.slow
def test_the_fake_ghostscript_is_a_real_trap(tmp_path: Path) -> None:
    # Control: Pillow left to itself (every format) does run `gs` on EPS bytes, so zero calls below mean
    # the allowlist held, not that the trap was never armed.
    calls = fake_ghostscript(tmp_path / "bin")
    code = (
        "import io, sys\nfrom PIL import Image\n"
        "try:\n    Image.open(io.BytesIO(sys.stdin.buffer.read())).load()\nexcept Exception:\n    pass\n"
    )
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run([sys.executable, "-c", code], input=EPS, env=env, check=True, timeout=60)
    assert calls.exists() and "gs " in calls.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHELL_OUT))
def test_shell_out_formats_are_invalid_argument_on_the_image_api_and_never_run_gs(
    trapped_server: tuple[KServeServer, Path], name: str
) -> None:
    from resnet_serve.protos import classifier_pb2 as pb
    from resnet_serve.protos import classifier_pb2_grpc as pb_grpc

    server, calls = trapped_server
    with grpc.insecure_channel(server.url) as channel:
        stub = pb_grpc.ImageClassifierStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as info:
            stub.Classify(pb.ClassifyRequest(model="tiny", version="1", image=SHELL_OUT[name]), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    message = info.value.details() or ""
    assert "accepted format" in message and "gs" not in message.split() and "-dSAFER" not in message
    assert not calls.exists(), calls.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHELL_OUT))
def test_shell_out_formats_are_invalid_argument_as_kserve_bytes_and_never_run_gs(
    trapped_server: tuple[KServeServer, Path], name: str
) -> None:
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    server, calls = trapped_server
    client = tc.InferenceServerClient(server.url)
    tensor = tc.InferInput("input", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([SHELL_OUT[name]], dtype=np.object_))
    with pytest.raises(InferenceServerException) as info:
        client.infer("tiny", [tensor], model_version="1", client_timeout=30)
    assert str(info.value.status()) == "StatusCode.INVALID_ARGUMENT"
    message = str(info.value.message())
    assert "accepted format" in message and "-dSAFER" not in message and "/tmp/" not in message
    assert not calls.exists(), calls.read_text()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"image_formats": "jpeg,eps"}, "image_formats"),
        ({"image_formats": ""}, "image_formats"),
        ({"image_decoder": "ghostscript"}, "image_decoder"),
        ({"image_decoder": "auto"}, "image_decoder"),
        ({"max_decode_memory_mib": 0}, "max_decode_memory_mib"),
    ],
)
def test_image_options_outside_their_sets_are_config_errors(values: dict[str, Any], message: str) -> None:
    from resnet_serve.server.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config({**values, "model": ["m=x.onnx"]}, env={})


def test_the_servers_limits_carry_the_configured_formats_and_decoder() -> None:
    from resnet_serve.server.config import image_formats, load_config

    config = load_config({"image_formats": "png, TIFF", "model": ["m=x.onnx"]}, env={})
    assert image_formats(config) == ("PNG", "TIFF")
    assert image_formats(load_config({"model": ["m=x.onnx"]}, env={})) == DEFAULT_FORMATS

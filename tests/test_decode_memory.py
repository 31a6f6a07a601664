"""Decoding memory is bounded: one image's peak by a small multiple of its 8-bit RGB size (and by the cost
its header declares), all concurrent decodes by the server's budget (`max_decode_memory_mib`), which
admits, queues (up to the deadline) or refuses with RESOURCE_EXHAUSTED, so decodes never add up to an OOM
kill."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from kserve_fixtures import start_server, stop_server
from PIL import Image

from resnet_serve.formats.decode import DecodeDeferred, Header
from resnet_serve.formats.preprocess import IMAGENET, ImageLimits, Preprocessor, PreprocessSpec
from resnet_serve.server.decode.budget import MIB, DecodeBudget, preprocess_image
from resnet_serve.server.errors import ServeError

ROOT = Path(__file__).resolve().parents[1]
MB = 1_000_000


def sixteen_bit_png(width: int = 8000, height: int = 5000) -> bytes:
    """The issue's amplifier: a 16-bit greyscale PNG of 8000×5000 that compresses to ~100 KiB."""
    pixels = np.zeros((height, width), dtype=np.uint16)
    pixels[::97, :] = 40000
    pixels[:, ::89] = 20000
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def rgba_png(width: int = 4000, height: int = 3000) -> bytes:
    pixels = np.zeros((height, width, 4), dtype=np.uint8)
    pixels[::7, :, 0] = 255
    pixels[:, ::5, 3] = 128
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


_MEASURE = """
import json, resource, sys
from resnet_serve.formats.preprocess import IMAGENET, ImageLimits, Preprocessor, PreprocessSpec
data = open(sys.argv[1], "rb").read()
pre = Preprocessor(PreprocessSpec.from_dict(IMAGENET), ImageLimits())
header = pre.inspect(data)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
row = pre.finish(header)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"added": after - before, "cost": header.cost, "size": header.size, "shape": row.shape}))
"""


def measure_peak(path: Path) -> dict[str, Any]:
    """Decode one file for an ImageNet model in a fresh interpreter: the peak RSS it adds (ru_maxrss)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)], capture_output=True, check=True, env=env, timeout=120
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.mark.slow
def test_sixteen_bit_8000x5000_png_adds_at_most_300_mb_and_no_more_than_it_declared(tmp_path: Path) -> None:
    path = tmp_path / "big16.png"
    path.write_bytes(sixteen_bit_png())
    assert path.stat().st_size < 200 * 1024
    got = measure_peak(path)
    assert got["shape"] == [3, 224, 224]
    # Before: ~1 GB (float64 copies of the full image). The 8-bit RGB size of the image is 120 MB.
    assert got["added"] <= 300 * MB, got
    assert got["added"] <= got["cost"], got


@pytest.mark.slow
def test_rgba_png_stays_within_its_declared_cost(tmp_path: Path) -> None:
    path = tmp_path / "rgba.png"
    path.write_bytes(rgba_png())
    got = measure_peak(path)
    assert got["added"] <= got["cost"], got
    assert got["added"] <= 3 * 4000 * 3000 * 3, got  # a small multiple of the 8-bit RGB size


# ---------------------------------------------------------------------------------------- the budget


def test_a_decode_that_fits_is_admitted_at_once_and_released() -> None:
    budget = DecodeBudget(100)
    assert budget.try_acquire(60)
    assert not budget.try_acquire(50)
    budget.release(60)
    assert budget.try_acquire(100) and budget.used == 100


def test_a_waiting_decode_runs_when_room_is_released() -> None:
    async def scenario() -> float:
        budget = DecodeBudget(100)
        assert budget.try_acquire(80)
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, budget.release, 80)
        start = time.perf_counter()
        await budget.acquire(50, timeout=5.0)
        assert budget.used == 50
        return time.perf_counter() - start

    assert 0.03 < asyncio.run(scenario()) < 2.0


def test_a_decode_that_waits_past_its_deadline_is_resource_exhausted() -> None:
    async def scenario() -> ServeError:
        budget = DecodeBudget(100)
        assert budget.try_acquire(80)
        with pytest.raises(ServeError) as info:
            await budget.acquire(50, timeout=0.05)
        assert budget.used == 80 and not budget._waiters  # the waiter left the line
        return info.value

    error = asyncio.run(scenario())
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_decode_memory_mib" in error.message and "retry" in error.message


def test_an_image_larger_than_the_whole_budget_is_refused_at_once() -> None:
    async def scenario() -> ServeError:
        with pytest.raises(ServeError) as info:
            await DecodeBudget(10 * MIB).acquire(11 * MIB, timeout=60.0)
        return info.value

    start = time.perf_counter()
    error = asyncio.run(scenario())
    assert time.perf_counter() - start < 1.0
    assert (
        error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "more than the server's whole" in error.message
    )


def test_waiters_are_served_first_come_first_served() -> None:
    async def scenario() -> list[str]:
        budget = DecodeBudget(100)
        assert budget.try_acquire(100)
        order: list[str] = []

        async def wait(name: str, cost: int) -> None:
            await budget.acquire(cost, timeout=5.0)
            order.append(name)

        big = asyncio.create_task(wait("big", 90))
        await asyncio.sleep(0)
        small = asyncio.create_task(wait("small", 10))
        await asyncio.sleep(0.01)
        assert not budget.try_acquire(1)  # someone is waiting: a newcomer does not jump the line
        budget.release(100)
        await asyncio.gather(big, small)
        return order

    assert asyncio.run(scenario()) == ["big", "small"]


def test_a_full_budget_hands_back_the_header_and_the_server_path_waits_for_room() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 200, 30)).save(buf, "PNG")
    data = buf.getvalue()
    budget = DecodeBudget(64 * MIB)
    pre = Preprocessor(PreprocessSpec.from_dict(IMAGENET), ImageLimits(), budget)
    assert budget.try_acquire(64 * MIB)
    with pytest.raises(DecodeDeferred) as info:  # nothing decoded while the budget is full
        pre(data)
    assert isinstance(info.value.header, Header)

    async def scenario() -> np.ndarray:
        asyncio.get_running_loop().call_later(0.05, budget.release, 64 * MIB)
        with ThreadPoolExecutor(2) as pool:
            return await preprocess_image(pre, pool, data, timeout=5.0)

    row = asyncio.run(scenario())
    np.testing.assert_array_equal(row, pre(data))
    assert budget.used == 0


# ------------------------------------------------------------------------------------ the server


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's VmHWM from /proc")
def test_sixteen_concurrent_amplifier_pngs_stay_within_the_servers_budget(tmp_path: Path) -> None:
    from resnet_serve.protos import classifier_pb2 as pb
    from resnet_serve.protos import classifier_pb2_grpc as pb_grpc

    budget_mib = 400  # two of these decodes at a time (each declares ~161 MB)
    server = start_server(tmp_path, "--max-decode-memory-mib", str(budget_mib), "--preprocess-threads", "4")
    try:
        data = sixteen_bit_png()
        with grpc.insecure_channel(server.url) as channel:
            stub = pb_grpc.ImageClassifierStub(channel)  # type: ignore[no-untyped-call]
            small = io.BytesIO()
            Image.new("L", (8, 8), 3).save(small, "PNG")
            stub.Classify(pb.ClassifyRequest(model="tiny", version="1", image=small.getvalue()), timeout=30)
            before = peak_rss(server.process.pid)
            futures = [
                stub.Classify.future(pb.ClassifyRequest(model="tiny", version="1", image=data), timeout=120)
                for _ in range(16)
            ]
            codes = []
            for future in futures:
                try:
                    future.result()
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())
        added = peak_rss(server.process.pid) - before
        assert server.process.poll() is None  # alive
    finally:
        stop_server(server)
    ok = codes.count(grpc.StatusCode.OK)
    print(f"16 concurrent: peak RSS +{added / MIB:.0f} MiB (budget {budget_mib} MiB), {ok} OK")
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert codes.count(grpc.StatusCode.OK) >= 2, codes
    # Within the budget, plus the 16 requests' bytes and gRPC's buffers.
    assert added <= budget_mib * MIB + 64 * MIB, (added / MIB, codes)


@pytest.mark.parametrize(
    ("mode", "color", "at_least"),
    [
        ("P", "RGB", 1 + 4),  # the palette image and its RGB conversion
        ("P", "L", 1 + 1),
        ("L", "RGB", 1 + 1),  # grey stays grey until after the resize
        ("I;16", "RGB", 2 + 1),  # the 16-bit image and its 8-bit copy
        ("RGBA", "RGB", 4 + 4),
        ("CMYK", "RGB", 4 + 4),
        ("RGB", "L", 4 + 1),
    ],
)
def test_the_declared_cost_covers_the_decoded_image_and_its_conversion(
    mode: str, color: str, at_least: int
) -> None:
    from resnet_serve.formats.decode import decode_cost

    pixels = 1000 * 1000
    assert decode_cost(mode, (1000, 1000), color) >= pixels * at_least
    assert decode_cost(mode, (1000, 1000), color, "WEBP") >= pixels * (at_least + 4)


@pytest.mark.slow
def test_an_image_beyond_the_whole_budget_is_resource_exhausted_on_both_apis(tmp_path: Path) -> None:
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    from resnet_serve.protos import classifier_pb2 as pb
    from resnet_serve.protos import classifier_pb2_grpc as pb_grpc

    server = start_server(tmp_path, "--max-decode-memory-mib", "100")  # the amplifier declares ~161 MB
    try:
        data = sixteen_bit_png()
        with grpc.insecure_channel(server.url) as channel:
            stub = pb_grpc.ImageClassifierStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.RpcError) as info:
                stub.Classify(pb.ClassifyRequest(model="tiny", version="1", image=data), timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_decode_memory_mib=100" in (info.value.details() or "")
        client = tc.InferenceServerClient(server.url)
        tensor = tc.InferInput("input", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([data], dtype=np.object_))
        with pytest.raises(InferenceServerException) as kinfo:
            client.infer("tiny", [tensor], model_version="1", client_timeout=30)
        assert str(kinfo.value.status()) == "StatusCode.RESOURCE_EXHAUSTED"
        assert server.process.poll() is None
    finally:
        stop_server(server)

"""The shared-memory registry (server/shm/): real POSIX regions made by tritonclient.utils.shared_memory, and
the CUDA path driven through a fake cuda-python runtime module (no GPU here)."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.utils.shared_memory as triton_shm

from resnet_serve.protos import grpc_service_pb2 as pb
from resnet_serve.server.errors import ServeError
from resnet_serve.server.kserve.regions import SharedTensor, from_region, write_region
from resnet_serve.server.shm.cuda import NEEDS, CudaRuntime, import_cudart
from resnet_serve.server.shm.registry import CudaStatus, SharedMemoryRegistry, SystemStatus

SIZE = 256


@pytest.fixture
def key() -> Iterator[str]:
    """A fresh POSIX shared-memory object of SIZE bytes, made as a Triton client makes it."""
    name = f"/resnet_serve_test_{uuid.uuid4().hex[:12]}"
    handle = triton_shm.create_shared_memory_region("client", name, SIZE)
    try:
        yield name
    finally:
        triton_shm.destroy_shared_memory_region(handle)


def code_and_message(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(ServeError) as info:
        call()
    return info.value.code, info.value.message


def mapped(key: str) -> bool:
    """Whether the server side of this process maps the shared-memory object `key` (the client's own
    mapping, made by the `key` fixture, is one line of /proc/self/maps)."""
    return Path("/proc/self/maps").read_text().count(f"/dev/shm/{key.lstrip('/')}") > 1


def test_register_maps_the_key_and_status_lists_it(key: str) -> None:
    registry = SharedMemoryRegistry()
    registry.register("r", key, 16, 128)
    assert registry.status() == [SystemStatus("r", key, 16, 128)]
    assert registry.status("r") == registry.status()
    region = registry.resolve("r", 8, 4, "input 'x'")
    region.write(8, memoryview(b"abcd"))
    assert bytes(region.view(8, 4)) == b"abcd"
    assert mapped(key)
    registry.close()
    assert not mapped(key) and len(registry) == 0


def test_every_misuse_of_register_is_a_clear_error(key: str, tmp_path: Path) -> None:
    registry = SharedMemoryRegistry()
    cases = {
        "/no_such_key_for_resnet_serve": grpc.StatusCode.NOT_FOUND,
        "../etc/passwd": grpc.StatusCode.INVALID_ARGUMENT,
        "/a/b": grpc.StatusCode.INVALID_ARGUMENT,
        "/": grpc.StatusCode.INVALID_ARGUMENT,
    }
    for bad_key, status in cases.items():
        code, message = code_and_message(lambda k=bad_key: registry.register("r", k, 0, 8))
        assert code == status and repr(bad_key) in message, message
    code, message = code_and_message(lambda: registry.register("r", key, 200, 100))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "runs past the end" in message and "256" in message
    code, message = code_and_message(lambda: registry.register("r", key, 0, 0))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "byte_size" in message
    code, message = code_and_message(lambda: registry.register("", key, 0, 8))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    registry.register("r", key, 0, 8)
    code, message = code_and_message(lambda: registry.register("r", "/another_key", 0, 8))
    assert code == grpc.StatusCode.ALREADY_EXISTS and key in message
    code, message = code_and_message(lambda: registry.status("nope"))
    assert code == grpc.StatusCode.NOT_FOUND and "'nope'" in message
    registry.unregister("nope")  # unregistering what is not registered changes nothing (as Triton)
    assert len(registry) == 1
    registry.close()


def test_symlinks_and_non_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"\0" * 64)
    (tmp_path / "link").symlink_to(tmp_path / "target")
    (tmp_path / "dir").mkdir()
    registry = SharedMemoryRegistry(root=tmp_path)
    code, message = code_and_message(lambda: registry.register("r", "/link", 0, 8))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "symbolic link" in message
    code, _ = code_and_message(lambda: registry.register("r", "/dir", 0, 8))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    registry.register("r", "/target", 0, 64)  # a regular file under the root is fine
    registry.close()


def test_resolve_checks_the_region_and_the_bounds(key: str) -> None:
    registry = SharedMemoryRegistry()
    registry.register("r", key, 0, 64)
    code, message = code_and_message(lambda: registry.resolve("other", 0, 8, "input 'x'"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("input 'x': shared memory region 'other' is not registered")
    code, message = code_and_message(lambda: registry.resolve("r", 60, 8, "output 'y'"))
    assert (
        code == grpc.StatusCode.INVALID_ARGUMENT and "runs past the end" in message and "64 bytes" in message
    )
    assert registry.resolve("r", 56, 8, "input 'x'").byte_size == 64
    registry.close()


def test_unregister_unmaps_at_once_when_no_request_holds_the_region(key: str) -> None:
    registry = SharedMemoryRegistry()
    registry.register("a", key, 0, 64)
    registry.register("b", key, 64, 64)
    registry.unregister("a")
    assert registry.status() == [SystemStatus("b", key, 64, 64)]
    registry.unregister()
    assert registry.status() == [] and not mapped(key)


def test_a_request_holding_an_unregistered_region_keeps_its_mapping_until_done(key: str) -> None:
    registry = SharedMemoryRegistry()
    registry.register("r", key, 0, SIZE)
    x = np.arange(8, dtype=np.float32)
    registry.resolve("r", 0, 32, "input 'x'").write(0, x.data.cast("B"))
    held = SharedTensor(registry.resolve("r", 0, 32, "input 'x'"), "r", 0, 32)
    view = from_region("x", "FP32", [8], held)  # zero copy: a view of the mapping
    registry.unregister("r")
    code, _ = code_and_message(lambda: registry.resolve("r", 0, 32, "input 'x'"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT  # the next request is refused ...
    np.testing.assert_array_equal(view, x)  # ... while this one still reads its input
    echo = pb.ModelInferResponse.InferOutputTensor().parameters
    write_region("y", SharedTensor(held.region, "r", 32, 32), (x * 2).data.cast("B"), echo)
    assert echo["shared_memory_offset"].int64_param == 32
    np.testing.assert_array_equal(np.frombuffer(held.region.view(32, 32), dtype=np.float32), x * 2)
    assert mapped(key)
    del view, held
    gc.collect()
    assert not mapped(key)


def test_a_region_shrunk_under_the_server_is_refused_not_a_crash(key: str) -> None:
    registry = SharedMemoryRegistry()
    registry.register("r", key, 0, SIZE)
    region = registry.resolve("r", 0, SIZE, "input 'x'")
    fd = os.open(f"/dev/shm/{key.lstrip('/')}", os.O_RDWR)
    try:
        os.ftruncate(fd, 16)
        code, message = code_and_message(lambda: region.view(0, SIZE))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "runs past the end" in message
        os.ftruncate(fd, SIZE)
    finally:
        os.close(fd)
    registry.close()


def test_input_byte_size_must_match_the_tensor(key: str) -> None:
    registry = SharedMemoryRegistry()
    registry.register("r", key, 0, SIZE)
    where = SharedTensor(registry.resolve("r", 0, 40, "input 'x'"), "r", 0, 40)
    code, message = code_and_message(lambda: from_region("x", "FP32", [2, 4], where))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message == "input 'x': shared_memory_byte_size 40 does not match FP32 [2, 4] (32 bytes)"
    registry.close()


def test_the_number_of_regions_is_bounded(key: str) -> None:
    registry = SharedMemoryRegistry(max_regions=2)
    registry.register("a", key, 0, 8)
    registry.register("b", key, 0, 8)
    code, message = code_and_message(lambda: registry.register("c", key, 0, 8))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "unregister" in message
    registry.close()


# ------------------------------------------------------------------------------------------------------ CUDA


class FakeCudart:
    """The slice of cuda-python's runtime module the server calls, over host memory: an IPC handle's first
    8 bytes are the address of a host buffer standing for the client's device allocation."""

    CUDA_IPC_HANDLE_SIZE = 64
    cudaIpcMemLazyEnablePeerAccess = 1
    cudaError_t = SimpleNamespace(cudaSuccess=0, cudaErrorInvalidValue=1)
    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    class cudaIpcMemHandle_t:
        def __init__(self) -> None:
            self._bytes = ctypes.create_string_buffer(64)

        def getPtr(self) -> int:
            return ctypes.addressof(self._bytes)

    def __init__(self, devices: int = 1) -> None:
        self.devices = devices
        self.device = -1
        self.open: set[int] = set()
        self.copies: list[int] = []

    def cudaGetDeviceCount(self) -> tuple[int, int]:
        return (0, self.devices) if self.devices else (1, 0)

    def cudaGetErrorString(self, error: int) -> tuple[int, bytes]:
        return 0, b"no CUDA-capable device is detected" if error == 1 else b"error"

    def cudaSetDevice(self, device: int) -> tuple[int]:
        self.device = device
        return (0,)

    def cudaIpcOpenMemHandle(self, handle: Any, flags: int) -> tuple[int, int]:
        pointer = int.from_bytes(ctypes.string_at(handle.getPtr(), 8), "little")
        self.open.add(pointer)
        return 0, pointer

    def cudaIpcCloseMemHandle(self, pointer: int) -> tuple[int]:
        self.open.remove(pointer)
        return (0,)

    def cudaMemcpy(self, dst: int, src: int, count: int, kind: int) -> tuple[int]:
        device = src if kind == self.cudaMemcpyKind.cudaMemcpyDeviceToHost else dst
        assert device in self.open or any(p <= device < p + 4096 for p in self.open)
        ctypes.memmove(dst, src, count)
        self.copies.append(kind)
        return (0,)


@pytest.fixture
def device_memory() -> Iterator[tuple[ctypes.Array[ctypes.c_char], bytes]]:
    """A "device allocation" (host memory) and its 64-byte IPC handle."""
    memory = ctypes.create_string_buffer(4096)
    handle = ctypes.addressof(memory).to_bytes(8, "little") + bytes(56)
    yield memory, handle


def test_cuda_region_reads_and_writes_through_the_runtime(
    device_memory: tuple[ctypes.Array[ctypes.c_char], bytes],
) -> None:
    memory, handle = device_memory
    fake = FakeCudart()
    registry = SharedMemoryRegistry(cudart=lambda: fake)
    registry.register_cuda("gpu", handle, 0, 4096)
    assert registry.cuda_status() == [CudaStatus("gpu", 0, 4096)] and registry.status() == []
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    ctypes.memmove(ctypes.addressof(memory) + 64, x.ctypes.data, x.nbytes)
    where = SharedTensor(registry.resolve("gpu", 64, 24, "input 'x'"), "gpu", 64, 24)
    np.testing.assert_array_equal(from_region("x", "FP32", [2, 3], where), x)
    echo = pb.ModelInferResponse.InferOutputTensor().parameters
    out = SharedTensor(where.region, "gpu", 0, 24)
    write_region("y", out, (x + 1).data.cast("B"), echo)
    np.testing.assert_array_equal(np.frombuffer(memory.raw[:24], dtype=np.float32), (x + 1).ravel())
    assert echo["shared_memory_region"].string_param == "gpu"
    assert echo["shared_memory_byte_size"].int64_param == 24
    assert fake.copies == [2, 1] and fake.open
    registry.unregister_cuda("gpu")
    assert fake.open  # still held by this "request" ...
    del where, out
    assert not fake.open  # ... and closed when it is done


def test_cuda_misuse_is_a_clear_error(device_memory: tuple[ctypes.Array[ctypes.c_char], bytes]) -> None:
    _, handle = device_memory
    registry = SharedMemoryRegistry(cudart=lambda: FakeCudart(devices=1))
    code, message = code_and_message(lambda: registry.register_cuda("g", handle[:10], 0, 64))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "64-byte" in message
    code, message = code_and_message(lambda: registry.register_cuda("g", handle, 3, 64))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "device_id 3" in message
    no_gpu = SharedMemoryRegistry(cudart=lambda: FakeCudart(devices=0))
    code, message = code_and_message(lambda: no_gpu.register_cuda("g", handle, 0, 64))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and message.startswith(NEEDS)
    registry.register_cuda("g", handle, 0, 64)
    code, _ = code_and_message(lambda: registry.status("g"))  # a CUDA region is not a system one
    assert code == grpc.StatusCode.NOT_FOUND
    registry.unregister("g")  # nor does the system unregister remove it
    assert len(registry) == 1
    registry.close()


def test_without_cuda_python_cuda_registration_says_what_it_needs(
    device_memory: tuple[ctypes.Array[ctypes.c_char], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    def missing(name: str) -> Any:
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(importlib, "import_module", missing)
    code, message = code_and_message(import_cudart)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and message == NEEDS
    code, message = code_and_message(
        lambda: SharedMemoryRegistry().register_cuda("g", device_memory[1], 0, 64)
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and message == NEEDS


def test_cuda_runtime_errors_become_statuses() -> None:
    fake = FakeCudart()
    fake.cudaSetDevice = lambda device: (1,)  # type: ignore[method-assign]
    code, message = code_and_message(lambda: CudaRuntime(fake).close(1234, 0))
    assert code == grpc.StatusCode.INTERNAL and "select device 0" in message


@pytest.mark.slow
def test_server_stop_releases_every_region(key: str, tiny_onnx: Path) -> None:
    from test_server_app import config_for

    from resnet_serve.protos import grpc_service_pb2_grpc as pb_grpc
    from resnet_serve.server.app import InferenceServer

    async def main() -> None:
        server = InferenceServer(config_for(tiny_onnx))
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            request = pb.SystemSharedMemoryRegisterRequest(name="r", key=key, byte_size=SIZE)
            await stub.SystemSharedMemoryRegister(request, timeout=10)
            status = await stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(), timeout=10)
            assert list(status.regions) == ["r"] and status.regions["r"].key == key
        assert mapped(key)
        await server.stop(grace_s=5)
        assert not mapped(key) and len(server.ctx.shared_memory) == 0

    asyncio.run(main())


def test_an_output_in_shared_memory_keeps_raw_contents_one_per_output(key: str) -> None:
    """tritonclient.grpc finds an output's bytes by its position among the outputs, so an output written to
    shared memory keeps an (empty) raw_output_contents entry and the next output's bytes stay in place."""
    import tritonclient.grpc as tc
    from tritonclient.grpc import service_pb2

    from resnet_serve.server.kserve.codec import DecodedRequest, encode_response

    registry = SharedMemoryRegistry()
    registry.register("r", key, 0, SIZE)
    region = SharedTensor(registry.resolve("r", 0, 40, "output 'first'"), "r", 0, 40)
    first = np.arange(10, dtype=np.float32).reshape(1, 10)
    second = np.full((1, 3), 7, dtype=np.int64)
    decoded = DecodedRequest({}, 1, [("first", 0), ("second", 0)], None, None, {"first": region})
    model: Any = SimpleNamespace(name="m", version="1", labels=[])
    response = encode_response(model, decoded, {"first": first, "second": second}, "id")
    result = tc.InferResult(service_pb2.ModelInferResponse.FromString(response.SerializeToString()))
    np.testing.assert_array_equal(result.as_numpy("second"), second)
    assert list(response.raw_output_contents) == [b"", second.tobytes()]
    np.testing.assert_array_equal(np.frombuffer(region.region.view(0, 40), dtype=np.float32), first.ravel())
    del region
    registry.close()

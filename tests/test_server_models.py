"""The model manager: repositories, version policies, lookup errors, load/unload without dropping requests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from support.tiny_model import write_tiny_onnx

from resnet_serve.export.package import ServingSettings, package
from resnet_serve.server.config import ModelSettings, ServerConfig
from resnet_serve.server.errors import ServeError
from resnet_serve.server.models.manager import ModelManager
from resnet_serve.server.models.served import ModelState
from resnet_serve.server.models.sources import discover_versions
from resnet_serve.server.observability.metrics import ServerMetrics

T = TypeVar("T")
X = np.random.default_rng(0).normal(size=(1, 1, 8, 8)).astype(np.float32)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """Model "tiny" with versions 1 and 2 (different weights), packaged by `resnet-serve package`."""
    root = tmp_path / "repo"
    for seed in (1, 2):
        onnx_file = write_tiny_onnx(tmp_path / f"v{seed}.onnx", seed=seed)
        package(
            onnx_file, root, "tiny", settings=ServingSettings(max_batch_size=6, preferred_batch_sizes=[2])
        )
    return root


def manager_for(repo: Path, **model_defaults: Any) -> ModelManager:
    defaults = ModelSettings(name="").model_copy(update=model_defaults)
    config = ServerConfig(model_repository=str(repo), model_defaults=defaults)
    return ModelManager(config, ServerMetrics(registry=CollectorRegistry()))


async def logits(manager: ModelManager, version: str = "") -> np.ndarray:
    result = await manager.get("tiny", version).infer({"input": X})
    return np.asarray(result.outputs["logits"])


def test_repository_serves_the_latest_version_with_its_packaged_settings(repo: Path) -> None:
    async def main() -> None:
        manager = manager_for(repo)
        await manager.start()
        model = manager.get("tiny")
        assert model.version == "2"
        assert model.batcher.max_batch_size == 6
        assert model.settings.batching.preferred_batch_sizes == (2,)
        assert [(s.version, s.state) for s in manager.statuses()] == [("2", ModelState.READY)]
        with pytest.raises(ServeError) as info:
            manager.get("tiny", "1")
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        await manager.close(5)

    run(main())


def test_version_policy_all_serves_every_version_and_prefers_the_highest(repo: Path) -> None:
    async def main() -> None:
        manager = manager_for(repo, version_policy="all")
        await manager.start()
        assert [m.version for m in manager.versions("tiny")] == ["1", "2"]
        v1, v2, default = await logits(manager, "1"), await logits(manager, "2"), await logits(manager)
        assert not np.allclose(v1, v2)
        np.testing.assert_array_equal(default, v2)
        await manager.close(5)

    run(main())


def test_specific_versions_and_missing_ones(repo: Path) -> None:
    async def main() -> None:
        manager = manager_for(repo, version_policy="specific", versions=(1,))
        await manager.start()
        assert [m.version for m in manager.versions("tiny")] == ["1"]
        await manager.close(5)
        broken = manager_for(repo, version_policy="specific", versions=(3,))
        with pytest.raises(ServeError) as info:
            await broken.start()
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert "version(s) 3 not found (available: 1, 2)" in info.value.message

    run(main())


def test_a_version_of_non_ascii_digits_is_not_a_number(repo: Path) -> None:
    # str.isdigit takes "１" (fullwidth) and "١" (Arabic-Indic), and int() reads both as 1: they must be
    # refused as "+1", " 1" and "1_0" are, not served as version 1.
    async def main() -> None:
        manager = manager_for(repo, version_policy="all")
        await manager.start()
        for version in ("１", "١", "1١", "+1", " 1", "1_0"):
            with pytest.raises(ServeError) as info:
                manager.get("tiny", version)
            assert info.value.message.startswith("failed to get model version from specified version string")
            assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(ServeError) as ready:  # ModelReady answers what the other routes answer
                manager.is_ready("tiny", version)
            assert (ready.value.code, ready.value.message) == (info.value.code, info.value.message)
        assert manager.get("tiny", "01").version == "1"
        assert manager.is_ready("tiny", "01") and not manager.is_ready("tiny", "7")  # unknown: not ready
        assert not manager.is_ready("nope", "1")
        await manager.close(5)

    run(main())


def test_a_directory_named_with_non_ascii_digits_is_not_a_version(tmp_path: Path) -> None:
    model = tmp_path / "repo" / "tiny"
    write_tiny_onnx(model / "1" / "model.onnx")
    (model / "２").mkdir()
    write_tiny_onnx(model / "２" / "model.onnx", seed=2)
    assert discover_versions(model) == {"1": model / "1" / "model.onnx"}


def tiny_and_other(tmp_path: Path) -> tuple[Path, ModelManager]:
    """A manager of two configured models, "tiny" and "other", and tiny's file (to break it)."""
    model_file = write_tiny_onnx(tmp_path / "tiny.onnx")
    others = write_tiny_onnx(tmp_path / "other.onnx", seed=1)
    config = ServerConfig(
        models=(
            ModelSettings(name="tiny", path=str(model_file)),
            ModelSettings(name="other", path=str(others)),
        )
    )
    manager = ModelManager(config, ServerMetrics(registry=CollectorRegistry()))
    return model_file, manager


def test_a_failed_load_after_an_unload_makes_the_server_unready(tmp_path: Path) -> None:
    model_file, manager = tiny_and_other(tmp_path)

    async def main() -> None:
        await manager.start()
        await manager.unload("tiny")
        assert manager.all_ready()  # "other" is ready and nothing is meant to serve "tiny"
        model_file.write_bytes(b"no longer onnx")
        with pytest.raises(ServeError):
            await manager.load("tiny")
        assert not manager.all_ready()  # "tiny" is meant to be served again, and is not
        await manager.close(5)

    run(main())


def test_a_model_whose_load_failed_can_be_unloaded_and_the_server_is_ready_again(tmp_path: Path) -> None:
    # Triton's way out for an operator: unload the model that failed, and the others carry readiness.
    model_file, manager = tiny_and_other(tmp_path)

    async def main() -> None:
        await manager.start()
        model_file.write_bytes(b"no longer onnx")
        await manager.unload("tiny")
        with pytest.raises(ServeError):
            await manager.load("tiny")
        assert not manager.all_ready()
        await manager.unload("tiny")
        assert manager.all_ready()
        assert [(s.state, s.reason) for s in manager.statuses() if s.name == "tiny"] == [
            (ModelState.UNAVAILABLE, "unloaded")
        ]
        with pytest.raises(ServeError) as info:  # once: it is no longer loaded
            await manager.unload("tiny")
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        await manager.close(5)

    run(main())


def refused(manager: ModelManager, name: str, version: str) -> float:
    return manager.metrics.model(name, version).statistics().failures["unavailable"]


def test_refusals_for_no_ready_version_and_shutdown_are_counted_as_unavailable(repo: Path) -> None:
    async def main() -> None:
        manager = manager_for(repo, version_policy="all")
        await manager.start()
        await manager.unload("tiny")
        for version in ("", "1"):  # no version: counted under the one the request would have gone to
            with pytest.raises(ServeError) as info:
                manager.get("tiny", version)
            assert info.value.code == grpc.StatusCode.UNAVAILABLE and info.value.outcome == "unavailable"
        assert (refused(manager, "tiny", "1"), refused(manager, "tiny", "2")) == (1, 1)
        assert not manager.is_ready("tiny")  # readiness probes are not requests: not counted
        assert (refused(manager, "tiny", "1"), refused(manager, "tiny", "2")) == (1, 1)
        await manager.load("tiny")
        manager.stop_accepting()
        for version in ("", "1"):
            with pytest.raises(ServeError) as info:
                manager.get("tiny", version)
            assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert (refused(manager, "tiny", "1"), refused(manager, "tiny", "2")) == (2, 2)
        # A name or version the server does not know stays `not_found`: clients cannot invent labels.
        for name, version in (("nope", ""), ("tiny", "9")):
            with pytest.raises(ServeError):
                manager.get(name, version)
        assert manager.metrics.unknown_model_count == 2
        assert {m.version for m in manager.metrics.models()} == {"1", "2"}
        await manager.close(5)

    run(main())


def test_unknown_model_is_not_found_and_counted(repo: Path) -> None:
    async def main() -> None:
        manager = manager_for(repo)
        await manager.start()
        with pytest.raises(ServeError) as info:
            manager.get("nope")
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        assert "tiny" in info.value.message  # names what is served
        assert manager.metrics.unknown_model_count == 1
        manager.stop_accepting()
        with pytest.raises(ServeError) as info:
            manager.get("tiny")
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        await manager.close(5)

    run(main())


def test_unload_finishes_queued_requests_and_load_brings_the_model_back(tmp_path: Path) -> None:
    slow = write_tiny_onnx(tmp_path / "slow.onnx", slow_layers=20)
    config = ServerConfig(models=(ModelSettings(name="tiny", path=str(slow)),))
    one_row = config.models[0].batching.model_copy(update={"max_batch_size": 1})
    model = config.models[0].model_copy(update={"batching": one_row})
    config = config.model_copy(update={"models": (model,)})
    manager = ModelManager(config, ServerMetrics(registry=CollectorRegistry()))

    async def main() -> None:
        await manager.start()
        model = manager.get("tiny")
        # Hold the backend on its first batch so requests are certainly still queued when unload starts,
        # however fast the machine is.
        gate = threading.Event()
        backend = model.backends[0]
        run_batch = backend.infer

        def held(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            gate.wait(10.0)
            return run_batch(inputs)

        backend.infer = held  # type: ignore[method-assign]
        queued = [asyncio.ensure_future(model.infer({"input": X})) for _ in range(12)]
        for _ in range(200):
            if model.batcher.queue_depth > 0:
                break
            await asyncio.sleep(0.005)
        assert model.batcher.queue_depth > 0
        unloading = asyncio.ensure_future(manager.unload("tiny"))
        await asyncio.sleep(0.05)
        assert not unloading.done()  # unload waits for the requests it already accepted
        gate.set()
        await unloading
        results = await asyncio.gather(*queued)
        assert len(results) == 12  # none dropped
        assert not manager.is_ready("tiny")
        # As in Triton, a model unloaded on request is not meant to be served: the server stays ready.
        assert manager.all_ready()
        assert [(s.state, s.reason) for s in manager.statuses()] == [(ModelState.UNAVAILABLE, "unloaded")]
        with pytest.raises(ServeError) as info:
            manager.get("tiny")
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(ServeError) as info:
            await model.infer({"input": X})
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        await manager.load("tiny")
        assert manager.is_ready("tiny") and manager.all_ready()
        await logits(manager)
        await manager.close(5)

    run(main())


def test_reload_picks_up_a_new_version_while_serving(repo: Path, tmp_path: Path) -> None:
    async def main() -> None:
        manager = manager_for(repo)
        await manager.start()
        old = manager.get("tiny")
        in_flight = [asyncio.ensure_future(old.infer({"input": X})) for _ in range(8)]
        package(write_tiny_onnx(tmp_path / "v3.onnx", seed=3), repo, "tiny")
        await manager.load("tiny")
        assert manager.get("tiny").version == "3"
        assert len(await asyncio.gather(*in_flight)) == 8
        states = {s.version: s.state for s in manager.statuses()}
        assert states == {"2": ModelState.UNAVAILABLE, "3": ModelState.READY}
        await manager.close(5)

    run(main())


def test_a_broken_model_file_fails_the_load_with_its_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad" / "1" / "model.onnx"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not onnx")
    config = ServerConfig(models=(ModelSettings(name="bad", path=str(tmp_path / "bad")),))
    manager = ModelManager(config, ServerMetrics(registry=CollectorRegistry()))

    async def main() -> None:
        with pytest.raises(ServeError) as info:
            await manager.start()
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert "model.onnx" in info.value.message
        ((status),) = manager.statuses()
        assert status.state == ModelState.UNAVAILABLE and "model.onnx" in status.reason
        assert not manager.all_ready()
        with pytest.raises(ServeError) as info:
            manager.get("bad")
        assert info.value.code == grpc.StatusCode.UNAVAILABLE

    run(main())

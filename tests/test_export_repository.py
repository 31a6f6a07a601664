"""`resnet-serve package` lays out versioned models; `read_repository` reads them back without torch."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from resnet_serve.cli.main import main
from resnet_serve.formats.metadata import ModelMetadata, write
from resnet_serve.formats.repository import RepositoryError, read_model, read_repository


def _tiny_onnx(path: Path, precision: str = "fp32", classes: int = 3, side: int = 4) -> Path:
    """A small model with our metadata: input (batch, 1, side, side) → Flatten → Gemm → logits."""
    w = numpy_helper.from_array(np.ones((classes, side * side), dtype=np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"]),
            helper.make_node("Gemm", ["flat", "w"], ["logits"], transB=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, side, side])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    pre = {
        "color": "L",
        "resize": side,
        "crop": side,
        "interpolation": "bilinear",
        "mean": [0.5],
        "std": [0.25],
    }
    write(
        model,
        ModelMetadata("tiny", [f"c{i}" for i in range(classes)], pre, "ab" * 32, {"torch": "x"}, precision),
    )
    onnx.save(model, str(path))
    return path


def test_packaging_two_versions_gives_a_repository_the_reader_understands(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    fp32 = _tiny_onnx(tmp_path / "a.onnx")
    int8 = _tiny_onnx(tmp_path / "b.onnx", precision="int8-qdq-ort")
    assert (
        main(
            [
                "package",
                str(fp32),
                "--repo",
                str(repo),
                "--name",
                "tiny",
                "--max-batch-size",
                "16",
                "--max-queue-delay-us",
                "500",
                "--instances",
                "2",
            ]
        )
        == 0
    )
    # A second version keeps the model-level settings it does not override.
    assert main(["package", str(int8), "--repo", str(repo), "--name", "tiny"]) == 0
    [model] = read_repository(repo)
    assert model.name == "tiny" and model.backend == "onnxruntime" and model.platform == "onnxruntime_onnx"
    assert (model.input.name, model.input.dtype, model.input.shape) == ("input", "float32", [1, 4, 4])
    assert (model.output.name, model.output.shape) == ("logits", [3])
    assert model.labels == ["c0", "c1", "c2"]
    assert model.preprocess["crop"] == 4
    assert model.max_batch_size == 16 and model.instance_count == 2
    assert model.dynamic_batching.preferred_batch_sizes == [8, 16]
    assert model.dynamic_batching.max_queue_delay_us == 500
    assert [(v.version, v.precision) for v in model.versions] == [(1, "fp32"), (2, "int8-qdq-ort")]
    assert model.latest().version == 2
    stored = model.version_path(model.versions[1])
    assert stored == repo / "tiny" / "2" / "model.onnx"
    assert (
        hashlib.sha256(stored.read_bytes()).hexdigest()
        == model.versions[1].sha256
        == hashlib.sha256(int8.read_bytes()).hexdigest()
    )


def test_reader_rejects_a_version_file_that_is_missing(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert main(["package", str(_tiny_onnx(tmp_path / "a.onnx")), "--repo", str(repo), "--name", "m"]) == 0
    (repo / "m" / "1" / "model.onnx").unlink()
    with pytest.raises(RepositoryError, match="missing"):
        read_repository(repo)


def test_reader_rejects_a_config_that_is_not_json(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(RepositoryError, match="not valid JSON"):
        read_model(tmp_path / "m")


def test_reader_rejects_preferred_batch_sizes_above_the_maximum(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert main(["package", str(_tiny_onnx(tmp_path / "a.onnx")), "--repo", str(repo), "--name", "m"]) == 0
    cfg_path = repo / "m" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["dynamic_batching"]["preferred_batch_sizes"] = [64]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(RepositoryError, match="preferred_batch_sizes"):
        read_model(repo / "m")


def test_packaging_a_foreign_onnx_is_a_one_line_error_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _tiny_onnx(tmp_path / "a.onnx")
    proto = onnx.load(str(model))
    del proto.metadata_props[:]
    onnx.save(proto, str(model))
    repo = tmp_path / "repo"
    rc = main(["package", str(model), "--repo", str(repo), "--name", "m"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "no resnet_serve metadata" in err
    assert not (repo / "m").exists()


def test_packaging_a_model_with_other_labels_under_the_same_name_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    assert main(["package", str(_tiny_onnx(tmp_path / "a.onnx")), "--repo", str(repo), "--name", "m"]) == 0
    other = _tiny_onnx(tmp_path / "b.onnx", classes=5)
    rc = main(["package", str(other), "--repo", str(repo), "--name", "m"])
    assert rc == 1 and "does not fit model m" in capsys.readouterr().err
    assert not (repo / "m" / "2").exists()
    assert [v.version for v in read_model(repo / "m").versions] == [1]


def test_packaging_a_missing_file_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["package", str(tmp_path / "nope.onnx"), "--repo", str(tmp_path / "repo"), "--name", "m"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "nope.onnx" in err
    assert not (tmp_path / "repo" / "m").exists()


def test_the_reader_imports_neither_torch_nor_onnx() -> None:
    code = (
        "import sys, resnet_serve.formats.repository; "
        "sys.exit(1 if {'torch', 'onnx', 'onnxruntime'} & set(sys.modules) else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent).returncode == 0


def test_packaging_into_a_repo_that_is_a_file_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    repo.write_text("")
    rc = main(["package", str(_tiny_onnx(tmp_path / "a.onnx")), "--repo", str(repo), "--name", "m"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and str(repo) in err


@pytest.mark.parametrize("flag", ["--max-batch-size", "--instances"])
def test_packaging_with_a_zero_setting_is_refused_not_defaulted(
    flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    model = _tiny_onnx(tmp_path / "a.onnx")
    rc = main(["package", str(model), "--repo", str(repo), "--name", "m", flag, "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "must be ≥ 1" in err
    assert not (repo / "m").exists()


def test_packaging_without_batching_flags_writes_no_queue_delay(tmp_path: Path) -> None:
    """A lone request must not wait for a batch to fill unless asked: Triton's default, and serve's."""
    from google.protobuf import text_format

    from resnet_serve.formats.repository import TRITON_CONFIG_NAME
    from resnet_serve.protos import model_config_pb2

    onnx_file = _tiny_onnx(tmp_path / "a.onnx")
    for fmt in ("resnet-serve", "triton"):
        repo = tmp_path / fmt
        assert main(["package", str(onnx_file), "--repo", str(repo), "--name", "tiny", "--format", fmt]) == 0
        assert read_model(repo / "tiny").dynamic_batching.max_queue_delay_us == 0
        if fmt == "triton":
            text = (repo / "tiny" / TRITON_CONFIG_NAME).read_text()
            parsed = text_format.Parse(text, model_config_pb2.ModelConfig())
            assert parsed.dynamic_batching.max_queue_delay_microseconds == 0
            assert "max_queue_delay" not in text


@pytest.mark.parametrize("spelling", [["4", "8"], ["4,8"], ["4,", "8"], ["4, 8"]])
def test_package_takes_preferred_batch_sizes_as_serve_spells_them_or_space_separated(
    tmp_path: Path, spelling: list[str]
) -> None:
    repo = tmp_path / "repo"
    model = str(_tiny_onnx(tmp_path / "a.onnx"))
    argv = ["package", model, "--repo", str(repo), "--name", "m", "--preferred-batch-sizes", *spelling]
    assert main(argv) == 0
    assert list(read_model(repo / "m").dynamic_batching.preferred_batch_sizes) == [4, 8]


def test_package_refuses_a_preferred_batch_size_that_is_not_a_whole_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = str(_tiny_onnx(tmp_path / "a.onnx"))
    argv = ["package", model, "--repo", str(tmp_path / "r"), "--name", "m", "--preferred-batch-sizes", "4,x"]
    with pytest.raises(SystemExit):
        main(argv)
    assert "'x'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_package_takes_the_queue_delay_in_microseconds_or_as_serve_also_spells_it_in_milliseconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = str(_tiny_onnx(tmp_path / "a.onnx"))
    for name, flag, value in (("us", "--max-queue-delay-us", "1500"), ("ms", "--max-queue-delay-ms", "1.5")):
        assert main(["package", model, "--repo", str(tmp_path / name), "--name", "m", flag, value]) == 0
        assert read_model(tmp_path / name / "m").dynamic_batching.max_queue_delay_us == 1500
    both = ["--max-queue-delay-us", "1", "--max-queue-delay-ms", "1"]
    assert main(["package", model, "--repo", str(tmp_path / "both"), "--name", "m", *both]) != 0
    assert "give the queue delay once" in capsys.readouterr().err
    assert not (tmp_path / "both").exists()


def test_a_package_killed_mid_copy_leaves_no_version_folder_and_the_next_package_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from resnet_serve.export import package as packaging

    repo = tmp_path / "repo"
    model = _tiny_onnx(tmp_path / "a.onnx")

    def killed(src: str, dst: str) -> None:  # as SIGKILL mid-copy: part of the file, and no clean-up
        Path(dst).write_bytes(Path(src).read_bytes()[:10])
        raise SystemExit(137)

    monkeypatch.setattr(shutil, "copyfile", killed)
    monkeypatch.setattr(shutil, "rmtree", lambda *args, **kwargs: None)
    with pytest.raises(SystemExit):
        packaging.package(model, repo, "tiny")
    monkeypatch.undo()
    assert not (repo / "tiny" / "1").exists()  # only a hidden partial folder, which nothing reads
    assert main(["package", str(model), "--repo", str(repo), "--name", "tiny"]) == 0
    [packaged] = read_repository(repo)
    assert [v.version for v in packaged.versions] == [1]
    assert packaged.version_path(packaged.versions[0]).read_bytes() == model.read_bytes()


def test_a_version_folder_without_a_model_file_is_named_as_an_interrupted_package(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    (repo / "tiny" / "1").mkdir(parents=True)
    (repo / "tiny" / "1" / ".model.onnx.x.tmp").write_bytes(b"part")  # what an older version left
    assert main(["package", str(_tiny_onnx(tmp_path / "a.onnx")), "--repo", str(repo), "--name", "tiny"]) == 1
    assert "holds no model file (an interrupted package?): remove it" in capsys.readouterr().err

"""Triton's model configuration, config.pbtxt: read, checked, and mapped to what the server acts on.

    <repo>/<model>/config.pbtxt          Triton's ModelConfig message in protobuf text format
    <repo>/<model>/<version>/model.onnx  one directory per integer version, as in Triton

The file is parsed by protobuf's own text-format parser against Triton's schema (protos/model_config.proto,
vendored unchanged), so the syntax is exactly Triton's and a field Triton does not know is a parse error with
its line. Of the fields Triton does know, `USED` lists the ones the server acts on; `ignored_fields` names
every other one present (walked generically with ListFields, so a field added to Triton's schema later is
named too), for server/models/sources.py to warn about. The precedence against config.json and the server's
own settings is in docs/server.md ("Model configuration"); export/package.py writes the file
(`package --format triton`). It lives in server/, not formats/, because formats/ imports none of our layers
and the schema is generated code in protos/.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from google.protobuf import text_format
from google.protobuf.message import Message

from resnet_serve.formats.datatypes import BYTES
from resnet_serve.formats.repository import PLATFORMS as OUR_PLATFORMS
from resnet_serve.formats.repository import TRITON_CONFIG_NAME, RepositoryError
from resnet_serve.protos import model_config_pb2 as mc

# Triton's platform and backend names → ours.
PLATFORMS: Final = {triton: ours for ours, triton in OUR_PLATFORMS.items()}
TRITON_BACKENDS: Final = {"onnxruntime": "onnxruntime", "tensorrt": "tensorrt", "pytorch": "torch"}
# Triton's default model file name per backend (default_model_filename overrides it).
DEFAULT_FILES: Final = {"onnxruntime": "model.onnx", "tensorrt": "model.plan", "torch": "model.pt"}
_DEVICES: Final = {mc.ModelInstanceGroup.KIND_CPU: "cpu", mc.ModelInstanceGroup.KIND_GPU: "cuda"}

# The fields resnet-serve acts on, as dotted paths (a repeated field's elements share one path). Closed under
# prefixes: a message listed here has its own fields checked one by one.
USED: Final = frozenset(
    {
        "name",
        "platform",
        "backend",
        "max_batch_size",
        "default_model_filename",
        "version_policy",
        "version_policy.latest",
        "version_policy.latest.num_versions",
        "version_policy.all",
        "version_policy.specific",
        "version_policy.specific.versions",
        "input",
        "input.name",
        "input.data_type",
        "input.dims",
        "output",
        "output.name",
        "output.data_type",
        "output.dims",
        "output.label_filename",
        "instance_group",
        "instance_group.count",
        "instance_group.kind",
        "dynamic_batching",
        "dynamic_batching.preferred_batch_size",
        "dynamic_batching.max_queue_delay_microseconds",
        "dynamic_batching.default_queue_policy",
        "dynamic_batching.default_queue_policy.max_queue_size",
        "dynamic_batching.default_queue_policy.default_timeout_microseconds",
    }
)


@dataclass(frozen=True)
class TensorDecl:
    """One `input` or `output` entry: checked against the model's own tensors when it loads."""

    field: str  # where it is in the file: "input[0]"
    name: str
    datatype: str  # KServe name ("FP32", "BYTES"); "" when the entry states none
    dims: tuple[int, ...]  # without the batch dimension when max_batch_size > 0; -1: any size


@dataclass(frozen=True)
class TritonModelConfig:
    """What a config.pbtxt says that resnet-serve acts on. 0 / "" / () mean "not stated": the server's own
    settings apply there."""

    path: Path  # the config.pbtxt
    name: str
    backend: str  # ours: onnxruntime, tensorrt, torch
    max_batch_size: int  # Triton's: 0 means the model takes no batch dimension
    dynamic_batching: bool
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_us: int
    max_queue_size: int
    timeout_us: int
    instances: int
    device: str  # "cpu", "cuda"
    version_policy: str  # latest, all, specific; "" when not stated
    latest_versions: int
    versions: tuple[int, ...]
    inputs: tuple[TensorDecl, ...]
    outputs: tuple[TensorDecl, ...]
    model_filename: str
    labels: tuple[str, ...]  # from the first output's label_filename
    ignored: tuple[str, ...]  # fields present that resnet-serve does not act on, as dotted paths


def parse(text: str, where: str) -> mc.ModelConfig:
    """Triton's text format → ModelConfig; a syntax error or a field Triton does not know names its line."""
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as exc:
        raise RepositoryError(f"{where}:{exc}") from None


def ignored_fields(message: Message, prefix: str = "") -> list[str]:
    """Every field present in `message` outside USED, as a dotted path, each once, in file order. A map
    entry is named by its key (`parameters.KEY`); a message present but empty by its own path."""
    return list(dict.fromkeys(_ignored(message, prefix)))


def _ignored(message: Message, prefix: str) -> Iterator[str]:
    for field, value in message.ListFields():
        path = prefix + field.name
        if field.message_type is None:
            if path not in USED:
                yield path
        elif field.message_type.GetOptions().map_entry:
            if path not in USED:
                yield from (f"{path}.{key}" for key in value)
        else:
            elements = value if field.is_repeated else [value]
            below = [p for element in elements for p in _ignored(element, path + ".")]
            yield from below
            if not below and path not in USED:
                yield path


def read_config(model_dir: Path) -> TritonModelConfig:
    """The model directory's config.pbtxt, checked; every problem is one RepositoryError naming the field."""
    path = model_dir / TRITON_CONFIG_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{path}: cannot read ({exc})") from None
    return from_message(parse(text, str(path)), path)


def from_message(cfg: mc.ModelConfig, path: Path) -> TritonModelConfig:
    where = str(path)
    if cfg.name and cfg.name != path.parent.name:
        raise RepositoryError(f"{where}: name {cfg.name!r} differs from its directory {path.parent.name!r}")
    if cfg.max_batch_size < 0:
        raise RepositoryError(f"{where}: max_batch_size must be >= 0, got {cfg.max_batch_size}")
    db = cfg.dynamic_batching
    preferred = tuple(db.preferred_batch_size)
    bad = [b for b in preferred if not 1 <= b <= max(cfg.max_batch_size, 1)]
    if bad:
        raise RepositoryError(
            f"{where}: dynamic_batching.preferred_batch_size {bad} must lie in 1..max_batch_size "
            f"({cfg.max_batch_size})"
        )
    policy = cfg.dynamic_batching.default_queue_policy
    instances, device = _instances(cfg, where)
    backend = _backend(cfg, where)
    which = cfg.version_policy.WhichOneof("policy_choice") or ""
    versions = tuple(int(v) for v in cfg.version_policy.specific.versions)
    if which == "specific" and not versions:
        raise RepositoryError(f"{where}: version_policy.specific lists no versions")
    inputs = tuple(_tensor(t, f"input[{i}]", where) for i, t in enumerate(cfg.input))
    outputs = tuple(_tensor(t, f"output[{i}]", where) for i, t in enumerate(cfg.output))
    return TritonModelConfig(
        path=path,
        name=cfg.name or path.parent.name,
        backend=backend,
        max_batch_size=cfg.max_batch_size,
        dynamic_batching=cfg.HasField("dynamic_batching"),
        preferred_batch_sizes=preferred,
        max_queue_delay_us=db.max_queue_delay_microseconds,
        max_queue_size=policy.max_queue_size,
        timeout_us=policy.default_timeout_microseconds,
        instances=instances,
        device=device,
        version_policy=which,
        latest_versions=max(1, cfg.version_policy.latest.num_versions),
        versions=versions,
        inputs=inputs,
        outputs=outputs,
        model_filename=cfg.default_model_filename or DEFAULT_FILES.get(backend, ""),
        labels=_labels(cfg, path),
        ignored=tuple(ignored_fields(cfg)),
    )


def _backend(cfg: mc.ModelConfig, where: str) -> str:
    by_platform = PLATFORMS.get(cfg.platform, "") if cfg.platform else ""
    by_backend = TRITON_BACKENDS.get(cfg.backend, "") if cfg.backend else ""
    if cfg.platform and not by_platform:
        raise RepositoryError(
            f"{where}: platform {cfg.platform!r} is not served here (served: {', '.join(PLATFORMS)})"
        )
    if cfg.backend and not by_backend:
        raise RepositoryError(
            f"{where}: backend {cfg.backend!r} is not served here (served: {', '.join(TRITON_BACKENDS)})"
        )
    if by_platform and by_backend and by_platform != by_backend:
        raise RepositoryError(f"{where}: platform {cfg.platform!r} and backend {cfg.backend!r} disagree")
    return by_backend or by_platform


def _instances(cfg: mc.ModelConfig, where: str) -> tuple[int, str]:
    """Total instances over the groups (Triton's count 0 means 1) and the one device they share."""
    if not cfg.instance_group:
        return 0, ""
    kinds = {g.kind for g in cfg.instance_group}
    if mc.ModelInstanceGroup.KIND_MODEL in kinds:
        raise RepositoryError(f"{where}: instance_group.kind KIND_MODEL is not served here (CPU or GPU only)")
    stated = kinds - {mc.ModelInstanceGroup.KIND_AUTO}
    if len(stated) > 1:
        raise RepositoryError(
            f"{where}: instance_group mixes KIND_CPU and KIND_GPU (a model runs on one device)"
        )
    if any(g.count < 0 for g in cfg.instance_group):
        raise RepositoryError(f"{where}: instance_group.count must be >= 0")
    device = _DEVICES[stated.pop()] if stated else ""
    return sum(max(1, g.count) for g in cfg.instance_group), device


def _tensor(t: mc.ModelInput | mc.ModelOutput, field: str, where: str) -> TensorDecl:
    if not t.name:
        raise RepositoryError(f"{where}: {field}.name is empty")
    enum_name = mc.DataType.Name(t.data_type)
    datatype = "" if t.data_type == mc.TYPE_INVALID else enum_name.removeprefix("TYPE_")
    if datatype == "STRING":
        datatype = BYTES
    if any(d < -1 or d == 0 for d in t.dims):
        raise RepositoryError(f"{where}: {field}.dims {list(t.dims)} must be positive or -1")
    return TensorDecl(field, t.name, datatype, tuple(int(d) for d in t.dims))


def _labels(cfg: mc.ModelConfig, path: Path) -> tuple[str, ...]:
    for i, out in enumerate(cfg.output):
        if out.label_filename:
            file = path.parent / out.label_filename
            if Path(out.label_filename).name != out.label_filename:
                raise RepositoryError(f"{path}: output[{i}].label_filename must name a file beside it")
            try:
                lines = file.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise RepositoryError(
                    f"{path}: output[{i}].label_filename: cannot read {file} ({exc})"
                ) from None
            return tuple(line.strip() for line in lines if line.strip())
    return ()

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
# Execution instances one model version may have (each is a session, its memory and a thread): far above what
# a machine runs well, far below what exhausts its memory (a load override's count of 2e9 took 22 GiB within
# a minute before this limit).
MAX_INSTANCES: Final = 128
# A model_warmup sample runs at load, before the model is ready: its data is made in memory and run `count`
# times on each instance. Far above any warmup's needs, far below a load that never ends or exhausts memory.
MAX_WARMUP_COUNT: Final = 1000
MAX_WARMUP_ELEMENTS: Final = 1 << 28  # one input's batch_size × its dims (1 GiB of FP32)

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
        "input.format",
        "input.reshape",
        "input.reshape.shape",
        "output",
        "output.name",
        "output.data_type",
        "output.dims",
        "output.reshape",
        "output.reshape.shape",
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
        "model_warmup",
        "model_warmup.name",
        "model_warmup.batch_size",
        "model_warmup.count",
        "model_warmup.inputs",
    }
)
WARMUP_FOLDER: Final = "warmup"  # input_data_file is a file in this folder of the model directory (Triton's)
WARMUP_KINDS: Final = ("zero_data", "random_data", "input_data_file")


@dataclass(frozen=True)
class TensorDecl:
    """One `input` or `output` entry: checked against the model's own tensors when it loads."""

    field: str  # where it is in the file: "input[0]"
    name: str
    datatype: str  # KServe name ("FP32", "BYTES"); "" when the entry states none
    dims: tuple[int, ...]  # without the batch dimension when max_batch_size > 0; -1: any size
    reshape: tuple[int, ...] | None = None  # `reshape.shape`: the model's own dims, when they differ
    format: str = ""  # inputs: "FORMAT_NCHW" or "FORMAT_NHWC" when stated


@dataclass(frozen=True)
class WarmupInput:
    """One input of a `model_warmup` sample: its data is zeros, random bytes, or a file's bytes."""

    name: str
    datatype: str  # KServe name
    dims: tuple[int, ...]  # without the batch dimension when max_batch_size > 0
    kind: str  # one of WARMUP_KINDS
    file: Path | None = None  # input_data_file, resolved inside <model>/warmup/
    file_name: str = ""  # input_data_file as config.pbtxt states it


@dataclass(frozen=True)
class WarmupSample:
    """One `model_warmup` entry: `batch_size` rows of its inputs, run `count` times on each instance."""

    field: str  # "model_warmup[0]"
    name: str
    batch_size: int
    count: int
    inputs: tuple[WarmupInput, ...]


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
    warmup: tuple[WarmupSample, ...] = ()  # model_warmup, in file order (batch_size 0 samples left out)


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
    filename = cfg.default_model_filename
    if filename and (Path(filename).name != filename or filename in (".", "..") or "\x00" in filename):
        raise RepositoryError(
            f"{where}: default_model_filename {filename[:300]!r} must be a file name in each version "
            "directory"
        )
    backend = _backend(cfg, where)
    which = cfg.version_policy.WhichOneof("policy_choice") or ""
    versions = tuple(int(v) for v in cfg.version_policy.specific.versions)
    if which == "specific" and not versions:
        raise RepositoryError(f"{where}: version_policy.specific lists no versions")
    inputs = tuple(_tensor(t, f"input[{i}]", where) for i, t in enumerate(cfg.input))
    outputs = tuple(_tensor(t, f"output[{i}]", where) for i, t in enumerate(cfg.output))
    warmup = tuple(
        _warmup(w, f"model_warmup[{i}]", cfg.max_batch_size, path)
        for i, w in enumerate(cfg.model_warmup)
        if w.batch_size > 0  # Triton skips a sample of batch size 0
    )
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
        warmup=warmup,
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
    total = sum(max(1, g.count) for g in cfg.instance_group)
    if total > MAX_INSTANCES:
        raise RepositoryError(
            f"{where}: instance_group asks for {total} instances; at most {MAX_INSTANCES} per model version"
        )
    return total, device


def _datatype(data_type: int) -> str:
    """Triton's DataType enum as our KServe name ("" for TYPE_INVALID, BYTES for TYPE_STRING)."""
    if data_type == mc.TYPE_INVALID:
        return ""
    name = mc.DataType.Name(data_type).removeprefix("TYPE_")
    return BYTES if name == "STRING" else name


def _tensor(t: mc.ModelInput | mc.ModelOutput, field: str, where: str) -> TensorDecl:
    if not t.name:
        raise RepositoryError(f"{where}: {field}.name is empty")
    datatype = _datatype(t.data_type)
    if any(d < -1 or d == 0 for d in t.dims):
        raise RepositoryError(f"{where}: {field}.dims {list(t.dims)} must be positive or -1")
    dims = tuple(int(d) for d in t.dims)
    reshape = tuple(int(d) for d in t.reshape.shape) if t.HasField("reshape") else None
    if reshape is not None:
        if any(d < -1 or d == 0 for d in reshape):
            raise RepositoryError(f"{where}: {field}.reshape.shape {list(reshape)} must be positive or -1")
        if -1 not in dims and -1 not in reshape and _count(dims) != _count(reshape):
            raise RepositoryError(
                f"{where}: {field}.reshape.shape {list(reshape)} holds {_count(reshape)} elements but dims "
                f"{list(dims)} hold {_count(dims)}"
            )
        if (-1 in dims) != (-1 in reshape):
            raise RepositoryError(
                f"{where}: {field}.dims {list(dims)} and reshape.shape {list(reshape)} must both have a "
                "variable dimension (-1) or neither"
            )
    fmt = ""
    if isinstance(t, mc.ModelInput) and t.format != mc.ModelInput.FORMAT_NONE:
        fmt = mc.ModelInput.Format.Name(t.format)
        if len(dims) != 3:
            raise RepositoryError(
                f"{where}: {field}.format {fmt} needs 3 dims (C, H, W or H, W, C without the batch "
                f"dimension), got {list(dims)}"
            )
    return TensorDecl(field, t.name, datatype, dims, reshape, fmt)


def _count(dims: tuple[int, ...]) -> int:
    count = 1
    for d in dims:
        count *= d
    return count


def _warmup(w: mc.ModelWarmup, field: str, max_batch_size: int, path: Path) -> WarmupSample:
    """One model_warmup entry, checked as Triton checks it (its messages), its files resolved."""
    where = f"{path}: {field}"
    if max_batch_size == 0 and w.batch_size != 1:
        raise RepositoryError(
            f"{where}.batch_size must be 1 for a model without batching, got {w.batch_size}"
        )
    if max_batch_size > 0 and w.batch_size > max_batch_size:
        raise RepositoryError(f"{where}.batch_size {w.batch_size} is over max_batch_size {max_batch_size}")
    if not w.inputs:
        raise RepositoryError(f"{where} ({w.name!r}) gives no inputs")
    if w.count > MAX_WARMUP_COUNT:
        raise RepositoryError(f"{where} ({w.name!r}): count {w.count} is over {MAX_WARMUP_COUNT}")
    inputs: list[WarmupInput] = []
    for name in w.inputs:  # file order is lost in a map; sorted for a stable order
        given = w.inputs[name]
        kind = given.WhichOneof("input_data_type")
        if kind is None:
            raise RepositoryError(
                f"{where}: warmup setting expects input '{name}' to have input_data_type set "
                f"(one of {', '.join(WARMUP_KINDS)})"
            )
        if -1 in given.dims or any(d < 0 for d in given.dims):
            raise RepositoryError(
                f"{where}: warmup setting expects all variable-size dimensions are specified for input "
                f"'{name}', got dims {list(given.dims)}"
            )
        datatype = _datatype(given.data_type)
        if not datatype:
            raise RepositoryError(f"{where}: input '{name}' needs a data_type")
        file = None
        if kind == "input_data_file":
            file = _warmup_file(given.input_data_file, f"{where}: input '{name}'", path.parent)
        dims = tuple(int(d) for d in given.dims)
        elements = max(1, w.batch_size) * _count(dims)
        if elements > MAX_WARMUP_ELEMENTS:
            raise RepositoryError(
                f"{where} ({w.name!r}) would make {elements} elements of input '{name}' "
                f"(batch_size × dims); at most {MAX_WARMUP_ELEMENTS}"
            )
        inputs.append(WarmupInput(name, datatype, dims, kind, file, given.input_data_file))
    inputs.sort(key=lambda i: i.name)
    return WarmupSample(field, w.name, w.batch_size, max(1, w.count), tuple(inputs))


def _warmup_file(name: str, where: str, model_dir: Path) -> Path:
    folder = model_dir / WARMUP_FOLDER
    relative = Path(name)
    if not name or relative.is_absolute() or ".." in relative.parts:
        raise RepositoryError(f"{where}: input_data_file {name!r} must name a file in {folder}")
    file = folder / relative
    if not file.is_file():
        raise RepositoryError(f"{where}: input_data_file {file} does not exist")
    return file


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

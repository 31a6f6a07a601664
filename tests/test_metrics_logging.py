"""Structured logs: the request id reaches every line logged while handling a request, JSON lines parse,
and nothing is logged per request at the default level."""

from __future__ import annotations

import argparse
import io
import json
import logging
from collections.abc import Iterator

import pytest

from resnet_serve.cli.commands.serve import add_logging_arguments
from resnet_serve.server.observability.logging import (
    MAX_REQUEST_ID_LEN,
    access_log,
    configure_logging,
    current_request_id,
    request_id_from_metadata,
    request_id_metadata,
    request_scope,
    resolve_request_id,
)


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.usefixtures("restore_root_logging")
def test_json_lines_carry_the_request_id_only_inside_its_scope() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    log = logging.getLogger("resnet_serve.test")
    with request_scope("req-42"):
        log.info("decoded %d bytes", 123, extra={"model": "resnet20"})
    log.warning("outside")
    inside, outside = json_lines(out)
    assert inside["request_id"] == "req-42"
    assert inside["msg"] == "decoded 123 bytes"
    assert inside["model"] == "resnet20"
    assert inside["level"] == "info"
    assert "request_id" not in outside
    assert current_request_id() is None


@pytest.mark.usefixtures("restore_root_logging")
def test_json_lines_include_the_traceback_of_logged_exceptions() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    try:
        raise ValueError("corrupt png")
    except ValueError:
        logging.getLogger("resnet_serve.test").exception("preprocessing failed")
    (line,) = json_lines(out)
    assert "ValueError: corrupt png" in str(line["exc"])


@pytest.mark.usefixtures("restore_root_logging")
def test_access_log_is_silent_at_info_and_one_line_per_request_at_debug() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    access_log("resnet20", "1", "success", 0.0042, batch_size=3)
    assert out.getvalue() == ""

    configure_logging("debug", "json", stream=out)
    with request_scope("abc"):
        access_log("resnet20", "1", "success", 0.0042, batch_size=3)
    (line,) = json_lines(out)
    assert line["request_id"] == "abc"
    assert (line["outcome"], line["duration_ms"], line["batch_size"]) == ("success", 4.2, 3)


@pytest.mark.usefixtures("restore_root_logging")
def test_text_lines_show_the_request_id_and_the_extra_fields() -> None:
    out = io.StringIO()
    configure_logging("debug", "text", stream=out)
    with request_scope("abc"):
        access_log("resnet20", "1", "invalid_input", 0.001, detail="not an image")
    line = out.getvalue()
    assert "[abc]" in line
    assert "outcome=invalid_input" in line
    assert "detail=not an image" in line
    assert "batch_size" not in line  # fields that were not given are left out


@pytest.mark.usefixtures("restore_root_logging")
def test_a_worker_process_marks_its_lines_with_its_place_in_both_formats() -> None:
    # Both workers log "received SIGTERM: draining", "stopped": which said what must show.
    out = io.StringIO()
    configure_logging("info", "json", stream=out, worker=1)
    logging.getLogger("resnet_serve.test").info("stopped")
    [line] = json_lines(out)
    assert (line["msg"], line["worker"]) == ("stopped", 1)
    text = io.StringIO()
    configure_logging("info", "text", stream=text, worker=0)
    logging.getLogger("resnet_serve.test").info("stopped")
    assert text.getvalue().rstrip().endswith("stopped worker=0")
    plain = io.StringIO()
    configure_logging("info", "text", stream=plain)  # one process, or the engine: no mark
    logging.getLogger("resnet_serve.test").info("stopped")
    assert "worker" not in plain.getvalue()


def test_client_request_ids_are_used_when_printable_and_short_else_replaced() -> None:
    assert resolve_request_id("from-metadata", "from-field") == "from-metadata"
    assert resolve_request_id(None, "from-field") == "from-field"
    assert resolve_request_id("", "from-field") == "from-field"
    for bad in ("line\nbreak", "x" * (MAX_REQUEST_ID_LEN + 1), "naïve"):
        made = resolve_request_id(bad)
        assert made != bad and len(made) == 32
    assert resolve_request_id() != resolve_request_id()


def test_request_id_is_read_from_and_written_to_grpc_metadata() -> None:
    assert request_id_from_metadata((("user-agent", "grpc"), ("x-request-id", "abc"))) == "abc"
    assert request_id_from_metadata((("x-request-id", b"bin"),)) == "bin"
    assert request_id_from_metadata(None) is None
    assert request_id_from_metadata((("user-agent", "grpc"),)) is None
    # What the server sends back is what it would read from a client.
    assert request_id_from_metadata(request_id_metadata("abc")) == "abc"


def test_bad_format_or_level_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="text, json"):
        configure_logging("info", "xml")
    with pytest.raises(ValueError, match="debug, info"):
        configure_logging("loud", "text")


def test_cli_flags_default_to_text_and_info_and_follow_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser = argparse.ArgumentParser()
    add_logging_arguments(parser)
    args = parser.parse_args([])
    assert (args.log_format, args.log_level) == ("text", "info")
    assert parser.parse_args(["--log-level", "DEBUG"]).log_level == "debug"
    monkeypatch.setenv("RESNET_SERVE_LOG_FORMAT", "json")
    parser = argparse.ArgumentParser()
    add_logging_arguments(parser)
    assert parser.parse_args([]).log_format == "json"


@pytest.mark.usefixtures("restore_root_logging")
def test_debug_applies_to_our_loggers_and_libraries_stay_at_warning() -> None:
    """--log-level debug must not be flooded by Pillow's line per PNG chunk (nor grpc's, aiohttp's)."""
    from PIL import Image

    out = io.StringIO()
    configure_logging("debug", "json", stream=out)
    buf = io.BytesIO()
    Image.new("L", (4, 4)).save(buf, "PNG")
    Image.open(io.BytesIO(buf.getvalue())).load()  # Pillow logs STREAM/chunk lines at DEBUG
    logging.getLogger("resnet_serve.server.app").debug("ours at debug")
    logging.getLogger("PIL.PngImagePlugin").warning("theirs at warning")
    logging.getLogger("aiohttp.access").info("theirs at info")
    assert [(x["logger"], x["msg"]) for x in json_lines(out)] == [
        ("resnet_serve.server.app", "ours at debug"),
        ("PIL.PngImagePlugin", "theirs at warning"),
    ]
    out.truncate(0)
    out.seek(0)
    configure_logging("error", "json", stream=out)  # a level above WARNING holds for libraries too
    logging.getLogger("PIL.PngImagePlugin").warning("theirs at warning")
    logging.getLogger("resnet_serve.server.app").warning("ours at warning")
    assert json_lines(out) == []

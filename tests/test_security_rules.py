"""The security contracts without a server: restricted groups (Triton's syntax and RPC table), bearer
tokens, the security options' validation, model control mode, transport options and the TLS file checks."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from tls_certs import make_pki

from resnet_serve.cli.commands.serve import configure_parser
from resnet_serve.protos import classifier_pb2, grpc_service_pb2
from resnet_serve.server.config import ConfigError, ServerConfig, load_config
from resnet_serve.server.security import restrict
from resnet_serve.server.security.access import RESTRICTED, UNAUTHENTICATED, AccessRules
from resnet_serve.server.security.files import SecurityError
from resnet_serve.server.security.restrict import RestrictedGroups, http_group, parse_restriction
from resnet_serve.server.security.tls import TLSFiles, read_tls, server_ssl_context
from resnet_serve.server.security.tokens import TokenSet, bearer_token, read_tokens
from resnet_serve.server.transport import grpc_options

SECRET = "s3cret-value-never-echoed"
TOKEN = "t" * 32


def parse(*argv: str) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return vars(parser.parse_args([*argv, "--model", "a=a.onnx"]))


# ------------------------------------------------------------------------------------- restricted groups


def test_every_rpc_the_server_registers_has_a_protocol_group() -> None:
    from grpc_health.v1 import health_pb2
    from grpc_reflection.v1alpha import reflection_pb2

    methods = [
        f"/{service.full_name}/{method.name}"
        for file in (classifier_pb2, grpc_service_pb2, health_pb2, reflection_pb2)
        for service in file.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]
    assert len(methods) > 20
    missing = [m for m in methods if restrict.grpc_group(m) is None]
    assert missing == []


def test_groups_follow_triton_for_kserve_and_put_the_image_api_with_inference_and_metadata() -> None:
    group = restrict.grpc_group
    assert group("/inference.GRPCInferenceService/RepositoryModelUnload") == "model-repository"
    assert group("/inference.GRPCInferenceService/ModelInfer") == "inference"
    assert group("/inference.GRPCInferenceService/ModelStatistics") == "statistics"
    assert group("/inference.GRPCInferenceService/ModelConfig") == "model-config"
    assert group("/inference.GRPCInferenceService/ServerReady") == "health"
    assert group("/inference.GRPCInferenceService/CudaSharedMemoryRegister") == "shared-memory"
    assert group("/resnetserve.v1.ImageClassifier/ClassifyStream") == "inference"
    assert group("/resnetserve.v1.ImageClassifier/ListModels") == "metadata"
    assert group("/grpc.health.v1.Health/Check") == "health"
    assert group("/no.Such/Method") is None


def test_http_paths_map_to_the_same_groups() -> None:
    assert http_group("/v2/health/ready") == "health"
    assert http_group("/v2/models/digits/versions/1/ready") == "health"
    assert http_group("/v2/models/digits/infer") == "inference"
    assert http_group("/v2/models/digits/versions/2/infer?x=1") == "inference"
    assert http_group("/v2/models/digits/config") == "model-config"
    assert http_group("/v2/models/digits/stats") == "statistics"
    assert http_group("/v2/models/stats") == "statistics"
    assert http_group("/v2/repository/models/digits/unload") == "model-repository"
    assert http_group("/v2/repository/index") == "model-repository"
    assert http_group("/v2/systemsharedmemory/status") == "shared-memory"
    assert http_group("/v2/logging") == "logging"
    assert http_group("/v2/trace/setting") == "trace"
    assert http_group("/v2") == "metadata"
    assert http_group("/v2/models/digits/versions/1") == "metadata"
    assert http_group("/metrics") is None


def test_the_triton_syntax_parses_and_bad_specs_say_why_without_the_value() -> None:
    r = parse_restriction(f"model-repository,statistics:Admin-Key={SECRET}")
    assert r.groups == {"model-repository", "statistics"}
    assert (r.key, r.grpc_header, r.http_header) == (
        "admin-key",
        "triton-grpc-protocol-admin-key",
        "admin-key",
    )
    assert SECRET not in repr(r)
    for spec, needle in (
        (f"model-repository={SECRET}", "expected"),
        (f"bogus:k={SECRET}", "unknown protocol group"),
        (f"health:k={SECRET}", "probes"),
        (f":k={SECRET}", "no protocol group"),
        (f"inference:bad key={SECRET}", "header key"),
        ("inference:k=", "empty"),
    ):
        with pytest.raises(ValueError, match=needle) as info:
            parse_restriction(spec)
        assert SECRET not in str(info.value)


def test_a_group_restricted_twice_is_refused_as_in_triton() -> None:
    with pytest.raises(ConfigError, match="more than once"):
        load_config(
            parse(
                "--grpc-restricted-protocol", "inference:a=1", "--grpc-restricted-protocol", "inference:b=2"
            ),
            {},
        )


def test_restricted_protocol_is_repeatable_as_a_flag_and_takes_several_in_env_and_toml(
    tmp_path: Path,
) -> None:
    flags = parse(
        "--grpc-restricted-protocol", "inference:a=1", "--grpc-restricted-protocol", "statistics:b=2"
    )
    assert [r.key for r in load_config(flags, {}).grpc_restricted_protocol] == ["a", "b"]
    env = {"RESNET_SERVE_GRPC_RESTRICTED_PROTOCOL": "inference:a=1;model-repository,statistics:b=2"}
    assert len(load_config(parse(), env).grpc_restricted_protocol) == 2
    toml = tmp_path / "serve.toml"
    toml.write_text('[server]\ngrpc_restricted_protocol = ["inference:a=1", "trace:b=2"]\n')
    config = load_config(parse("--config", str(toml)), {})
    assert [sorted(r.groups) for r in config.grpc_restricted_protocol] == [["inference"], ["trace"]]


def test_a_restricted_group_needs_the_exact_header_value_and_health_stays_open() -> None:
    groups = RestrictedGroups([parse_restriction(f"model-repository,inference:admin={SECRET}")])
    rules = AccessRules(groups, TokenSet())
    unload = "/inference.GRPCInferenceService/RepositoryModelUnload"
    header = "triton-grpc-protocol-admin"
    assert rules.grpc_refusal(unload, ()) is RESTRICTED
    assert rules.grpc_refusal(unload, ((header, SECRET + "x"),)) is RESTRICTED
    assert rules.grpc_refusal(unload, ((header, SECRET[:-1]),)) is RESTRICTED
    assert rules.grpc_refusal(unload, (("admin", SECRET),)) is RESTRICTED  # the HTTP form is not the gRPC one
    assert rules.grpc_refusal(unload, ((header, SECRET),)) is None
    assert rules.grpc_refusal("/inference.GRPCInferenceService/ServerMetadata", ()) is None  # not restricted
    assert rules.grpc_refusal("/grpc.health.v1.Health/Check", ()) is None
    assert rules.grpc_refusal("/inference.GRPCInferenceService/ServerReady", ()) is None
    assert groups.allowed("model-repository", {"admin": SECRET}, grpc=False)
    assert not groups.allowed("model-repository", {header: SECRET}, grpc=False)
    assert RESTRICTED.code.name == "UNAVAILABLE" and "admin" not in RESTRICTED.message


# ------------------------------------------------------------------------------------------------ tokens


def test_bearer_tokens_guard_the_image_api_only() -> None:
    rules = AccessRules(RestrictedGroups(), TokenSet([TOKEN]))
    classify = "/resnetserve.v1.ImageClassifier/Classify"
    assert rules.grpc_refusal(classify, ()) is UNAUTHENTICATED
    assert rules.grpc_refusal(classify, (("authorization", "Bearer " + TOKEN[:-1] + "u"),)) is UNAUTHENTICATED
    assert rules.grpc_refusal(classify, (("authorization", "Basic " + TOKEN),)) is UNAUTHENTICATED
    assert rules.grpc_refusal(classify, (("authorization", "bearer " + TOKEN),)) is None
    assert (
        rules.grpc_refusal(
            "/resnetserve.v1.ImageClassifier/ListModels", (("authorization", f"Bearer {TOKEN}"),)
        )
        is None
    )
    assert rules.grpc_refusal("/inference.GRPCInferenceService/ModelInfer", ()) is None
    assert rules.grpc_refusal("/grpc.health.v1.Health/Check", ()) is None
    assert UNAUTHENTICATED.code.name == "UNAUTHENTICATED"


def test_bearer_header_parsing() -> None:
    assert bearer_token("Bearer abc") == b"abc"
    assert bearer_token(b"BEARER  abc ") == b"abc"
    assert bearer_token("Bearer") is None
    assert bearer_token("Token abc") is None
    assert bearer_token(None) is None


def test_token_files_hold_several_tokens_and_refuse_short_ones_without_echoing_them(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# rotation: old, then new\n{TOKEN}\n\n{'n' * 40}\n")
    path.chmod(0o600)
    tokens = read_tokens(str(path), env_token="e" * 20)
    assert len(tokens) == 3 and TOKEN not in repr(tokens)
    for token in (TOKEN, "n" * 40, "e" * 20):
        assert tokens.allows(f"Bearer {token}")
    assert not tokens.allows("Bearer " + "x" * 32)
    path.write_text("short-token\n")
    with pytest.raises(SecurityError, match="at least 16") as info:
        read_tokens(str(path))
    assert "short-token" not in str(info.value)
    path.write_text("# nothing\n")
    with pytest.raises(SecurityError, match="holds no token"):
        read_tokens(str(path))
    with pytest.raises(SecurityError, match="no such file"):
        read_tokens(str(tmp_path / "missing"))


def test_the_env_token_is_read_by_the_config_and_hidden_from_its_repr() -> None:
    config = load_config(parse(), {"RESNET_SERVE_AUTH_TOKEN": TOKEN})
    assert config.auth_token == TOKEN and TOKEN not in repr(config)
    with pytest.raises(ConfigError, match="at least 16"):
        load_config(parse(), {"RESNET_SERVE_AUTH_TOKEN": "short"})


# -------------------------------------------------------------------------------- TLS options and files


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--grpc-use-ssl", "true"), "needs both grpc_server_cert and grpc_server_key"),
        (("--grpc-server-cert", "c.pem", "--grpc-server-key", "k.pem"), "grpc_use_ssl is false"),
        (("--grpc-use-ssl-mutual", "true"), "grpc_use_ssl is false"),
        (
            (
                "--grpc-use-ssl",
                "true",
                "--grpc-server-cert",
                "c",
                "--grpc-server-key",
                "k",
                "--grpc-use-ssl-mutual",
                "true",
            ),
            "needs grpc_root_cert",
        ),
        (("--grpc-max-concurrent-streams", "0"), "grpc_max_concurrent_streams must be >= 1"),
        (("--grpc-max-message-bytes", "1000"), "must exceed max_image_bytes"),
    ],
)
def test_security_option_combinations_are_checked(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(parse(*argv), {})
    assert message in str(info.value)


def test_model_control_mode_defaults_to_none_and_reads_tritons_spelling() -> None:
    assert load_config(parse(), {}).model_control_mode == "none"
    assert load_config(parse("--model-control-mode", "EXPLICIT"), {}).model_control_mode == "explicit"
    # Triton's poll mode is served now (server/models/poll.py); it needs a repository to poll.
    with pytest.raises(ConfigError, match="poll needs a model repository to poll"):
        load_config(parse(), {"RESNET_SERVE_MODEL_CONTROL_MODE": "poll"})
    env = {"RESNET_SERVE_MODEL_CONTROL_MODE": "POLL", "RESNET_SERVE_MODEL_REPOSITORY": "models"}
    assert load_config(parse(), env).model_control_mode == "poll"


def test_tls_files_are_checked_with_messages_naming_the_option(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    good = TLSFiles(str(pki.server_cert), str(pki.server_key), str(pki.ca), mutual=True)
    assert read_tls(good).root is not None
    assert server_ssl_context(good).verify_mode.name == "CERT_REQUIRED"
    cases = [
        (TLSFiles(str(tmp_path / "none.pem"), str(pki.server_key)), "--grpc-server-cert .*no such file"),
        (TLSFiles(str(pki.server_cert), str(pki.client_key)), "does not match the certificate"),
        (TLSFiles(str(pki.server_key), str(pki.server_key)), "--grpc-server-cert .*holds no PEM certificate"),
        (TLSFiles(str(pki.server_cert), str(pki.ca)), "--grpc-server-key .*holds no PEM private key"),
        (
            TLSFiles(str(pki.server_cert), str(pki.server_key), str(pki.server_key)),
            "--grpc-root-cert .*no PEM",
        ),
        (TLSFiles(str(tmp_path), str(pki.server_key)), "not a regular file"),
    ]
    for files, message in cases:
        with pytest.raises(SecurityError, match=message):
            read_tls(files)


def test_transport_options_carry_the_keepalive_enforcement_and_limits() -> None:
    options = dict(grpc_options(ServerConfig(grpc_max_concurrent_streams=7, grpc_http2_max_ping_strikes=3)))
    assert options["grpc.max_concurrent_streams"] == 7
    assert options["grpc.http2.max_ping_strikes"] == 3
    assert options["grpc.http2.min_recv_ping_interval_without_data_ms"] == 300_000
    assert options["grpc.keepalive_permit_without_calls"] == 0
    assert options["grpc.max_receive_message_length"] == 64 * 1024 * 1024
    big = dict(grpc_options(ServerConfig(grpc_max_message_bytes=100 * 1024 * 1024)))
    assert big["grpc.max_receive_message_length"] == 100 * 1024 * 1024


def test_a_key_or_token_file_others_can_read_is_used_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens"
    path.write_text(TOKEN + "\n")
    path.chmod(0o644)
    with caplog.at_level("WARNING"):
        assert len(read_tokens(str(path))) == 1
    assert "can be read by other users" in caplog.text and TOKEN not in caplog.text


def test_max_connection_age_is_off_by_default_and_read_from_flags_and_env() -> None:
    assert not any("connection_age" in key for key, _ in grpc_options(load_config(parse(), {})))
    config = load_config(parse("--grpc-max-connection-age-ms", "300000"), {})
    options = dict(grpc_options(config))
    assert options["grpc.max_connection_age_ms"] == 300_000
    assert "grpc.max_connection_age_grace_ms" not in options  # 0: gRPC's own default, no limit
    env = {
        "RESNET_SERVE_GRPC_MAX_CONNECTION_AGE_MS": "300000",
        "RESNET_SERVE_GRPC_MAX_CONNECTION_AGE_GRACE_MS": "30000",
    }
    assert dict(grpc_options(load_config(parse(), env)))["grpc.max_connection_age_grace_ms"] == 30_000
    with pytest.raises(
        ConfigError, match="grpc_max_connection_age_grace_ms needs grpc_max_connection_age_ms"
    ):
        load_config(parse("--grpc-max-connection-age-grace-ms", "1000"), {})
    with pytest.raises(ConfigError, match="grpc_max_connection_age_ms must be >= 0"):
        load_config(parse("--grpc-max-connection-age-ms", "-1"), {})

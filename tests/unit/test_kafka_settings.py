"""KafkaSettings -> aiokafka keyword arguments and FastStream security objects (managed Kafka).

The broker (FastStream, ``faststream_security()``) and the admin/lag clients (aiokafka,
``client_kwargs()``) must connect the same way: each case checks that FastStream's own
translation of the security object equals the aiokafka kwargs.
"""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest
from faststream.kafka.security import parse_security
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512
from pydantic import ValidationError

from libs.messaging.settings import KafkaSettings

KAFKA_ENV = (
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_CAFILE",
    "KAFKA_SSL_CERTFILE",
    "KAFKA_SSL_KEYFILE",
    "KAFKA_TOPIC_REPLICATION_FACTOR",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in KAFKA_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed CA certificate (as the CA file) and a client key/cert pair (openssl CLI)."""
    d = tmp_path_factory.mktemp("tls")
    files = {
        "ca": d / "ca.pem",
        "ca_key": d / "ca.key",
        "cert": d / "client.pem",
        "key": d / "client.key",
    }
    for cert, key, cn in (("ca", "ca_key", "lmesh-test-ca"), ("cert", "key", "lmesh-client")):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN={cn}", "-keyout", str(files[key]), "-out", str(files[cert])],
            check=True,
            capture_output=True,
        )  # fmt: skip
    return files


def _described(kwargs: dict[str, object]) -> dict[str, object]:
    """Kwargs with the SSLContext replaced by what it trusts (each call builds a new one)."""
    out = dict(kwargs)
    ctx = out.get("ssl_context")
    if isinstance(ctx, ssl.SSLContext):
        out["ssl_context"] = (ctx.verify_mode, ctx.check_hostname, str(ctx.get_ca_certs()))
    return out


def _faststream_kwargs(settings: KafkaSettings) -> dict[str, object]:
    return _described(parse_security(settings.faststream_security()))


def test_plaintext_default_has_no_security() -> None:
    s = KafkaSettings()
    assert s.client_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert s.faststream_security() is None


def test_sasl_ssl_plain_from_environment(
    monkeypatch: pytest.MonkeyPatch, tls_files: dict[str, Path]
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-1.example.com:9093")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "svc-lmesh")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cr3t")
    monkeypatch.setenv("KAFKA_SSL_CAFILE", str(tls_files["ca"]))
    s = KafkaSettings()

    assert "s3cr3t" not in repr(s)  # a SecretStr: never in logs
    kw = s.client_kwargs()
    assert kw["security_protocol"] == "SASL_SSL"
    assert kw["sasl_mechanism"] == "PLAIN"
    assert (kw["sasl_plain_username"], kw["sasl_plain_password"]) == ("svc-lmesh", "s3cr3t")
    ctx = kw["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "lmesh-test-ca"),),)]

    sec = s.faststream_security()
    assert type(sec) is SASLPlaintext and sec.use_ssl
    assert _faststream_kwargs(s) == _described(kw)


@pytest.mark.parametrize(
    ("mechanism", "cls"), [("SCRAM-SHA-256", SASLScram256), ("SCRAM-SHA-512", SASLScram512)]
)
def test_sasl_ssl_scram(mechanism: str, cls: type, tls_files: dict[str, Path]) -> None:
    s = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism=mechanism,
        sasl_username="u",
        sasl_password="p",
        ssl_cafile=str(tls_files["ca"]),
    )
    kw = s.client_kwargs()
    assert kw["sasl_mechanism"] == mechanism
    assert type(s.faststream_security()) is cls
    assert _faststream_kwargs(s) == _described(kw)


def test_sasl_plaintext_has_no_tls() -> None:
    s = KafkaSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="u",
        sasl_password="p",
    )
    kw = s.client_kwargs()
    assert "ssl_context" not in kw
    assert kw["security_protocol"] == "SASL_PLAINTEXT"
    sec = s.faststream_security()
    assert type(sec) is SASLScram256 and not sec.use_ssl
    fs = _faststream_kwargs(s)
    assert fs.pop("ssl_context") is None
    assert fs == _described(kw)


def test_ssl_with_client_certificate(tls_files: dict[str, Path]) -> None:
    """SSL without SASL: mutual TLS with a client certificate (e.g. Aiven, MSK mTLS)."""
    s = KafkaSettings(
        security_protocol="SSL",
        ssl_cafile=str(tls_files["ca"]),
        ssl_certfile=str(tls_files["cert"]),
        ssl_keyfile=str(tls_files["key"]),
    )
    kw = s.client_kwargs()
    assert set(kw) == {"security_protocol", "ssl_context"}
    sec = s.faststream_security()
    assert type(sec) is BaseSecurity and sec.use_ssl
    assert _faststream_kwargs(s) == _described(kw)


def test_ssl_with_missing_client_key_fails_loudly(
    tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    s = KafkaSettings(
        security_protocol="SSL",
        ssl_certfile=str(tls_files["cert"]),
        ssl_keyfile=str(tmp_path / "nope.key"),
    )
    with pytest.raises(OSError):
        s.client_kwargs()


def test_sasl_without_mechanism_defaults_to_plain() -> None:
    s = KafkaSettings(security_protocol="SASL_SSL", sasl_username="u", sasl_password="p")
    assert s.client_kwargs()["sasl_mechanism"] == "PLAIN"
    assert type(s.faststream_security()) is SASLPlaintext


@pytest.mark.parametrize(
    ("field", "value"), [("security_protocol", "TLS"), ("sasl_mechanism", "GSSAPI-ish")]
)
def test_unknown_protocol_or_mechanism_is_refused(field: str, value: str) -> None:
    with pytest.raises(ValidationError):
        KafkaSettings(**{field: value})


def test_topic_replication_factor_for_managed_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    assert KafkaSettings().topic_replication_factor == 1  # one broker (compose, embedded)
    monkeypatch.setenv("KAFKA_TOPIC_REPLICATION_FACTOR", "3")
    assert KafkaSettings().topic_replication_factor == 3
    with pytest.raises(ValidationError):
        KafkaSettings(topic_replication_factor=0)

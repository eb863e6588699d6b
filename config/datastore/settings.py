"""Datastore settings (the `datastore:` section of a node configuration)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, FilePath, SecretStr, model_validator

if TYPE_CHECKING:
    import ssl

NAME = r"^[A-Za-z0-9_.-]{1,63}$"


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsSettings(_Settings):
    """TLS to the broker: the server is always verified against `ca`; `cert`/`key` for client certificates."""

    ca: FilePath | None = Field(None, description="CA bundle for the broker certificate; default: the system CAs")
    cert: FilePath | None = Field(None, description="client certificate (PEM), with key")
    key: FilePath | None = Field(None, description="client private key (PEM), with cert")
    insecure: bool = Field(False, description="skip the host name check (the certificate chain is still verified)")

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together")
        return self

    def context(self) -> ssl.SSLContext:
        import ssl  # only a TLS connection needs it: importing these settings stays cheap
        ctx = ssl.create_default_context(cafile=self.ca)
        if self.cert is not None:
            ctx.load_cert_chain(self.cert, self.key)
        ctx.check_hostname = not self.insecure
        return ctx


class _ClientSettings(_Settings):
    """What every client of a server (MQTT broker, etcd) has: a password, reconnect backoff, timers."""

    password: SecretStr | None = None
    password_file: FilePath | None = Field(None, description="file holding the password (one line), instead of password")
    backoff_min: float = Field(1.0, gt=0, description="first reconnect delay, seconds; doubles up to backoff_max")
    backoff_max: float = Field(30.0, gt=0)
    start_timeout: float = Field(30.0, gt=0, description="how long start() keeps trying to connect and load the state")
    sync_timeout: float = Field(10.0, gt=0, description="bound on each round trip to the server")

    @model_validator(mode="after")
    def _check_client(self) -> _ClientSettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if self.backoff_min > self.backoff_max:
            raise ValueError("backoff_min is larger than backoff_max")
        return self

    def secret(self) -> str | None:
        if self.password_file is not None:
            return self.password_file.read_text().strip()
        return None if self.password is None else self.password.get_secret_value()


class MqttSettings(_ClientSettings):
    """An MQTT broker (mosquitto): address, credentials, TLS, timers."""

    host: str = Field(min_length=1, description="broker host name or address")
    port: int = Field(8883, ge=1, le=65535, description="8883 is TLS; a plain listener is usually 1883")
    username: str | None = Field(None, pattern=NAME, description="default: the node name (the ACL expects it)")
    tls: TlsSettings | None = Field(None, description="absent: plain MQTT (only for loopback tests and labs)")
    client_id: str | None = Field(None, pattern=NAME, description="default: the node name and a random suffix, so that no other client can guess it and take the session over; unique per connection")
    keepalive: int = Field(10, ge=2, le=65535, description="seconds; the broker declares a silent node dead after 1.5x")


class EtcdSettings(_ClientSettings):
    """An etcd v3 cluster: its client endpoints (tried in turn), credentials, TLS, lease and timers."""

    endpoints: list[str] = Field(min_length=1, description="host:port of each member; a failed one is left for the next")
    username: str | None = Field(None, pattern=NAME, description="password authentication; without it, a client "
                                 "certificate's common name is the etcd user (--client-cert-auth)")
    tls: TlsSettings | None = Field(None, description="absent: plain gRPC (only for loopback tests and labs); "
                                    "`insecure` is not supported (gRPC always checks the host name)")
    lease_ttl: int = Field(10, ge=2, le=3600, description="seconds the status/<node> lease lasts; kept alive every ttl/3")

    @model_validator(mode="after")
    def _check(self) -> EtcdSettings:
        for endpoint in self.endpoints:
            host, sep, port = endpoint.rpartition(":")
            if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"endpoint {endpoint!r} is not host:port")
        if (self.password is not None or self.password_file is not None) and self.username is None:
            raise ValueError("a password needs a username")
        if self.tls is not None and self.tls.insecure:
            raise ValueError("tls.insecure is not supported for etcd: give the endpoints as the certificate names them")
        return self


class DatastoreSettings(_Settings):
    """Where the cluster state lives: a directory (`files`), an MQTT broker (`mqtt`) or an etcd cluster (`etcd`)."""

    type: Literal["files", "mqtt", "etcd"]
    path: Path | None = Field(None, description="files: the directory (may be shared by all nodes of a lab)")
    lease_ttl: float = Field(15.0, ge=1, description="files: seconds a node's liveness lease lasts; renewed every ttl/3")
    mqtt: MqttSettings | None = None
    etcd: EtcdSettings | None = None

    @model_validator(mode="after")
    def _backend(self) -> DatastoreSettings:
        if self.type == "files" and self.path is None:
            raise ValueError("path is required when type is files")
        if self.type == "mqtt" and self.mqtt is None:
            raise ValueError("mqtt is required when type is mqtt")
        if self.type == "etcd" and self.etcd is None:
            raise ValueError("etcd is required when type is etcd")
        return self

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


class MqttSettings(_Settings):
    """An MQTT broker (mosquitto): address, credentials, TLS, timers."""

    host: str = Field(min_length=1, description="broker host name or address")
    port: int = Field(8883, ge=1, le=65535, description="8883 is TLS; a plain listener is usually 1883")
    username: str | None = Field(None, pattern=NAME, description="default: the node name (the ACL expects it)")
    password: SecretStr | None = None
    password_file: FilePath | None = Field(None, description="file holding the password (one line), instead of password")
    tls: TlsSettings | None = Field(None, description="absent: plain MQTT (only for loopback tests and labs)")
    client_id: str | None = Field(None, pattern=NAME, description="default: the node name and a random suffix, so that no other client can guess it and take the session over; unique per connection")
    keepalive: int = Field(10, ge=2, le=65535, description="seconds; the broker declares a silent node dead after 1.5x")
    backoff_min: float = Field(1.0, gt=0, description="first reconnect delay, seconds; doubles up to backoff_max")
    backoff_max: float = Field(30.0, gt=0)
    start_timeout: float = Field(30.0, gt=0, description="how long start() keeps trying to connect and load the state")
    sync_timeout: float = Field(10.0, gt=0, description="bound on each broker round trip (publish, subscribe, sync)")

    @model_validator(mode="after")
    def _check(self) -> MqttSettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if self.backoff_min > self.backoff_max:
            raise ValueError("backoff_min is larger than backoff_max")
        return self

    def secret(self) -> str | None:
        if self.password_file is not None:
            return self.password_file.read_text().strip()
        return None if self.password is None else self.password.get_secret_value()


class DatastoreSettings(_Settings):
    """Where the cluster state lives: a directory (`files`) or an MQTT broker (`mqtt`)."""

    type: Literal["files", "mqtt"]
    path: Path | None = Field(None, description="files: the directory (may be shared by all nodes of a lab)")
    lease_ttl: float = Field(15.0, ge=1, description="files: seconds a node's liveness lease lasts; renewed every ttl/3")
    mqtt: MqttSettings | None = None

    @model_validator(mode="after")
    def _backend(self) -> DatastoreSettings:
        if self.type == "files" and self.path is None:
            raise ValueError("path is required when type is files")
        if self.type == "mqtt" and self.mqtt is None:
            raise ValueError("mqtt is required when type is mqtt")
        return self

"""A mosquitto broker for tests: loopback only, its own directory, started and stopped by PID."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "containers" / "mosquitto"
USERS = {"admin": "admin-pw", "node1": "node1-pw", "node2": "node2-pw", "node3": "node3-pw"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{port} within {timeout} s")


def make_passwords(path: Path) -> None:
    """The password file, made by the shipped script."""
    subprocess.run([SHIPPED / "make-passwords.sh", path, *(f"{u}:{p}" for u, p in USERS.items())],
                   check=True, capture_output=True, timeout=30)


@dataclass
class Broker:
    """mosquitto with the shipped ACL, on 127.0.0.1:port; TLS when certs (ca, cert, key) are given."""

    dir: Path
    persistence: bool = True
    certs: tuple[Path, Path, Path] | None = None
    require_client_cert: bool = False
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    def config(self) -> str:
        lines = [
            "per_listener_settings false", "allow_anonymous false", "user root", "max_queued_messages 1000000",
            f"password_file {self.dir / 'passwd'}", f"acl_file {SHIPPED / 'acl'}",
            f"persistence {'true' if self.persistence else 'false'}", f"persistence_location {self.dir / 'data'}/",
            f"listener {self.port} 127.0.0.1", f"log_dest file {self.dir / 'mosquitto.log'}", "log_type all",
        ]
        if self.certs:
            ca, cert, key = self.certs
            lines += [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
            lines += ["require_certificate true"] if self.require_client_cert else []
        return "\n".join(lines) + "\n"

    def start(self) -> Broker:
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        if not (self.dir / "passwd").exists():
            make_passwords(self.dir / "passwd")
        (self.dir / "mosquitto.conf").write_text(self.config())
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.dir / "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port, self.proc)
        return self

    def stop(self) -> None:
        """SIGTERM (mosquitto saves its persistence file), SIGKILL after 5 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def log(self) -> str:
        path = self.dir / "mosquitto.log"
        return path.read_text() if path.exists() else ""

"""Real etcd members on loopback for tests and benchmarks: started in a directory of their own, stopped by
PID (also when a test fails)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from config.datastore import EtcdSettings

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Member:
    name: str
    dir: Path
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    tls: Path | None = None  # a directory made by containers/etcd/make-certs.sh: TLS and client certificates
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self, cluster: str, state: str = "new") -> None:
        scheme = "https" if self.tls else "http"
        args = [
            ETCD, "--name", self.name, "--data-dir", str(self.dir / "data"),
            "--listen-client-urls", f"{scheme}://{self.endpoint}", "--advertise-client-urls", f"{scheme}://{self.endpoint}",
            "--listen-peer-urls", self.peer_url(), "--initial-advertise-peer-urls", self.peer_url(),
            "--initial-cluster", cluster, "--initial-cluster-state", state, "--initial-cluster-token", self.dir.parent.name,
            "--heartbeat-interval", "50", "--election-timeout", "500", "--logger", "zap", "--log-outputs", "stderr",
        ]
        if self.tls:
            args += ["--cert-file", str(self.tls / "server.crt"), "--key-file", str(self.tls / "server.key"),
                     "--trusted-ca-file", str(self.tls / "ca.crt"), "--client-cert-auth"]
        self.dir.mkdir(parents=True, exist_ok=True)
        log = open(self.dir / "etcd.log", "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
        log.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def ctl(self, *args: str, user: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """etcdctl against this member (as root with TLS: the root certificate)."""
        cmd = [ETCDCTL, "--endpoints", f"{'https' if self.tls else 'http'}://{self.endpoint}",
               "--dial-timeout", "3s", "--command-timeout", "5s"]
        if self.tls:
            who = user or "root"
            cmd += ["--cacert", str(self.tls / "ca.crt"), "--cert", str(self.tls / f"{who}.crt"),
                    "--key", str(self.tls / f"{who}.key")]
        return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=15, check=check,
                              env={**os.environ, "ETCDCTL_API": "3"})

    def healthy(self) -> bool:
        return self.ctl("endpoint", "health", check=False).returncode == 0


class EtcdCluster:
    """n members on loopback (one: a single-node etcd)."""

    def __init__(self, base: Path, n: int = 1, tls: Path | None = None):
        self.members = [Member(f"m{i}", base / f"m{i}", tls=tls) for i in range(n)]
        self.initial = ",".join(f"{m.name}={m.peer_url()}" for m in self.members)

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self) -> EtcdCluster:
        """Starts every member; stops them all again if the cluster does not come up."""
        try:
            for m in self.members:
                m.start(self.initial)
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self, members: list[Member] | None = None) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        for m in members or self.members:
            while not m.healthy():
                if m.proc is None or m.proc.poll() is not None:
                    raise RuntimeError(f"etcd {m.name} exited: {(m.dir / 'etcd.log').read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd {m.name} not healthy within {START_TIMEOUT} s")
                time.sleep(0.1)

    def restart(self, member: Member) -> None:
        member.start(self.initial, state="existing")
        self.wait_healthy([member])

    def stop(self) -> None:
        for m in self.members:
            m.stop()


def etcd_settings(cluster: EtcdCluster, **kw) -> EtcdSettings:
    """Fast timers for tests."""
    values = dict(endpoints=cluster.endpoints, lease_ttl=5, backoff_min=0.1, backoff_max=0.5, start_timeout=10,
                  sync_timeout=3)
    return EtcdSettings(**(values | kw))


@pytest.fixture
def etcd(tmp_path):
    """A one-member etcd on loopback."""
    cluster = EtcdCluster(tmp_path / "etcd").start()
    yield cluster
    cluster.stop()


@pytest.fixture
def etcd3(tmp_path):
    """A three-member etcd cluster on loopback."""
    cluster = EtcdCluster(tmp_path / "etcd3", n=3).start()
    yield cluster
    cluster.stop()

"""systemd integration: the unit file, the install script, readiness, watchdog and reload notifications."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.netns import requires_root

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "containers" / "systemd" / "tortie.service"


def test_unit_verifies_without_warnings(tmp_path):
    r = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stdout + r.stderr


def test_install_script_places_unit_config_and_docs(tmp_path):
    r = subprocess.run([str(ROOT / "scripts" / "install.sh"), "--root", str(tmp_path)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    unit = tmp_path / "etc/systemd/system/tortie.service"
    config = tmp_path / "etc/tortie/tortie.yaml"
    assert unit.read_text() == UNIT.read_text().replace("/opt/tortie-venv", os.environ.get("TORTIE_VENV", "/opt/tortie-venv"))
    check = subprocess.run([sys.executable, "-m", "bgpd.cli.main", "config", "check", str(config)], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stderr  # the example configuration is valid
    assert (tmp_path / "usr/share/doc/tortie/README.md").exists()
    assert oct(config.stat().st_mode & 0o777) == "0o600"


CONFIG = """
name: solo
router_id: 10.95.0.1
asn: 64512
listen_address: 10.95.0.1
pools: [{{cidr: 10.244.0.0/16}}]
blocks: [10.244.1.0/26]
mesh: {{enabled: false}}
peers: [{{address: 10.95.0.2, asn: 64513, hold_time: 9}}]   # never answers: the sync ends by its timer
metrics: {{port: 0}}
state_dir: {tmp}/state
run_dir: {tmp}/run
initial_sync_timeout: 2
"""


class NotifySocket:
    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []

    def wait(self, text: str, timeout: float) -> float:
        """Returns when a message holding `text` arrived (its arrival time); fails after `timeout`."""
        deadline = time.monotonic() + timeout
        seen = len(self.messages)
        while time.monotonic() < deadline:
            for when, msg in self.messages[seen:]:
                if text in msg.split("\n"):
                    return when
            seen = len(self.messages)
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except socket.timeout:
                pass
        raise AssertionError(f"no {text} within {timeout} s; got {[m for _, m in self.messages]}")


@requires_root
@pytest.mark.netns
@pytest.mark.timeout(90)
def test_ready_after_initial_sync_watchdog_and_reload(tmp_path, make_netns):
    ns = make_netns("sd")
    subprocess.run(["ip", "-n", ns, "addr", "add", "10.95.0.1/32", "dev", "lo"], check=True)
    config = tmp_path / "tortie.yaml"
    config.write_text(CONFIG.format(tmp=tmp_path))
    notify = NotifySocket(tmp_path / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "600000"}
    log = open(tmp_path / "daemon.log", "w")
    started = time.monotonic()
    daemon = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "bgpd.cli.main", "run", "--config",
                               str(config)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        first_ping = notify.wait("WATCHDOG=1", 10)
        ready = notify.wait("READY=1", 15)
        assert ready - started >= 2.0  # not before the initial sync is over
        notify.wait("WATCHDOG=1", 2)  # pings keep coming, from the event loop
        pings = [t for t, m in notify.messages if m == "WATCHDOG=1"]
        assert len(pings) >= 3 and first_ping < ready

        # a valid reload: a second peer appears
        config.write_text(config.read_text().replace(
            "peers: [", "peers: [{address: 10.95.0.3, asn: 64514}, "))
        daemon.send_signal(signal.SIGHUP)
        notify.wait("RELOADING=1", 5)
        notify.wait("READY=1", 5)
        # a reload that changes what needs a restart is refused as a whole; the daemon goes on
        config.write_text(config.read_text().replace("asn: 64512", "asn: 64999"))
        daemon.send_signal(signal.SIGHUP)
        notify.wait("RELOADING=1", 5)
        notify.wait("READY=1", 5)
        status = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "bgpd.cli.main", "status", "--json",
                                 "--config", str(config)], capture_output=True, text=True, timeout=10, cwd=ROOT)
        assert status.returncode == 0, status.stderr
        s = json.loads(status.stdout)
        assert s["asn"] == 64512 and {p["address"] for p in s["peers"]} == {"10.95.0.2", "10.95.0.3"}
        assert daemon.poll() is None
        daemon.send_signal(signal.SIGTERM)
        notify.wait("STOPPING=1", 10)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=20)
        log.close()
    text = (tmp_path / "daemon.log").read_text()
    assert "reload refused" in text and "asn: changing it needs a restart" in text

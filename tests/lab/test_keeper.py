"""The lab keeper (bgpd/lab/keeper.py) as the runner starts it: a namespace it cannot enter is a one-line error
naming it and exit 1, before it changes anything (no namespace is entered, nothing is mounted)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.timeout(30)
def test_a_namespace_that_is_not_there_is_one_line_and_exit_1(tmp_path):
    missing = tmp_path / "no-such-netns"
    spec = {"netns": str(missing), "tmpfs": [str(tmp_path)], "binds": []}
    r = subprocess.run([sys.executable, "-m", "bgpd.lab.keeper", json.dumps(spec)], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 1 and r.stderr == ""
    assert r.stdout.startswith("error: ") and str(missing) in r.stdout and len(r.stdout.splitlines()) == 1

"""docs/configuration.md is generated from config/node.py and must be kept up to date."""
import subprocess
import sys

import pytest

from config.node import IPPool, Mesh, MeshMember, Metrics, NodeConfig, Peer
from tests.ops.promql import REPO

pytestmark = pytest.mark.timeout(60)
SCRIPT = REPO / "scripts" / "gen_config_docs.py"


def test_configuration_reference_is_up_to_date():
    r = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_reference_documents_every_field():
    text = (REPO / "docs" / "configuration.md").read_text()
    for prefix, model in (("", NodeConfig), ("pools[].", IPPool), ("peers[].", Peer), ("mesh.", Mesh),
                          ("mesh.nodes[].", MeshMember), ("metrics.", Metrics)):
        for name in model.model_fields:
            assert f"| `{prefix}{name}` |" in text, prefix + name
    assert "| `peers[].hold_time` | integer | `90` |" in text
    assert "route_protocol and pod_route_protocol must differ" in text


def test_reference_marks_restart_only_fields():
    from config.node import restart_fields
    rows = {line.split(" | ")[0].strip("| `"): line for line in (REPO / "docs" / "configuration.md").read_text()
            .splitlines() if line.startswith("| `")}
    for name in NodeConfig.model_fields:
        assert rows[name].endswith("| **restart** |" if name in restart_fields() else "| applied |"), name
    assert rows["metrics.port"].endswith("| **restart** |")  # inside a restart-only field
    assert rows["peers[].hold_time"].endswith("| applied |")

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

"""The viewer asks each model only for the leads it was trained for (issue: numbers a user can
trust, item 5): ``modelLeads`` of service/static/viewer.js, run in node on /v1/models entries."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

VIEWER = Path(__file__).resolve().parents[1] / "service" / "static" / "viewer.js"


def model_leads(entries: list[dict], product_step: float) -> list[int]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    source = re.search(r"^function modelLeads\(.*?^}\n", VIEWER.read_text(), re.MULTILINE | re.DOTALL)
    assert source, "viewer.js has no modelLeads function"
    call = f"{json.dumps(entries)}.map((m) => modelLeads(m, {product_step}))"
    script = f"{source[0]}\nconsole.log(JSON.stringify({call}));"
    return json.loads(subprocess.run([node, "-e", script], capture_output=True, text=True, check=True).stdout)


def test_a_network_is_asked_its_trained_leads_and_a_baseline_the_service_limit() -> None:
    network = {"name": "convlstm", "max_lead_steps": 24, "trained_output_steps": 6, "step_minutes": 5}
    baseline = {"name": "optical_flow", "max_lead_steps": 24, "trained_output_steps": None, "step_minutes": None}
    assert model_leads([network, baseline], 5) == [6, 24]  # 30 min, not the +60 min the loop shows
    assert model_leads([network], 10) == [3]  # on a 10-minute product: still 30 minutes
    assert model_leads([network], 15) == [2]

"""benchmarks/input_pipeline.py runs end to end on a few images; no timing is asserted."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(importlib.util.find_spec("foolbox") is None,
                    reason="pip install --no-deps foolbox==3.3.4 (its ImageNet photos)")
def test_input_pipeline_benchmark_reports_every_pipeline(tmp_path):
    out = tmp_path / "pipe.json"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "input_pipeline.py"), "--images", "8", "--batch", "4",
           "--passes", "1", "--size", "32", "--workers", "1", "--pipelines", "sknet", "pil", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = {r["pipeline"]: r["per_core"] for r in report["rows"]}
    assert set(rows) == {"sknet", "pil"} and all(v > 0 for v in rows.values())
    assert report["images"] == 8 and "| sknet |" in proc.stdout

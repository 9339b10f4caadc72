"""`python -m benchmarks.loss`: the --thp rerun and the worst-call column."""

import csv
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_thp_reruns_with_huge_page_allocation_and_reports_the_worst_call(tmp_path):
    out = tmp_path / "loss.csv"
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.loss", "--quick", "--only", "select", "--repeats", "2",
         "--backends", "torch", "--thp", "--csv", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "2 MiB (THP_MEM_ALLOC_ENABLE=1) pages" in run.stdout.splitlines()[0]
    rows = list(csv.DictReader(out.open()))
    assert [r["impl"] for r in rows] == ["naive torch", "torch"]
    for r in rows:
        assert "THP_MEM_ALLOC_ENABLE=1" in r["device"]
        assert float(r["max_ms"]) >= float(r["median_ms"]) > 0


def test_cpu_kernel_benchmark_times_every_case_against_the_floor():
    import tsubasa_fast as tf

    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.cpu_kernel", "--n", "4", "--threads", "1", "2", "--repeats", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    if "cpu" not in tf.available_backends("cpu"):  # no extension: one clear error, no table
        assert run.returncode != 0 and "the C++ extension is not built" in run.stderr
        return
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [ln.split() for ln in run.stdout.splitlines()[1:]]
    cases = ["copy", "forward", "gradient", "gradient", "gradient"]
    assert [ln[1] for ln in lines] == cases * 2
    assert [ln[0] for ln in lines] == ["threads=1"] * 5 + ["threads=2"] * 5
    assert [ln[-2] for ln in lines if ln[1] == "copy"] == ["1.00x", "1.00x"]

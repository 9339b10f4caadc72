"""benchmarks.gpu_check without a GPU: its checks, timings, QLoRA step and report on CPU."""

import csv

import pytest
import torch

from benchmarks import gpu_check

CPU = torch.device("cpu")


def test_correctness_checks_pass_on_cpu_and_catch_a_wrong_kernel(monkeypatch):
    backend = "triton"  # the kernels the GPU check is for, here under the interpreter
    rows = gpu_check.check_kernels(CPU, backend=backend, vocab=300, n=3, ds=(1, 5), fused_n=7)
    names = {r["name"] for r in rows}
    assert {"select_topd d=5", "fused_linear_select_topd",
            "topd_kl tail=bucket ce=0.5 grad=True d=5",
            "fused_linear_topd_kl reduction=none trainable head"} <= names
    assert len(rows) == 2 * (2 + 12 + 3)  # 2 dtypes x (selects + topd_kl variants + fused)
    assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
    # a kernel 1 % off must be reported as a failure
    import tsubasa_fast.loss as loss_mod

    real = loss_mod.resolve_backend

    class Off:
        def __init__(self, impl):
            self.impl = impl

        def select_topd(self, *a):
            return self.impl.select_topd(*a)

        def topd_kl(self, *a):
            return self.impl.topd_kl(*a) * 1.01

    monkeypatch.setattr(loss_mod, "resolve_backend", lambda b, dev: Off(real(b, dev)))
    bad = gpu_check.check_kernels(CPU, backend="cpu", vocab=300, n=3, dtypes=(torch.float32,), ds=(5,),
                                  fused_n=4)
    assert {r["name"] for r in bad if r["status"] == "FAIL"} >= {"topd_kl tail=renorm ce=0.0 grad=False d=5"}


def test_timings_table_and_csv(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check.bench, "VOCAB", 2000)
    rows = gpu_check.time_kernels(CPU, backend="cpu", ns=(16,), hdims=(32,), dtype=torch.float32,
                                  repeats=2, peak=1e12)
    names = [r["name"] for r in rows]
    assert "topd_kl fwd+bwd: naive torch" in names and "topd_kl fwd+bwd: cpu" in names
    fused = [r for r in rows if r["name"].startswith("fused_linear")]
    assert [r["name"].split(": ")[1] for r in fused] == ["naive torch", "cpu"]
    for r in fused:  # % of the bound = 4 N H V / t / peak
        want = 100 * 4 * 16 * 32 * 2000 / (r["median_ms"] / 1e3) / 1e12
        assert r["pct_of_2pass_bound"] == pytest.approx(want, rel=0.02, abs=0.06)
    assert rows[0]["speedup_vs_naive"] == 1.0
    path = tmp_path / "out" / "gpu.csv"
    gpu_check.write_csv(rows, str(path))
    with open(path) as fh:
        back = list(csv.DictReader(fh))
    assert [r["name"] for r in back] == names and list(back[0]) == gpu_check.COLUMNS
    table = gpu_check.format_table(rows).splitlines()
    assert len(table) == len(rows) + 1 and table[0].startswith("section")


def test_qlora_step_runs_on_cpu(tiny_qwen3):
    # the session's tiny Qwen3 (tests/conftest.py); gpu_check.make_tiny_qwen3 builds the same
    # kind of model, a little wider, on the GPU machine
    assert gpu_check.attention_backends(CPU) == ["sdpa"]
    row = gpu_check.qlora_step(CPU, tiny_qwen3, "sdpa", batch=1, seq=24, answer=8, repeats=1)
    assert row["status"] == "ok", row
    assert "updated" in row["note"] and row["median_ms"] > 0


def test_peak_override_and_clear_error_without_cuda(monkeypatch, capsys):
    assert gpu_check.peak_flops(500) == 500e12
    monkeypatch.setenv("TSUBASA_PEAK_TFLOPS", "123")
    assert gpu_check.bench._peak_flops() == 123e12
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err

"""The engine's commands end to end on a tiny Qwen3: teacher-cache, train (1 and 2 processes
under torchrun, on transformers.Trainer), ask."""

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from tsubasa_fast.cli import main
from tsubasa_fast.distill.cache import TeacherCache
from tsubasa_fast.distill.data import pair_key
from tsubasa_fast.memory import HashingEmbedder, MemoryStore

from .conftest import FACTS

USER = "caroline"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_qwen3):
    root = tmp_path_factory.mktemp("cli")
    store = MemoryStore(root / "store", HashingEmbedder())
    for fact, _, _ in FACTS:
        store.add(USER, fact)
    store.close()
    qa = root / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": q, "answer": a, "context": c}) + "\n" for c, q, a in FACTS))
    common = ["--store", str(root / "store"), "--user", USER, "--model", tiny_qwen3]
    assert main(["teacher-cache", *common, "--qa", str(qa), "--out", str(root / "cache")]) == 0
    return root, qa, common


TRAIN = ["--steps", "3", "--batch-size", "4", "--micro-batch-size", "1", "--lr", "1e-2", "--lora-r", "4"]


def test_train_and_ask(setup, capsys):
    root, qa, common = setup
    assert main(["train", *common, "--qa", str(qa), "--cache", str(root / "cache"),
                 "--out", str(root / "one"), *TRAIN]) == 0
    assert (root / "one" / "adapter_model.safetensors").is_file()
    out = capsys.readouterr()  # off a terminal: no bar redraws, no log line per step
    assert out.out.strip().startswith("trained 3 steps") and len(out.out.strip().splitlines()) == 1
    assert out.err.count("distilling") <= 2 and "{'loss'" not in out.err, out.err
    steps = [json.loads(x) for x in (root / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in steps] == [1, 2, 3] and all(m["tokens"] > 0 for m in steps)
    assert main(["ask", *common, "--adapter", str(root / "one"), "--json", "--max-new-tokens", "4",
                 "Where did Caroline move?"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["question"] == "Where did Caroline move?"
    assert json.loads((root / "one" / "tsubasa_adapter.json").read_text())["user"] == USER
    assert isinstance(out["answer"], str) and len(out["memories"]) == 3
    assert any("Denver" in m for m in out["memories"])


def test_two_process_ddp_matches_one_process(setup):
    root, qa, common = setup
    if not (root / "one" / "adapter_model.safetensors").is_file():
        assert main(["train", *common, "--qa", str(qa), "--cache", str(root / "cache"),
                     "--out", str(root / "one"), *TRAIN]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tsubasa_fast.cli", "train", *common, "--qa", str(qa), "--cache", str(root / "cache"),
           "--out", str(root / "ddp"), *TRAIN]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    meta = json.loads((root / "ddp" / "tsubasa_adapter.json").read_text())
    assert meta["training"]["world_size"] == 2
    one = load_file(str(root / "one" / "adapter_model.safetensors"))
    two = load_file(str(root / "ddp" / "adapter_model.safetensors"))
    assert one.keys() == two.keys()
    # Two ranks all-reduce fp32 gradients in another summation order than one process: ~1e-7
    # relative per step, which Adam over 3 steps turns into well under 1e-3 of each tensor's
    # largest entry; a wrong loss normalisation (local instead of global token count) moves
    # entries by a large fraction of it (measured on Trainer: 8.2e-6 of the scale here; 1.62
    # with the local count, i.e. average_tokens_across_devices=False).
    for k in one:
        scale = one[k].abs().max().item()
        assert scale > 0, k
        assert (two[k] - one[k]).abs().max().item() <= 1e-3 * scale, k
    # the logged loss of a step is the global one too (all answer tokens of both ranks)
    m1, m2 = ([json.loads(x) for x in (root / d / "metrics.jsonl").read_text().splitlines()] for d in ("one", "ddp"))
    assert [m["tokens"] for m in m2] == [m["tokens"] for m in m1]
    assert [m["loss"] for m in m2] == pytest.approx([m["loss"] for m in m1], rel=1e-3)


def test_two_processes_see_each_example_once_per_epoch(setup):
    # 5 examples over 2 processes x micro-batch 1: accelerate's even_batches would repeat one
    # each epoch; a zero-weight example fills the gap instead. 2 steps an epoch (per rank 3
    # micro-batches, 2 accumulated): the answer tokens of each epoch are the dataset's, once.
    root, qa, common = setup
    odd = root / "qa5.jsonl"
    odd.write_text("".join(json.dumps({"question": q, "answer": a, "context": c}) + "\n"
                           for c, q, a in FACTS[:5]))
    cache = TeacherCache(root / "cache")
    total = sum(cache.get(pair_key(q, a, c))[0].shape[0] for c, q, a in FACTS[:5])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tsubasa_fast.cli", "train", *common, "--qa", str(odd), "--cache", str(root / "cache"),
           "--out", str(root / "odd"), *TRAIN[2:], "--steps", "4"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((root / "odd" / "tsubasa_adapter.json").read_text())["training"]
    assert summary["world_size"] == 2 and summary["examples"] == 5
    assert summary["repeated_per_epoch"] == 0 and summary["padded_per_epoch"] == 1
    tokens = [json.loads(x)["tokens"] for x in (root / "odd" / "metrics.jsonl").read_text().splitlines()]
    assert len(tokens) == 4 and all(t > 0 for t in tokens)
    assert tokens[0] + tokens[1] == total and tokens[2] + tokens[3] == total, (tokens, total)


def test_bad_input_is_a_clear_error(setup, capsys, tmp_path):
    root, qa, common = setup
    if (root / "one" / "tsubasa_adapter.json").is_file():  # another user's adapter is refused
        store = MemoryStore(root / "store", HashingEmbedder())
        store.add("someone-else", "Someone else likes tea.")
        store.close()
        assert main(["ask", "--store", str(root / "store"), "--user", "someone-else", "--model", common[-1],
                     "--adapter", str(root / "one"), "Who?"]) == 2
        assert "trained for user 'caroline'" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q?", "answer": ""}\n')
    assert main(["teacher-cache", *common, "--qa", str(bad), "--out", str(tmp_path / "c")]) == 2
    assert "field 'answer'" in capsys.readouterr().err
    args = ["teacher-cache", "--store", str(root / "store"), "--user", "nobody", "--model", common[-1],
            "--qa", str(qa), "--out", str(tmp_path / "c")]
    assert main(args) == 2
    assert "nobody" in capsys.readouterr().err

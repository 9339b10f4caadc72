"""Student training step: fused top-d loss vs full logits + naive top-d KL, side by side.

    python -m benchmarks.distill                       # SmolLM2-135M-Instruct (V=49,152), CPU
    python -m benchmarks.distill --random-qwen3 4      # Qwen3-0.6B-shaped (H=1024, V=151,936), 4 layers
    python -m benchmarks.distill --model DIR --4bit    # any local model folder, e.g. Qwen3-4B on a GPU

Both steps run the same LoRA student forward + backward on the same batch (B sequences of T
tokens, the last A of each being answer tokens, as in distillation data). "full logits" is
what a plain transformers loop does: ``model(...).logits`` for every position, then
log-softmax + gather + KL on the answer rows through autograd. "fused" takes the decoder's
hidden states at the answer rows and calls ``fused_linear_topd_kl_loss``. Reported: median
step time, tokens/s (all sequence tokens), peak memory above the inputs, and the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

from tsubasa_fast.distill.student import Student, StudentConfig
from tsubasa_fast.loss import fused_linear_topd_kl_loss

from .loss import Impl, measure, naive_topd_kl


def _random_qwen3(layers: int) -> str:
    """A Qwen3-0.6B-shaped model with random weights and `layers` layers, saved to a temp dir."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from tsubasa_fast.models import load_qwen3_tokenizer

    cfg = Qwen3Config(vocab_size=151_936, hidden_size=1024, intermediate_size=3072,
                      num_hidden_layers=layers, num_attention_heads=16, num_key_value_heads=8,
                      head_dim=128, tie_word_embeddings=True)
    path = tempfile.mkdtemp(prefix="qwen3-shaped-")
    torch.manual_seed(0)
    Qwen3ForCausalLM(cfg).save_pretrained(path)
    load_qwen3_tokenizer().save_pretrained(path)
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="local model folder (default SmolLM2-135M-Instruct)")
    ap.add_argument("--random-qwen3", type=int, default=None, metavar="LAYERS",
                    help="benchmark a random Qwen3-0.6B-shaped model with this many layers instead")
    ap.add_argument("--4bit", dest="four_bit", action="store_true", help="load the base in 4-bit NF4")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--answer", type=int, default=32, help="answer tokens per sequence")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    model = _random_qwen3(args.random_qwen3) if args.random_qwen3 else args.model
    st = Student(StudentConfig(model=model, load_in_4bit=args.four_bit or None, lora_r=16, lora_alpha=32))
    device = st.device
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, st.vocab_size - 1, (args.batch, args.seq), generator=g)
    attn = torch.ones_like(ids)
    target = torch.zeros(args.batch, args.seq, dtype=torch.bool)
    target[:, -args.answer - 1 : -1] = True
    m = int(target.sum())
    idx = torch.stack([torch.randperm(st.vocab_size, generator=g)[:5] for _ in range(m)]).to(device)
    lp = torch.log_softmax(torch.randn(m, 5, generator=g), -1).to(device)
    model_ = st.model
    model_.train()

    def fused():
        hidden = st.hidden_states(ids, attn)
        loss = fused_linear_topd_kl_loss(hidden[target.to(device)], st.head_weight, idx, lp, bias=st.head_bias)
        loss.backward()
        model_.zero_grad(set_to_none=True)

    def full_logits():
        logits = model_(input_ids=ids.to(device), attention_mask=attn.to(device)).logits
        loss = naive_topd_kl(logits[target.to(device)], idx, lp)
        loss.backward()
        model_.zero_grad(set_to_none=True)

    impls = [Impl("full logits + naive top-d KL", full_logits), Impl("fused top-d KL", fused)]
    measure(impls, device, args.repeats)
    name = f"random Qwen3-0.6B-shaped, {args.random_qwen3} layers" if args.random_qwen3 else str(st.model_dir)
    tokens = args.batch * args.seq
    print(f"model: {name} (V={st.vocab_size}, H={st.head_weight.shape[1]}, 4-bit={st.four_bit}, "
          f"attention={st.attn_implementation}), device {device}, batch {args.batch} x {args.seq} tokens, "
          f"{m} answer rows, medians of {args.repeats} steps")
    base = statistics.median(impls[0].times)
    for impl in impls:
        med = statistics.median(impl.times)
        print(f"  {impl.name:30s} step {med * 1e3:8.1f} ms  {tokens / med:8.1f} tokens/s  "
              f"peak +{impl.peak_mib:7.1f} MiB  speedup x{base / med:.2f}  "
              f"memory / {impls[0].peak_mib / max(impl.peak_mib, 1e-6):.1f}")


if __name__ == "__main__":
    main()

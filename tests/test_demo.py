"""`make demo` runs tsubasa_fast.demo: its distillation must actually learn."""

from tsubasa_fast import demo


def test_demo_distillation_lowers_the_loss():
    result = demo.run(steps=15, tokens=48, hidden=32, vocab=3000)
    assert result["last_loss"] < 0.5 * result["first_loss"]
    assert result["top1_agreement"] > 0.3

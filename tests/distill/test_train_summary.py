"""Training's loss in reports: the answer-token-weighted mean of the first and the last epoch
(one step's loss is one batch's), checked against values computed by hand."""

from tsubasa_fast.distill.train import describe_loss, epoch_losses


def steps(losses, tokens):
    return [{"step": i, "loss": loss, "tokens": t} for i, (loss, t) in enumerate(zip(losses, tokens), 1)]


def test_epoch_means_are_token_weighted():
    h = steps([2.0, 4.0, 1.0, 3.0], [1, 3, 2, 2])
    # first epoch (steps 1-2): (2*1 + 4*3) / 4 = 3.5; last (3-4): (1*2 + 3*2) / 4 = 2.0
    assert epoch_losses(h, 2) == (3.5, 2.0)
    # one epoch longer than the run: both spans are the whole run, (2 + 12 + 2 + 6) / 8
    assert epoch_losses(h[:4], 9) == (2.75, 2.75)


def test_a_missing_step_or_no_tokens_gives_none():
    h = steps([2.0, 4.0, 1.0, 3.0], [1, 3, 2, 2])
    assert epoch_losses([h[0], h[2], h[3]], 2) == (None, 2.0)  # step 2 has no record
    assert epoch_losses(steps([1.0, 1.0], [0, 0]), 1) == (None, None)
    assert epoch_losses([], 3) == (None, None)


def test_describe_loss_prefers_the_epoch_means():
    assert describe_loss({"first_epoch_loss": 4.6875, "last_epoch_loss": 3.4836, "first_loss": 4.1072,
                          "last_loss": 4.1071}) == "4.6875 -> 3.4836 (mean of the first and the last epoch)"
    assert describe_loss({"first_loss": 4.1072, "last_loss": 4.1071}) == "4.1072 -> 4.1071 (first and last step)"
    assert describe_loss({}) == "unknown"

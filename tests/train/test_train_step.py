"""The training step (mdt.train_step): gradient accumulation equals one step on the whole batch, a non-finite
step is skipped on the device and counted, gradient checkpointing changes memory, not the math."""

import copy

import pytest
import torch

from mdt.train_step import TrainConfig, build_train_step, model_config

SIZE = dict(input_size=8, in_channels=1, num_classes=10)


def make_step(model="MDTv2-Ti/2", **kw):
    cfg = TrainConfig(model=model, batch_size=8, lr=1e-3, ema_decay=0.9, **kw)
    return build_train_step(cfg, model_config(cfg, **SIZE), torch.device("cpu"))


def batch(n=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def perturb(model, seed=1):
    """Moves the zero-initialised adaLN and output layers, so that every block gets a gradient."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))


def one_step(ts, x, y):
    torch.manual_seed(123)  # the same draws for every configuration
    terms, loss = ts(x, y, step=1)
    grads = {n: p.grad.clone() for n, p in ts.model.named_parameters() if p.grad is not None}
    return loss, grads, copy.deepcopy(ts.model.state_dict())


@pytest.mark.parametrize("model", ["MDTv2-Ti/2", "DiT-Ti/2"])
@pytest.mark.parametrize("accum", [2, 4])
def test_accumulated_step_equals_the_whole_batch(model, accum):
    x, y = batch()
    runs = []
    for n in (1, accum):
        ts = make_step(model, grad_accum=n)
        perturb(ts.model)
        runs.append(one_step(ts, x, y))
    (loss1, g1, w1), (loss_n, g_n, w_n) = runs
    torch.testing.assert_close(loss_n, loss1, rtol=1e-5, atol=1e-6)
    assert g1.keys() == g_n.keys() and len(g1) > 10
    for name in g1:
        torch.testing.assert_close(g_n[name], g1[name], rtol=1e-4, atol=1e-6, msg=name)
    for name in w1:  # Adan divides by the gradient's own scale: a 1e-7 relative change moves a weight by ~1e-6
        torch.testing.assert_close(w_n[name], w1[name], rtol=0, atol=1e-2 * 1e-3, msg=name)  # 1% of lr


def test_accumulation_uses_one_mask_per_step(monkeypatch):
    """MDT draws the mask ratio once per optimizer step: every micro-batch keeps the same number of tokens."""
    ts = make_step(grad_accum=4)
    kept = []
    real = ts.model.forward

    def spy(*a, **kw):
        if kw.get("ids_keep") is not None:
            kept.append(kw["ids_keep"].shape)
        return real(*a, **kw)

    monkeypatch.setattr(ts.model, "forward", spy)
    ts(*batch(), step=1)
    assert len(kept) == 4 and len(set(kept)) == 1 and kept[0][0] == 2


@pytest.mark.parametrize("optimizer", ["adan", "adamw"])
def test_non_finite_step_is_skipped_and_counted(optimizer):
    betas = (0.98, 0.92, 0.99) if optimizer == "adan" else (0.9, 0.999)
    ts = make_step(optimizer=optimizer, betas=betas, max_bad_steps=2)
    x, y = batch()
    ts(x, y, step=1)
    before = copy.deepcopy(ts.model.state_dict()), copy.deepcopy(ts.ema.state_dict())
    x_bad = x.clone()
    x_bad[0, 0, 0, 0] = float("nan")
    _, loss = ts(x_bad, y, step=2)
    assert not torch.isfinite(loss)
    for name, w in ts.model.state_dict().items():
        assert torch.equal(w, before[0][name]), f"{name} changed on a skipped step"
    for name, w in ts.ema.state_dict().items():
        assert torch.equal(w, before[1][name]), f"EMA {name} changed on a skipped step"
    assert int(ts.health.total) == 1 and int(ts.health.run) == 1 and int(ts.health.stop_at) == -1
    ts(x, y, step=3)  # a good step ends the run of bad ones and moves the weights again
    assert int(ts.health.run) == 0 and not torch.equal(ts.model.state_dict()["final_layer.linear.bias"],
                                                       before[0]["final_layer.linear.bias"])
    ts(x_bad, y, step=4)
    ts(x_bad, y, step=5)
    assert int(ts.health.total) == 3 and int(ts.health.stop_at) == 5  # the second in a row reached the limit


def test_gradient_checkpointing_gives_the_same_step():
    x, y = batch()
    runs = []
    for ckpt in (False, True):
        ts = make_step(grad_checkpoint=ckpt)
        perturb(ts.model)
        runs.append(one_step(ts, x, y))
    (l0, g0, _), (l1, g1, _) = runs
    torch.testing.assert_close(l1, l0, rtol=0, atol=0)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-5, atol=1e-7, msg=name)


def test_gradient_checkpointing_recomputes_the_blocks(monkeypatch):
    """Each block's forward runs twice per step (forward, then again in the backward) under checkpointing."""
    from mdt.models import MDTBlock

    calls = []
    real = MDTBlock.forward
    monkeypatch.setattr(MDTBlock, "forward", lambda self, *a, **kw: calls.append(1) or real(self, *a, **kw))
    for ckpt in (False, True):
        calls.clear()
        ts = make_step(grad_checkpoint=ckpt)
        ts(*batch(), step=1)
        counts = len(calls)
        if not ckpt:
            plain = counts
    assert counts == 2 * plain

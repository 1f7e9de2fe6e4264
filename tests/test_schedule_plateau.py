"""Pure parts of training: the WSD schedule, the plateau tracker, retention, the optimizer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from dp_hpc.train import plateau as pl
from records_helpers import train_state
from dp_hpc.train.checkpoint import retained
from dp_hpc.train.config import PatienceConfig, TrainConfig
from dp_hpc.train.schedule import lr_at, wsd_lr


# ----------------------------------------------------------------------------- schedule


def test_wsd_boundaries():
    kw = dict(peak=1.0, total=100, warmup=10, cooldown=20)
    assert wsd_lr(0, **kw) == pytest.approx(0.1)  # the first update is already non-zero
    assert wsd_lr(4, **kw) == pytest.approx(0.5)
    assert wsd_lr(9, **kw) == 1.0  # warm-up ends at the peak
    assert wsd_lr(10, **kw) == 1.0
    assert wsd_lr(79, **kw) == 1.0  # last stable step
    assert wsd_lr(80, **kw) == 1.0  # first cool-down step: cos(0)
    assert wsd_lr(90, **kw) == pytest.approx(0.5)  # half-way through the cosine
    last = wsd_lr(99, **kw)
    assert 0 < last == pytest.approx(0.5 * (1 + math.cos(math.pi * 19 / 20)))
    assert last < 0.01
    lrs = [wsd_lr(s, **kw) for s in range(100)]
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:11]))  # monotone up, then down
    assert all(a >= b for a, b in zip(lrs[80:], lrs[81:]))
    for bad in (-1, 100):
        with pytest.raises(ValueError):
            wsd_lr(bad, **kw)


def test_wsd_without_warmup_and_from_config():
    assert wsd_lr(0, peak=2.0, total=10, warmup=0, cooldown=2) == 2.0
    cfg = TrainConfig(total_steps=1000, warmup_steps=100, cooldown_steps=200, lr=3e-3)
    assert lr_at(99, cfg) == pytest.approx(3e-3)
    assert lr_at(cfg.decay_start, cfg) == pytest.approx(3e-3)
    assert lr_at(cfg.decay_start + 100, cfg) == pytest.approx(1.5e-3)


# ----------------------------------------------------------------------------- plateau


def run_sequence(accs, patience, min_delta=0.0, round_index=0):
    p = pl.start(patience, round_index)
    out = []
    for i, a in enumerate(accs):
        p = pl.observe(p, a, step=(i + 1) * 10, min_delta=min_delta)
        out.append(p)
    return out


def test_plateau_improve_and_stall():
    patience = PatienceConfig(initial=2, increment=1, max=5)
    seq = run_sequence([0.5, 0.6, 0.6, 0.55, 0.7, 0.7, 0.69], patience)
    assert [p.counter for p in seq] == [0, 0, 1, 2, 0, 1, 2]
    assert [p.best_val_acc for p in seq] == [0.5, 0.6, 0.6, 0.6, 0.7, 0.7, 0.7]
    assert seq[-1].best_step == 50
    assert [pl.should_exit(p, step=100, decay_start=1000) for p in seq] == [False] * 3 + [True] + [False] * 2 + [True]


def test_plateau_min_delta():
    patience = PatienceConfig(initial=1, increment=0, max=1, min_delta=0.05)
    seq = run_sequence([0.5, 0.54, 0.56], patience, min_delta=0.05)
    assert [p.counter for p in seq] == [0, 1, 0]  # 0.54 is not > 0.5 + 0.05; 0.56 is
    assert seq[1].best_val_acc == 0.5


def test_no_exit_in_cooldown():
    p = pl.Plateau(best_val_acc=0.9, best_step=10, counter=5, limit=1)
    assert pl.should_exit(p, step=799, decay_start=800)
    assert not pl.should_exit(p, step=800, decay_start=800)
    assert not pl.should_exit(p, step=900, decay_start=800)


def test_incremental_patience_per_round():
    patience = PatienceConfig(initial=1, increment=2, max=6)
    assert [patience.limit(r) for r in range(5)] == [1, 3, 5, 6, 6]
    p = pl.Plateau(best_val_acc=0.8, best_step=30, counter=1, limit=1)
    p = pl.new_round(p, 1, patience)
    assert (p.counter, p.limit, p.best_val_acc, p.best_step) == (0, 3, None, None)


def test_new_round_measures_the_current_round_not_the_old_best():
    """After an addition the first evaluation is the round's reference: a dip below the old best
    followed by a recovery counts as improvement, and only a stall *within* the round exits."""
    patience = PatienceConfig(initial=1, increment=1, max=6)
    p = pl.Plateau(best_val_acc=0.97, best_step=300, counter=1, limit=1)
    p = pl.new_round(p, 1, patience)  # limit 2
    p = pl.observe(p, 0.90, 350, 0.0)  # in the dip: the round's first evaluation
    assert (p.best_val_acc, p.counter) == (0.90, 0)
    p = pl.observe(p, 0.95, 400, 0.0)  # recovering: an improvement, although below 0.97
    assert (p.best_val_acc, p.counter) == (0.95, 0)
    p = pl.observe(p, 0.98, 450, 0.0)
    assert p.counter == 0 and not pl.should_exit(p, 450, 1000)
    p = pl.observe(p, 0.975, 500, 0.0)
    p = pl.observe(p, 0.98, 550, 0.0)
    assert p.counter == 2 and pl.should_exit(p, 550, 1000)
    # the old rule (best kept across the addition) would have counted the dip and exited at 400:
    old = pl.Plateau(best_val_acc=0.97, best_step=300, counter=0, limit=2)
    old = pl.observe(pl.observe(old, 0.90, 350, 0.0), 0.95, 400, 0.0)
    assert pl.should_exit(old, 400, 1000)


def test_no_plateau_exit_or_counting_during_warmup():
    patience = PatienceConfig(initial=1, increment=0, max=1)
    p = pl.start(patience, 0)
    p = pl.observe(p, 0.5, 50, 0.0, warmup_end=200)
    p = pl.observe(p, 0.5, 100, 0.0, warmup_end=200)  # no improvement, but in the warm-up
    assert p.counter == 0 and not pl.should_exit(p, 100, 1000, warmup_end=200)
    p = pl.observe(p, 0.6, 150, 0.0, warmup_end=200)  # warm-up evaluations still raise the best
    assert p.best_val_acc == 0.6
    p = pl.observe(p, 0.6, 200, 0.0, warmup_end=200)  # step 200: the last warm-up update
    assert p.counter == 0 and not pl.should_exit(p, 200, 1000, warmup_end=200)
    p = pl.observe(p, 0.6, 250, 0.0, warmup_end=200)
    assert p.counter == 1 and pl.should_exit(p, 250, 1000, warmup_end=200)
    # a counter carried into the warm-up (never from observe, but from a hand-made state) never exits
    assert not pl.should_exit(pl.Plateau(0.6, 50, 5, 1), 200, 1000, warmup_end=200)


def test_start_action():
    ts = lambda reason, rounds: train_state(100, reason, rounds)  # noqa: E731
    assert pl.start_action(None, [0], True) == "scratch"
    assert pl.start_action(ts("budget", [0]), [0, 1], True) == "return"
    assert pl.start_action(ts("plateau", [0]), [0], True) == "return"
    assert pl.start_action(ts("plateau", [0]), [0], False) == "continue"
    assert pl.start_action(ts("plateau", [0]), [0, 1], True) == "new_rounds"
    assert pl.start_action(ts("preempted", [0]), [0], True) == "continue"
    assert pl.start_action(ts(None, [0]), [0, 1], True) == "new_rounds"
    with pytest.raises(RuntimeError, match="no longer complete"):
        pl.start_action(ts(None, [0, 1]), [0], True)


# ----------------------------------------------------------------------------- retention


def test_retention_keeps_newest_and_plateaus():
    cks = [(Path(f"step_{s:08d}"), train_state(s, r)) for s, r in
           [(10, None), (20, "plateau"), (30, None), (40, "preempted"), (50, None)]]
    kept = retained(cks, keep=2)
    assert kept == {Path("step_00000020"), Path("step_00000040"), Path("step_00000050")}


# ----------------------------------------------------------------------------- optimizer


def test_adamw_matches_torch_bitwise():
    from dp_hpc.train.model import DigitsCNN
    from dp_hpc.train.optim import AdamW

    torch.manual_seed(0)
    a, b = DigitsCNN(width=8), DigitsCNN(width=8)
    b.load_state_dict(a.state_dict())
    ref = torch.optim.AdamW(a.parameters(), lr=1e-3, weight_decay=0.05, foreach=True)
    ours = AdamW(list(b.parameters()), lr=1e-3, weight_decay=0.05)
    gen = torch.Generator().manual_seed(1)
    for i in range(8):
        x, y = torch.rand(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        lr = 1e-3 * (i + 1)
        ref.param_groups[0]["lr"] = ours.lr = lr
        for m, o in ((a, ref), (b, ours)):
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            o.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def _feed_same_gradients(opts: list, params: list[list[torch.Tensor]], steps: int, seed: int = 1) -> None:
    """`steps` updates of each optimizer on its own copy of the parameters, all fed the same random
    gradients (spanning 1e-6..1 in size: Adam's eps matters at the small end) and the same new lr."""
    gen = torch.Generator().manual_seed(seed)
    for i in range(steps):
        grads = [torch.randn(p.shape, generator=gen) * 10.0 ** torch.randint(-6, 1, p.shape, generator=gen)
                 for p in params[0]]
        for opt, ps in zip(opts, params):
            opt.lr = 3e-3 * (i + 1) / steps
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            opt.step()


def _digits_params(copies: int) -> list[list[torch.Tensor]]:
    from dp_hpc.train.model import DigitsCNN

    torch.manual_seed(0)
    models = [DigitsCNN(width=8) for _ in range(copies)]
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
    return [list(m.parameters()) for m in models]


def test_fused_adamw_matches_ours_within_rounding():
    """torch's fused kernel (train.fused_adamw) against our foreach AdamW: decay groups, beta2 0.95, a
    new lr at every step. Both are fed the same gradients, which tests the optimizers alone (on a
    model each one's gradients follow its own weights, and any 1-ulp difference grows over steps, as
    a change of summation order does). Measured on CPU, torch 2.15: max |dw| 1.5e-8 after 20 steps
    (weights up to ~1; float32's ulp at 1 is 1.2e-7), the moments bitwise equal."""
    from dp_hpc.train.optim import AdamW, FusedAdamW

    ours_p, fused_p = _digits_params(2)
    decay = [p.ndim > 1 for p in ours_p]
    kw = dict(lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95), decay=decay)
    ours, fused = AdamW(ours_p, **kw), FusedAdamW(fused_p, **kw)
    assert {g["weight_decay"] for g in fused._opt.param_groups} == {0.05, 0.0} and fused._opt.defaults["fused"]
    _feed_same_gradients([ours, fused], [ours_p, fused_p], steps=20)
    assert max((p - q).abs().max().item() for p, q in zip(ours_p, fused_p)) <= 1e-7
    a, b = ours.state_dict(), fused.state_dict()
    assert a["step"] == b["step"] == 20 and a["hyper"] == b["hyper"]
    for x, y in zip(a["exp_avg"] + a["exp_avg_sq"], b["exp_avg"] + b["exp_avg_sq"], strict=True):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=0)


def test_fused_adamw_state_resumes_bitwise_and_is_ours():
    """The fused optimizer's checkpoint state, loaded into a fresh one, continues bit for bit; it has
    our AdamW's format (step count, moments in parameter order), so ours loads it too."""
    from dp_hpc.train.optim import AdamW, FusedAdamW

    whole_p, resumed_p, ours_p = _digits_params(3)
    kw = dict(lr=1e-3, weight_decay=0.05, decay=[p.ndim > 1 for p in whole_p])
    whole = FusedAdamW(whole_p, **kw)
    _feed_same_gradients([whole], [whole_p], steps=10, seed=1)
    state = whole.state_dict()
    assert state["step"] == 10 and len(state["exp_avg"]) == len(whole_p)
    for p, q in zip(whole_p, resumed_p):
        q.data.copy_(p)
    resumed = FusedAdamW(resumed_p, **kw)
    resumed.load_state_dict(state)
    ours = AdamW(ours_p, **kw)
    ours.load_state_dict(state)
    assert ours.step_count == 10
    _feed_same_gradients([whole, resumed], [whole_p, resumed_p], steps=10, seed=2)
    assert all(torch.equal(p, q) for p, q in zip(whole_p, resumed_p))
    assert resumed.state_dict()["step"] == 20


def test_the_trainer_builds_the_configured_adamw():
    """fused_adamw: torch's kernel with our decay groups; without it no torch.optim optimizer is
    built (its construction imports torch._dynamo: seconds per job)."""
    import subprocess
    import sys

    from dp_hpc.config import RunConfig
    from dp_hpc.train.distributed import Dist
    from dp_hpc.train.optim import FusedAdamW
    from dp_hpc.train.trainer import Trainer

    cfg = RunConfig()
    cfg.train.update_clipping, cfg.train.fused_adamw, cfg.train.adam_beta2 = False, True, 0.95
    opt = Trainer(cfg, Dist()).opt
    assert isinstance(opt, FusedAdamW) and opt.betas == (0.9, 0.95) and opt._opt.defaults["fused"]
    code = ("import sys; from dp_hpc.config import RunConfig; from dp_hpc.train.distributed import Dist; "
            "from dp_hpc.train.trainer import Trainer; Trainer(RunConfig(), Dist()); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"


def _adamw_updates(update_clipping: bool, grads: list[torch.Tensor], lr: float = 1e-2) -> list[torch.Tensor]:
    from dp_hpc.train.optim import AdamW

    p = torch.zeros(4096, requires_grad=True)
    opt = AdamW([p], lr=lr, weight_decay=0.0, update_clipping=update_clipping)
    out = []
    for g in grads:
        before = p.detach().clone()
        p.grad = g.clone()
        opt.step()
        out.append(p.detach() - before)
    return out


def test_update_clipping_stops_a_stale_second_moment_from_blowing_up_the_step():
    """The digits collapse in miniature: 3,000 quiet steps (gradients ~1e-3, a model at its loss floor)
    make Adam's second moment tiny; a sudden gradient ~100x larger then moves plain AdamW by ~3x lr
    per coordinate (the (1 - b1) / sqrt(1 - b2) bound), and update clipping keeps it below lr."""
    gen = torch.Generator().manual_seed(0)
    quiet = [1e-3 * torch.randn(4096, generator=gen) for _ in range(3000)]
    loud = [0.1 * torch.randn(4096, generator=gen) for _ in range(5)]
    lr = 1e-2
    plain = _adamw_updates(False, quiet + loud, lr)
    clipped = _adamw_updates(True, quiet + loud, lr)
    rms = lambda u: float(u.pow(2).mean().sqrt())  # noqa: E731
    assert rms(plain[3000]) > 2.5 * lr  # the blow-up: every coordinate near the 3.16 x lr bound
    assert rms(clipped[3000]) < 0.5 * lr
    assert sum(rms(u) for u in clipped[3000:]) < 0.25 * sum(rms(u) for u in plain[3000:])


def test_update_clipping_is_nearly_a_no_op_while_the_second_moment_is_current():
    """Stationary gradients: E[g^2 / v_hat] ~ 1, so the per-tensor factor stays within a few percent of 1
    (RMS over 4,096 coordinates fluctuates by ~sqrt(2 / 4096) ~ 2%)."""
    gen = torch.Generator().manual_seed(1)
    grads = [0.1 * torch.randn(4096, generator=gen) + 0.05 for _ in range(300)]
    plain = torch.stack(_adamw_updates(False, grads)).sum(0)
    clipped = torch.stack(_adamw_updates(True, grads)).sum(0)
    rel = float((clipped - plain).norm() / plain.norm())
    assert rel < 0.05


def test_update_clipping_with_weight_decay_but_no_decayed_parameter():
    from dp_hpc.train.optim import AdamW

    p = torch.ones(8, requires_grad=True)
    opt = AdamW([p], lr=0.1, weight_decay=0.05, decay=[False], update_clipping=True)
    p.grad = torch.ones(8)
    opt.step()  # must not build an empty foreach list
    assert torch.allclose(p.detach(), torch.full((8,), 0.9))  # first Adam step: -lr * sign(g), no decay


def test_the_trainer_builds_adamw_with_the_configured_beta2():
    from dp_hpc.config import RunConfig
    from dp_hpc.train.distributed import Dist
    from dp_hpc.train.trainer import Trainer

    cfg = RunConfig()
    cfg.train.adam_beta2 = 0.95
    assert Trainer(cfg, Dist()).opt.betas == (0.9, 0.95)

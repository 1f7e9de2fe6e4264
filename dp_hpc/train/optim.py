"""AdamW as a few `torch._foreach_*` calls: the same arithmetic as `torch.optim.AdamW(foreach=True)`
(decoupled weight decay, bias-corrected moments; tested equal to it), without its cost at
start-up: constructing any `torch.optim` optimizer imports `torch._dynamo` (3.1 s with warm
bytecode caches, 6 s without, measured on this project's CPU machines), paid by every training
job, and the coordinator starts one per round.

The state is plain: a step count and two lists of moment tensors, saved in the checkpoint.

Update clipping (`update_clipping=True`; StableAdamW, Wortsman et al. 2023, after Adafactor's
update clipping, Shazeer & Stern 2018): per tensor, the step size is divided by
max(1, RMS(g^2 / v_hat)). v_hat is a slow average of past g^2 (beta2 = 0.999: ~1,000 steps); after
a quiet phase (a classifier at its label-smoothing loss floor has gradients ~100x smaller than on
new, hard samples) a sudden gradient finds v_hat far too small, and every coordinate moves by up
to (1 - beta1) / sqrt(1 - beta2) = 3.2x lr in one step, then more as m catches up: measured on digits,
a 33x jump of |update| / |params| in the first step after a data addition, and the model collapsed
to chance within 3 steps. While v_hat is up to date, E[g^2 / v_hat] ~ 1 and nothing changes.

`FusedAdamW` (train.fused_adamw) is torch's fused kernel, `torch.optim.AdamW(fused=True)`: one
kernel launch per device and dtype instead of a dozen foreach passes, the same arithmetic up to
rounding, no update clipping. It saves and loads the same state format as `AdamW` (step count, two
moment lists in parameter order), so a checkpoint of either resumes in either.
"""

from __future__ import annotations

import torch


class AdamW:
    """`decay[i]` False exempts parameter i from weight decay (torch's two parameter groups)."""

    def __init__(self, params: list[torch.Tensor], *, lr: float, weight_decay: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, decay: list[bool] | None = None,
                 update_clipping: bool = False):
        self.params = list(params)
        self.update_clipping = update_clipping
        self.decay = [True] * len(self.params) if decay is None else list(decay)
        if len(self.decay) != len(self.params):
            raise ValueError(f"decay has {len(self.decay)} flags for {len(self.params)} parameters")
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.step_count = 0
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update with `self.lr` (set it before each step)."""
        params = [p for p in self.params if p.grad is not None]
        if len(params) != len(self.params):
            raise RuntimeError("AdamW.step: every parameter needs a gradient")
        grads = [p.grad for p in params]
        beta1, beta2 = self.betas
        self.step_count += 1
        torch._foreach_lerp_(self.exp_avg, grads, 1 - beta1)  # m = b1 m + (1 - b1) g
        torch._foreach_mul_(self.exp_avg_sq, beta2)  # v = b2 v + (1 - b2) g^2
        torch._foreach_addcmul_(self.exp_avg_sq, grads, grads, 1 - beta2)
        bias1 = 1 - beta1 ** float(self.step_count)
        bias2 = 1 - beta2 ** float(self.step_count)
        denom = torch._foreach_sqrt(self.exp_avg_sq)  # sqrt(v / bias2) + eps
        torch._foreach_div_(denom, bias2 ** 0.5)
        torch._foreach_add_(denom, self.eps)
        if not self.update_clipping:
            decayed = [p for p, d in zip(params, self.decay) if d]
            if self.weight_decay and decayed:
                torch._foreach_mul_(decayed, 1 - self.lr * self.weight_decay)
            torch._foreach_addcdiv_(params, self.exp_avg, denom, -self.lr / bias1)
            return
        # lr_i = lr / max(1, RMS(g^2 / max(v_hat, eps^2))) per tensor i; no host sync (scalars stay on
        # the device: the per-tensor factors are applied as tensors)
        v_hat = torch._foreach_div(self.exp_avg_sq, bias2)
        torch._foreach_clamp_min_(v_hat, self.eps ** 2)
        ratio = torch._foreach_div(torch._foreach_mul(grads, grads), v_hat)
        rms = torch.stack([r.mean() for r in ratio]).sqrt_()  # (n_tensors,)
        scale = 1.0 / rms.clamp_min(1.0)  # (n_tensors,)
        if self.weight_decay and any(self.decay):  # decoupled decay, scaled like the step
            wd = (1 - self.lr * self.weight_decay * scale).unbind()
            decayed = [i for i, d in enumerate(self.decay) if d]
            torch._foreach_mul_([params[i] for i in decayed], [wd[i] for i in decayed])
        step = torch._foreach_div(self.exp_avg, denom)  # m / (sqrt(v_hat) + eps), bias1 below
        torch._foreach_mul_(step, list(scale.mul(-self.lr / bias1).unbind()))
        torch._foreach_add_(params, step)

    def state_dict(self) -> dict:
        return {"step": self.step_count, "exp_avg": [t.clone() for t in self.exp_avg],
                "exp_avg_sq": [t.clone() for t in self.exp_avg_sq],
                "hyper": {"lr": self.lr, "weight_decay": self.weight_decay, "betas": list(self.betas),
                          "eps": self.eps}}

    def load_state_dict(self, state: dict) -> None:
        if len(state["exp_avg"]) != len(self.params):
            raise ValueError(f"optimizer state has {len(state['exp_avg'])} tensors, the model {len(self.params)}")
        self.step_count = int(state["step"])
        for dst, src in zip(self.exp_avg + self.exp_avg_sq, state["exp_avg"] + state["exp_avg_sq"]):
            dst.copy_(src)
        self.lr = float(state["hyper"]["lr"])


class FusedAdamW:
    """`torch.optim.AdamW(fused=True)` behind `AdamW`'s interface (`lr` set before each step, `decay`
    flags, state format). Constructing it imports torch._dynamo (1-6 s at start-up): only runs that
    ask for it pay that."""

    update_clipping = False  # the fused kernel has none (TrainConfig refuses the combination)

    def __init__(self, params: list[torch.Tensor], *, lr: float, weight_decay: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, decay: list[bool] | None = None):
        self.params = list(params)
        self.decay = [True] * len(self.params) if decay is None else list(decay)
        if len(self.decay) != len(self.params):
            raise ValueError(f"decay has {len(self.decay)} flags for {len(self.params)} parameters")
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        groups = [{"params": [p for p, d in zip(self.params, self.decay) if d], "weight_decay": weight_decay},
                  {"params": [p for p, d in zip(self.params, self.decay) if not d], "weight_decay": 0.0}]
        self._opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, eps=eps,
                                      fused=True)

    def zero_grad(self) -> None:
        self._opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self) -> None:
        """One update with `self.lr` (set it before each step)."""
        if any(p.grad is None for p in self.params):
            raise RuntimeError("FusedAdamW.step: every parameter needs a gradient")
        for g in self._opt.param_groups:
            g["lr"] = self.lr
        self._opt.step()

    def _moments(self, name: str) -> list[torch.Tensor]:
        # torch creates a parameter's state at its first step: zeros before that, as AdamW's
        return [self._opt.state[p][name].clone() if self._opt.state.get(p) else torch.zeros_like(p)
                for p in self.params]

    @property
    def step_count(self) -> int:
        state = self._opt.state.get(self.params[0]) if self.params else None
        return int(state["step"]) if state else 0  # a host sync on CUDA: checkpoints only

    def state_dict(self) -> dict:
        return {"step": self.step_count, "exp_avg": self._moments("exp_avg"),
                "exp_avg_sq": self._moments("exp_avg_sq"),
                "hyper": {"lr": self.lr, "weight_decay": self.weight_decay, "betas": list(self.betas),
                          "eps": self.eps}}

    def load_state_dict(self, state: dict) -> None:
        if len(state["exp_avg"]) != len(self.params):
            raise ValueError(f"optimizer state has {len(state['exp_avg'])} tensors, the model {len(self.params)}")
        step = int(state["step"])
        for p, m, v in zip(self.params, state["exp_avg"], state["exp_avg_sq"]):
            # torch's own layout of a fused state: the step a float32 scalar on the parameter's device
            self._opt.state[p] = {
                "step": torch.tensor(float(step), dtype=torch.float32, device=p.device),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format).copy_(m),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format).copy_(v)}
        self.lr = float(state["hyper"]["lr"])

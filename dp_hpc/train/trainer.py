"""One training step of the classifier, in every rank: `Trainer` holds the model, its EMA and
the optimizer, and does forward, backward, the gradient all-reduce across ranks, AdamW and the EMA
update. No I/O: the round loop (dp_hpc.train.loop) feeds it batches and checkpoints its state;
bench/gpu_check.py times it on a GPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dp_hpc.config import RunConfig
from dp_hpc.train.distributed import Dist
from dp_hpc.train.model import Numerics, classifier_for
from dp_hpc.train.optim import AdamW

if TYPE_CHECKING:
    from dp_hpc.signals import PreemptFlag


class Trainer:
    """Model, EMA copy and AdamW; one `step` = forward, backward, (all_reduce), update, EMA."""

    def __init__(self, cfg: RunConfig, d: Dist):
        self.cfg, self.d = cfg, d
        tc = cfg.train
        self.num = Numerics.of(tc.precision, d.device)
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(cfg.seed)
            self.model = classifier_for(cfg)
        self.num.place(self.model, d.device).train()
        self.ema = self.num.place(classifier_for(cfg), d.device).eval()
        self.ema.load_state_dict(self.model.state_dict())
        self.ema.requires_grad_(False)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self.ema_params = list(self.ema.parameters())
        # Persistent buffers (BatchNorm statistics of resnet50; digits_cnn and ViT have none): not
        # averaged by the EMA but copied to it, and averaged over ranks with the gradients.
        self.buffers, self.ema_buffers = _persistent_buffers(self.model), _persistent_buffers(self.ema)
        # torch.optim.AdamW(foreach=True)'s arithmetic without its 3-6 s import of torch._dynamo
        self.opt = AdamW(self.params, lr=tc.lr, weight_decay=tc.weight_decay,
                         decay=[tc.decays_everything or decays(n, p) for n, p in named],
                         update_clipping=tc.update_clipping)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=d.device)
        """Sum of (global-batch mean) training losses since the last evaluation."""
        self.loss_count = 0

    def step(self, x: torch.Tensor, y: torch.Tensor, lr: float, flag: "PreemptFlag") -> bool:
        """One update on images x (b, C, H, W) in [0, 1] and targets y: class indices (b,) or
        Mixup/CutMix soft targets (b, K). Returns whether any rank's flag was set by the end of this
        step (when distributed: before its all_reduce, so all ranks return the same answer)."""
        self.opt.lr = lr
        with self.num.autocast():
            logits = self.model(self.num.images(x))
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.train.label_smoothing)
        self.opt.zero_grad()
        loss.backward()
        loss = loss.detach()
        if self.d.world_size > 1:
            # one collective per step: [grads..., float buffers..., loss, flag] summed over ranks
            tensors = [p.grad for p in self.params] + [b for b in self.buffers if b.is_floating_point()]
            flat = torch.cat([t.reshape(-1) for t in tensors]
                             + [loss.view(1), torch.tensor([float(flag.set)], device=loss.device)])
            dist.all_reduce(flat)
            flat.div_(self.d.world_size)
            offset = 0
            for t in tensors:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()
            loss = flat[offset]
            stop = bool(flat[offset + 1].item() > 0)  # host sync (free on CPU; on CUDA, one per step)
        self.opt.step()
        with torch.no_grad():  # ema += rate * (param - ema)
            torch._foreach_lerp_(self.ema_params, self.params, self.cfg.train.ema)
            if self.buffers:
                torch._foreach_copy_(self.ema_buffers, self.buffers)
        self.loss_sum += loss.double()
        self.loss_count += 1
        return stop if self.d.world_size > 1 else flag.set

    def pop_train_loss(self) -> torch.Tensor:
        """Mean training loss since the last call (a device scalar; no sync)."""
        out = self.loss_sum / max(self.loss_count, 1)
        self.loss_sum = torch.zeros_like(self.loss_sum)
        self.loss_count = 0
        return out

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.opt.state_dict(),
                "train_loss": {"sum": self.loss_sum.cpu(), "count": self.loss_count}}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        self.loss_sum = state["train_loss"]["sum"].to(self.d.device)
        self.loss_count = int(state["train_loss"]["count"])


def decays(name: str, p: torch.Tensor) -> bool:
    """DeiT/timm's ViT recipe: no weight decay on biases and norm gains (1-D), nor on ViT's
    position embedding and class token."""
    return p.ndim > 1 and not name.endswith(("pos_embedding", "class_token"))


def _persistent_buffers(model: nn.Module) -> list[torch.Tensor]:
    """The buffers a checkpoint holds, in state_dict order."""
    return [t for t in model.state_dict(keep_vars=True).values() if not isinstance(t, nn.Parameter)]

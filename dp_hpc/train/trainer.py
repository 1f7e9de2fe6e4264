"""One training step of the classifier, in every rank: `Trainer` holds the model, its EMA and
the optimizer, and does forward, backward (under DistributedDataParallel when there is a process
group: the gradient all-reduce in buckets, overlapped with the backward), AdamW and the EMA update. No I/O: the round loop (dp_hpc.train.loop) feeds it batches and checkpoints its state;
bench/gpu_check.py times it on a GPU.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dp_hpc.config import RunConfig
from dp_hpc.train.distributed import Dist
from dp_hpc.train.model import Numerics, classifier_for
from dp_hpc.train.optim import AdamW, FusedAdamW

if TYPE_CHECKING:
    from dp_hpc.signals import PreemptFlag


class Trainer:
    """Model, EMA copy and AdamW (ours, or torch's fused kernel); one `step` = forward, backward
    (DDP), update, EMA."""

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
        # Persistent buffers (BatchNorm statistics of the ResNets; digits_cnn and ViT have none): not
        # averaged by the EMA but copied to it, and averaged over ranks with the gradients.
        self.buffers, self.ema_buffers = _persistent_buffers(self.model), _persistent_buffers(self.ema)
        hyper = dict(lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, tc.adam_beta2),
                     decay=[tc.decays_everything or decays(n, p) for n, p in named])
        # ours: torch.optim.AdamW(foreach=True)'s arithmetic without its 3-6 s import of torch._dynamo
        self.opt = (FusedAdamW(self.params, **hyper) if tc.fused_adamw
                    else AdamW(self.params, **hyper, update_clipping=tc.update_clipping))
        self.ddp = None
        if dist.is_available() and dist.is_initialized():
            # gradients averaged in buckets while the backward runs; BatchNorm statistics are
            # averaged with the loss below instead of rank 0's broadcast
            self.ddp = DistributedDataParallel(self.model, device_ids=[d.device] if d.device.type == "cuda" else None,
                                               broadcast_buffers=False)
        cuda = d.device.type == "cuda"
        self._stop_host = torch.zeros(1, pin_memory=cuda)  # the previous step's "any rank's flag set"
        self._stop_event = torch.cuda.Event() if cuda else None
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=d.device)
        """Sum of (global-batch mean) training losses since the last evaluation."""
        self.loss_count = 0

    def step(self, x: torch.Tensor, y: torch.Tensor, lr: float, flag: "PreemptFlag") -> bool:
        """One update on images x (b, C, H, W) in [0, 1] and targets y: class indices (b,) or
        Mixup/CutMix soft targets (b, K). Returns whether to stop: in one process, whether the flag
        is set; when distributed, whether any rank's flag was set by the end of the *previous* step
        (so every rank returns the same answer, and no step waits for the GPU to read it)."""
        self.opt.lr = lr
        with self.num.autocast():
            logits = (self.ddp or self.model)(self.num.images(x))
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.train.label_smoothing)
        self.opt.zero_grad()
        loss.backward()  # distributed: DDP averages the gradients in buckets, overlapped with the backward
        loss = loss.detach()
        stop = flag.set
        if self.ddp is not None:
            stop = self._stop_seen()
            # one small collective per step: [float buffers..., loss, flag] averaged over ranks
            # (stream-ordered like DDP's: the host does not wait for it)
            floats = [b for b in self.buffers if b.is_floating_point()]
            small = torch.cat([t.reshape(-1) for t in floats]
                              + [loss.view(1).float(), torch.tensor([float(flag.set)], device=loss.device)])
            dist.all_reduce(small)
            small.div_(self.d.world_size)
            offset = 0
            for t in floats:
                t.copy_(small[offset : offset + t.numel()].view_as(t))
                offset += t.numel()
            loss = small[offset]
            self._stop_host.copy_(small[offset + 1 :], non_blocking=True)
            if self._stop_event is not None:
                self._stop_event.record()
        self.opt.step()
        with torch.no_grad():  # ema += rate * (param - ema)
            torch._foreach_lerp_(self.ema_params, self.params, self.cfg.train.ema)
            if self.buffers:
                torch._foreach_copy_(self.ema_buffers, self.buffers)
        self.loss_sum += loss.double()
        self.loss_count += 1
        return stop

    def _stop_seen(self) -> bool:
        """Whether any rank's flag was set at the previous step: its all_reduced value, copied to
        the host then; on CUDA this waits only for that copy, which the GPU has long passed."""
        if self._stop_event is not None:
            self._stop_event.synchronize()
        return bool(self._stop_host.item() > 0)

    def fingerprint(self) -> str:
        """state_fingerprint of this rank's model and EMA (weights and buffers)."""
        return state_fingerprint(self.model.state_dict(), self.ema.state_dict())

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


_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def state_fingerprint(*state_dicts: dict) -> str:
    """16 hex digits that change when any value of these tensors changes (weights and buffers, in
    state_dict order): each tensor's bits read as integers and summed exactly (int64, so the order
    of the sum does not matter), then hashed. Ranks that print the same fingerprint, or a rank and a
    checkpoint (`state_fingerprint(state["model"], state["ema"])`), hold the same bits; a permutation
    of values within one tensor goes unseen. On a GPU: one sum per tensor there, one small copy to
    the host."""
    sums = [t.detach().reshape(-1).view(_BITS[t.element_size()]).sum(dtype=torch.int64)
            for sd in state_dicts for t in sd.values()]
    data = torch.stack(sums).cpu().numpy().tobytes() if sums else b""
    return hashlib.sha256(data).hexdigest()[:16]


def _persistent_buffers(model: nn.Module) -> list[torch.Tensor]:
    """The buffers a checkpoint holds, in state_dict order."""
    return [t for t in model.state_dict(keep_vars=True).values() if not isinstance(t, nn.Parameter)]

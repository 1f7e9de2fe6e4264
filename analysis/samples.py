"""A grid of plain vs entropy-guided samples of one generated round: what guidance does to a class.

    python -m analysis.samples <out>/<sweep>/<run> --round R [--per-class 4] [--omega W] [--out FILE.png]

For the first `per_class` seeds of each class in round R of a run, it samples the sweep's generator
twice from the same seeds and initial noise: plainly, and with the round's entropy guidance steered
by the round's own classifier checkpoint (omega from the run's config, or --omega for runs whose
rounds are not guided: prune, dp's omega = 0 ablation). Rows are classes; each
pair of columns is plain | guided. Under each image: the steering classifier's entropy, and the
oracle's reading where it disagrees with the label (the generator folder's oracle.pt, a classifier
trained on the real generator-train images). digits_unet generators only (Stable Diffusion needs a
GPU to be practical); the images are regenerated, so the run's pool is only read.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from dp_hpc.errors import run_main


def sample_pairs(run_dir: Path, round_index: int, per_class: int, omega: float | None = None) -> dict:
    import torch

    from dp_hpc.config import load_run_config
    from dp_hpc.coordinate.state import load_state
    from dp_hpc.generate.cache import generator_key
    from dp_hpc.generate.sampler import sample_images
    from dp_hpc.generate.shard import load_oracle, load_sampling_model, oracle_labels
    from dp_hpc.layout import RunDir, SweepDir
    from dp_hpc.pool import Pool
    from dp_hpc.train.checkpoint import load_classifier

    cfg = load_run_config(run_dir)
    st = load_state(run_dir)
    rec = st.rounds[round_index] if st and round_index < len(st.rounds) else None
    if rec is None or rec.classifier_step is None:
        raise ValueError(f"{run_dir}: round {round_index} has no steering classifier (round 0 is plain)")
    gen_dir = SweepDir(Path(run_dir).resolve().parent).generator(generator_key(cfg)).path
    model, scheduler = load_sampling_model(gen_dir, cfg.generator)
    oracle = load_oracle(gen_dir, cfg.generator, model.device)
    clf = load_classifier(RunDir(run_dir).checkpoint(rec.classifier_step), cfg, device=model.device)
    g = Pool(run_dir).group(round_index)
    labels, seeds = g["labels"][:], g["seeds"][:]
    k = int(g.attrs["num_classes"])
    per_class = min(per_class, *(int((labels == c).sum()) for c in range(k)))  # every class the same count
    pick = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(k)])
    size = int(g["images"].shape[-1])
    omega = cfg.sampler.omega if omega is None else omega
    if not omega > 0:
        raise ValueError(f"{run_dir}: its rounds are not entropy-guided (omega {cfg.sampler.omega}); "
                         "pass --omega W to see what guidance of strength W would do to them")
    out = {}
    for name, w in (("plain", 0.0), ("guided", omega)):
        s = sample_images(model, scheduler, torch.from_numpy(labels[pick]), [int(x) for x in seeds[pick]],
                          dataclasses.replace(cfg.sampler, omega=w), storage_size=size, classifier=clf)
        out[name] = {"images": s.images, "entropy": s.entropy, "oracle": oracle_labels(oracle, s.images)}
    out.update(labels=labels[pick], num_classes=k, per_class=per_class, omega=omega,
               classifier_step=rec.classifier_step)
    return out


def plot_pairs(pairs: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k, n = pairs["num_classes"], pairs["per_class"]
    fig, axes = plt.subplots(k, 2 * n, figsize=(1.1 * 2 * n, 1.25 * k), squeeze=False)
    for c in range(k):
        for j in range(n):
            i = c * n + j
            for side, name in enumerate(("plain", "guided")):
                ax = axes[c][2 * j + side]
                s = pairs[name]
                ax.imshow(s["images"][i].transpose(1, 2, 0).squeeze(), cmap="gray", vmin=0, vmax=255)
                ax.set_xticks([]), ax.set_yticks([])
                read = s["oracle"][i] if s["oracle"] is not None else pairs["labels"][i]
                mark = "" if read == pairs["labels"][i] else f" ->{read}"
                ax.set_xlabel(f"H {s['entropy'][i]:.2f}{mark}", fontsize=6, color="C3" if mark else "k")
                if c == 0:
                    ax.set_title(name, fontsize=7)
            axes[c][0].set_ylabel(str(c), rotation=0, fontsize=8, labelpad=8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.samples", description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a run folder <out>/<sweep>/<run>")
    p.add_argument("--round", type=int, required=True, help="a generated round >= 1")
    p.add_argument("--per-class", type=int, default=4)
    p.add_argument("--omega", type=float, default=None, help="guidance strength (default: the run's sampler.omega)")
    p.add_argument("--out", type=Path, default=None, help="PNG path (default samples_<run>_round_R.png here)")
    a = p.parse_args(argv)
    from dp_hpc.layout import RunDir

    if not RunDir(a.run).config.is_file():
        print(f"error: {a.run} is not a run folder (no config.yaml)", file=sys.stderr)
        return 2
    try:
        pairs = sample_pairs(a.run, a.round, a.per_class, a.omega)
    except (ValueError, IndexError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = a.out or Path(f"samples_{a.run.name}_round_{a.round:03d}.png")
    plot_pairs(pairs, out, f"{a.run.name}, round {a.round}: plain | guided (omega {pairs['omega']}), same seeds\n"
                           f"steered by the step-{pairs['classifier_step']} classifier; H = its entropy, "
                           f"red: the oracle reads another digit")
    mean = {k: float(np.mean(pairs[k]["entropy"])) for k in ("plain", "guided")}
    print(f"{out}: mean entropy plain {mean['plain']:.3f}, guided {mean['guided']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))

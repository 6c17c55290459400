"""A small, deterministic torch training loop that checkpoints and resumes.

Synthetic regression data, a 3-layer MLP, fixed seeds. It saves a checkpoint every
--save-every steps (atomically: temp file, fsync, rename) and, when started again with
the same checkpoint directory, resumes from the newest one. Runs on the GPUs it is given
(CUDA_VISIBLE_DEVICES), or on the CPU where there are none.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import torch
from torch import nn


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    job = os.environ.get("GSHARE_JOB_ID", "local")
    default_dir = os.environ.get("GSHARE_CHECKPOINT_DIR") or f"checkpoints/job-{job}"
    p.add_argument("--checkpoint-dir", type=Path, default=Path(default_dir))
    return p.parse_args()


def save(path: Path, state: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main() -> None:
    args = parse()
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    true_w = torch.randn(32, 1)
    model = nn.Sequential(
        nn.Linear(32, args.width),
        nn.ReLU(),
        nn.Linear(args.width, args.width),
        nn.ReLU(),
        nn.Linear(args.width, 1),
    ).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step = 0
    gen = torch.Generator().manual_seed(args.seed + 1)  # the synthetic data stream
    args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    latest = args.checkpoint_dir / "latest.pt"
    if latest.exists():
        state = torch.load(latest, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        gen.set_state(state["data_rng"])
        step = int(state["step"])
        print(f"resumed from {latest} at step {step}", flush=True)
    started = time.time()
    while step < args.steps:
        x = torch.randn(args.batch, 32, generator=gen)
        y = x @ true_w + 0.1 * torch.randn(args.batch, 1, generator=gen)
        loss = nn.functional.mse_loss(model(x.to(device)), y.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % args.save_every == 0 or step == args.steps:
            save(
                latest,
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "rng": torch.get_rng_state(),
                    "data_rng": gen.get_state(),
                    "step": step,
                },
            )
            print(f"step {step:5d}  loss {loss.item():.4f}  checkpoint saved", flush=True)
    print(f"done: {step} steps in {time.time() - started:.1f}s on {device}", flush=True)


if __name__ == "__main__":
    main()

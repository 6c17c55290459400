"""A small, deterministic torch training job that checkpoints, yields and resumes.

Synthetic regression data, a 3-layer MLP, AdamW with a step LR schedule, fixed seeds.
It checkpoints every --save-every steps through gshare.checkpoint (model, optimizer,
scheduler, every RNG and the data stream's position), and when gshare asks it to yield
(SIGUSR1) it saves at the next step boundary and exits with the "yielded" code; gshare
requeues it and the next run resumes from that checkpoint. Preempted or not, the final
weights are bitwise the same. Runs on the GPUs it is given, or on the CPU.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from torch import nn

from gshare.checkpoint import Checkpointer


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step-sleep", type=float, default=0.0, help="seconds to idle per step (demos)")
    p.add_argument("--checkpoint-dir", type=Path, help="default: $GSHARE_CHECKPOINT_DIR")
    p.add_argument("--out", type=Path, help="final weights (default: CHECKPOINT_DIR/final.pt)")
    return p.parse_args()


def main() -> None:
    args = parse()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))  # same threads, same sums
    torch.use_deterministic_algorithms(True)
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    ckpt = Checkpointer(args.checkpoint_dir)
    torch.manual_seed(args.seed)
    true_w = torch.randn(32, 1)
    model = nn.Sequential(
        nn.Linear(32, args.width),
        nn.ReLU(),
        nn.Linear(args.width, args.width),
        nn.ReLU(),
        nn.Linear(args.width, 1),
    ).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.5)
    data = torch.Generator().manual_seed(args.seed + 1)  # the synthetic data stream
    step = 0
    resumed = ckpt.load_torch(model, opt, sched, map_location=device)
    if resumed is not None:
        step = resumed["step"]
        data.set_state(resumed["extra"]["data_rng"])
        print(f"resumed at step {step} (restart {ckpt.restart_count})", flush=True)
    started = time.time()
    while step < args.steps:
        x = torch.randn(args.batch, 32, generator=data)
        y = x @ true_w + 0.1 * torch.randn(args.batch, 1, generator=data)
        loss = nn.functional.mse_loss(model(x.to(device)), y.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if args.step_sleep:
            time.sleep(args.step_sleep)
        stop = ckpt.should_stop()
        if step % args.save_every == 0 or stop:
            ckpt.save_torch(step, model, opt, sched, data_rng=data.get_state())
            print(f"step {step:5d}  loss {loss.item():.4f}  checkpoint saved", flush=True)
        if stop:
            print(f"yielding at step {step}", flush=True)
            ckpt.exit_yielded()
    out = args.out or ckpt.directory / "final.pt"
    torch.save(model.state_dict(), out)
    print(
        f"done: {step} steps in {time.time() - started:.1f}s on {device}; weights in {out}",
        flush=True,
    )


if __name__ == "__main__":
    main()

"""A deterministic data-parallel torch job across nodes: DistributedDataParallel (gloo on
the CPU, NCCL on GPUs), checkpointed by rank 0 through gshare.checkpoint, resumed by every
rank, and stopped by all ranks together at the same step when gshare asks the job to
yield. Preempted or not, on the same nodes or others, the final weights are bitwise the
same.

Each rank's batch is a pure function of (seed, step, rank), so there is no data position
to save; the model starts from the same seed on every rank (DDP also broadcasts it).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gshare.checkpoint import Checkpointer


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step-sleep", type=float, default=0.0, help="seconds to idle per step (demos)")
    p.add_argument("--checkpoint-dir", type=Path, help="default: $GSHARE_CHECKPOINT_DIR")
    p.add_argument("--out", type=Path, help="final weights (default: CHECKPOINT_DIR/final.pt)")
    return p.parse_args()


def batch(
    seed: int, step: int, rank: int, size: int, true_w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 1_009 + rank)
    x = torch.randn(size, true_w.shape[0], generator=g)
    return x, x @ true_w + 0.1 * torch.randn(size, 1, generator=g)


def main() -> None:
    args = parse()
    torch.set_num_threads(1)  # the same threads, the same sums
    torch.use_deterministic_algorithms(True)
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    node, gpus = os.environ.get("GSHARE_NODE", "?"), os.environ.get("CUDA_VISIBLE_DEVICES", "")
    print(f"rank {rank}/{world} local {local_rank} on {node} GPUs {gpus}", flush=True)
    ckpt = Checkpointer(args.checkpoint_dir)  # only rank 0 writes; all load
    torch.manual_seed(args.seed)
    true_w = torch.randn(16, 1)
    model = nn.Sequential(nn.Linear(16, args.width), nn.ReLU(), nn.Linear(args.width, 1)).to(device)
    # find_unused_parameters: DDP never rebuilds its buckets after the first step, so a run
    # resumed from a checkpoint sums gradients in the same order as one never stopped
    ddp = DistributedDataParallel(
        model, device_ids=[local_rank] if cuda else None, find_unused_parameters=True
    )
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
    step = 0
    resumed = ckpt.load_torch(model, opt, map_location=device)
    if resumed is not None:
        step = resumed["step"]
        if rank == 0:
            print(f"resumed at step {step} (restart {ckpt.restart_count})", flush=True)
    started = time.time()
    stop = torch.zeros(1, device=device)
    while step < args.steps:
        x, y = batch(args.seed, step, rank, args.batch, true_w)
        loss = nn.functional.mse_loss(ddp(x.to(device)), y.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if args.step_sleep:
            time.sleep(args.step_sleep)
        # every rank stops at the same step: the first to be asked decides for all
        stop.fill_(1.0 if ckpt.should_stop() else 0.0)
        dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        yielding = bool(stop.item())
        if step % args.save_every == 0 or yielding:
            ckpt.save_torch(step, model, opt)
            if rank == 0:
                print(f"step {step:5d}  loss {loss.item():.4f}  checkpoint saved", flush=True)
        if yielding:
            dist.barrier()  # rank 0's checkpoint is complete before anyone leaves
            if rank == 0:
                print(f"all {world} ranks yield at step {step}", flush=True)
            dist.destroy_process_group()
            ckpt.exit_yielded()
    if rank == 0:
        out = args.out or ckpt.directory / "final.pt"
        torch.save(model.state_dict(), out)
        print(
            f"done: {step} steps, {world} ranks, {time.time() - started:.1f}s; weights in {out}",
            flush=True,
        )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""The node commands: `gshare nodes` (with --gpus), `gshare drain` and `gshare resume`."""

from __future__ import annotations

import argparse
import json

from gshare.api import gshare_pb2 as pb
from gshare.cli.common import UsageError
from gshare.cli.render import _gpu_table, _metrics_json, _short, table
from gshare.client import Client
from gshare.render import printable


def cmd_nodes(client: Client, args: argparse.Namespace) -> int:
    nodes = client.nodes()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": n.name,
                        "state": pb.NodeState.Name(n.state).removeprefix("NODE_"),
                        "reason": n.reason,
                        "gpu_backend": n.gpu_backend,
                        "confinement": n.confinement or None,
                        "telemetry": n.telemetry or None,
                        "drained": n.drained,
                        "gpus": [
                            {
                                "index": g.index,
                                "uuid": g.uuid,
                                "model": g.model,
                                "memory_mb": g.memory_mb,
                                "nvlink_peers": list(g.nvlink_peers),
                                "busy": g.index in n.busy_gpus,
                                "drained": g.drained or None,
                                "warnings": list(g.warnings),
                                "metrics": _metrics_json(g.metrics)
                                if g.HasField("metrics")
                                else None,
                            }
                            for g in n.gpus
                        ],
                        "cpus": n.cpus,
                        "mem_mb": n.mem_mb,
                    }
                    for n in nodes
                ],
                indent=2,
            )
        )
        return 0
    rows = []
    for n in nodes:
        models = sorted({g.model for g in n.gpus})
        rows.append(
            [
                printable(n.name),
                pb.NodeState.Name(n.state).removeprefix("NODE_"),
                f"{len(n.busy_gpus)}/{len(n.gpus)}",
                printable(", ".join(models)) or "-",
                printable(n.gpu_backend) or "-",
                str(n.cpus),
                f"{n.mem_mb // 1024}G",
                _short(printable(n.confinement), 40) or "-",
                _short(printable(n.reason), 40),
            ]
        )
    print(
        table(
            rows,
            [
                "NODE",
                "STATE",
                "GPUS(USED/ALL)",
                "MODEL",
                "BACKEND",
                "CPUS",
                "MEM",
                "CONFINED",
                "REASON",
            ],
        )
    )
    if args.gpus:
        print()
        print(_gpu_table(nodes))
    notes = [
        printable(f"  {n.name} GPU {g.index}: {text}")
        for n in nodes
        for g in n.gpus
        for text in ([f"drained: {g.drained}"] if g.drained else []) + list(g.warnings)
    ]
    if notes:
        print("\nGPUs out of scheduling or with stray processes:")
        print("\n".join(notes))
    return 0


def cmd_drain(client: Client, args: argparse.Namespace) -> int:
    node, gpu = _node_gpu(args.target)
    resume = args.command == "resume"
    n = client.drain(node, gpu, resume, args.reason or "")
    what = f"{node} GPU {gpu}" if gpu >= 0 else node
    print(f"{what}: {'back in scheduling' if resume else 'drained'}")
    if not resume and gpu < 0 and n.busy_gpus:
        print(f"  {len(n.busy_gpus)} GPUs still run jobs; they finish where they are")
    return 0


def _node_gpu(target: str) -> tuple[str, int]:
    node, sep, gpu = target.partition(":")
    if not node or (sep and not gpu.isdigit()):
        raise UsageError(f"expected NODE or NODE:GPU, not {target!r}")
    return node, int(gpu) if sep else -1

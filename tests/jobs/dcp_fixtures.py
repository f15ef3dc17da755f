"""Write real multi-rank torch.distributed.checkpoint folders: FSDP2 on 2 CPU ranks (gloo, spawn).

``python tests/jobs/dcp_fixtures.py OUT_DIR`` writes, after one AdamW step of a small model whose
parameters shard unevenly over the 2 ranks (7 rows on 2 ranks: chunks of 4 and 3 rows):

* ``OUT/fsdp2``: ``dcp.save({"model": ..., "optim": ...})`` of ``get_state_dict`` (DTensor shards,
  as torch's FSDP2 recipe and accelerate's FSDP2 checkpoints save them), plus a ``step`` int;
* ``OUT/fsdp2_app``: ``{"app": {"model": ..., "optim": ...}}``, the DCP tutorial's nesting;
* ``OUT/columns``: ``{"state_dict": ...}`` of DTensors sharded by columns
  (``Shard(1)``: each chunk is strided in the whole tensor) and bf16 rows, and a 0-d tensor;
* ``OUT/<name>.pt``: torch's own ``dcp_to_torch_save`` of each folder (the reference).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _rank(rank: int, world: int, out: str, port: int) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.fsdp import fully_shard

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Embedding(11, 6),
        torch.nn.Linear(6, 7),
        torch.nn.LayerNorm(7),
        torch.nn.Linear(7, 5, bias=False),
    )
    model.register_buffer("scale", torch.arange(3, dtype=torch.float64))
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    optim = torch.optim.AdamW(model.parameters(), lr=0.1)
    loss = model(torch.arange(4).view(2, 2)).sum()
    loss.backward()
    optim.step()
    msd, osd = get_state_dict(model, optim)
    dcp.save({"model": msd, "optim": osd, "step": 3}, checkpoint_id=f"{out}/fsdp2")
    dcp.save({"app": {"model": msd, "optim": osd}}, checkpoint_id=f"{out}/fsdp2_app")
    # column shards (tensor parallel style): chunks that are not contiguous blocks of the whole
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    cols = {
        "col.weight": distribute_tensor(torch.randn(3, 5), mesh, [Shard(1)]),
        "half.weight": distribute_tensor(torch.randn(5, 4).bfloat16(), mesh, [Shard(0)]),
        "scalar": torch.tensor(2.5),
    }
    dcp.save({"state_dict": cols, "epoch": 1}, checkpoint_id=f"{out}/columns")
    dist.barrier()
    dist.destroy_process_group()


def main(out: str) -> None:
    import socket

    import torch.multiprocessing as mp
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(2, out, port), nprocs=2, join=True, start_method="spawn")
    for name in ("fsdp2", "fsdp2_app", "columns"):
        dcp_to_torch_save(Path(out) / name, Path(out) / f"{name}.pt")


if __name__ == "__main__":
    main(sys.argv[1])

"""One rank of the two-process DDP test (launched by ``tests/test_ddp.py`` through torchrun).

Kept as a plain script rather than a pytest fixture because torchrun needs a file to execute in
each child process. Every rank trains the same tiny supernet for a few steps, then writes its
*parameters* to ``<work>/rank{R}.pt``; the BN buffers are left out on purpose, because DDP
broadcasts rank 0's buffers at the start of each forward, so after the last step each rank's own
running statistics may legitimately differ. Rank 0 also writes ``init.pt``: the parameters before
training, rebuilt the way ``train_supernet`` builds them (``torch.manual_seed(cfg.seed)`` then
``Supernet(...)``; DDP then copies rank 0's values to all ranks), so the test can prove that training
actually moved the weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from edgenas.data import DataConfig, load_dataset
from edgenas.space import create_space
from edgenas.supernet import Supernet
from edgenas.torch_utils import dist_info
from edgenas.train import TrainConfig, train_supernet

STEPS = 4
BATCH_SIZE = 16


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="train_supernet's out_dir (same for all ranks)")
    parser.add_argument("--work", type=Path, required=True, help="where each rank writes rank{R}.pt")
    parser.add_argument("--width-mult", type=float, default=0.25)
    parser.add_argument("--weights", default="separate")
    parser.add_argument("--recipe", default="single")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # two ranks on a shared two-core machine: oversubscription would only slow it down
    space = create_space("mbv3", "small", width_mult=args.width_mult)
    data_config = DataConfig(name="digits", resize=None)
    data = load_dataset(data_config)
    cfg = TrainConfig(epochs=1, batch_size=BATCH_SIZE, steps_per_epoch=STEPS, val_archs=1, val_batches=1,
                      bn_recal_batches=1, amp=False, channels_last=False, device="cpu", seed=0,
                      weights=args.weights, recipe=args.recipe, sandwich_random=1)
    rank = dist_info().rank
    args.work.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        torch.manual_seed(cfg.seed)
        torch.save(_params(Supernet(space, data.num_classes, data.in_channels, args.weights)), args.work / "init.pt")
    try:
        result = train_supernet(space, data, cfg, args.out, data_config=data_config)
        torch.save(_params(result.supernet), args.work / f"rank{rank}.pt")
    finally:
        # train_supernet opens the process group but leaves closing it to the caller.
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()

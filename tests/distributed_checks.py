"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node=2``: the collectives of ddpmkit.distributed on
the process group that ``distributed.setup`` joins. Exits non-zero (with the failed check) when one fails."""
import signal

import torch

from ddpmkit import distributed


def main() -> None:
    distributed.setup("cpu")
    rank = distributed.rank()
    try:
        share = list(distributed.my_share(5))
        assert share == list(range(rank, 5, 2)), share
        assert distributed.gather_in_order([f"item {i}" for i in share], 5) == [f"item {i}" for i in range(5)]
        assert distributed.sum_over_ranks([1.0, rank]) == [2.0, 1.0]
        vote = distributed.StopVote()
        assert vote(signal.SIGTERM if rank == 1 else 0) == 0  # cast at boundary k ...
        assert vote(0) == signal.SIGTERM                      # ... agreed by both at boundary k + 1
        vote.close()
        net = torch.nn.Linear(3, 2)
        torch.nn.init.constant_(net.weight, 1.0)
        torch.nn.init.constant_(net.bias, 0.0)
        assert distributed.first_difference({"ema": net}) is None
        if rank == 1:
            with torch.no_grad():
                net.weight[0, 2] += 1e-7
        assert distributed.first_difference({"ema": net}) == "ema: weight on rank 1"
        print(f"rank {rank}: all checks passed", flush=True)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()

"""Several processes through ``torch.distributed``, launched by ``torchrun``: the one place that knows about them.

``torchrun`` starts one process per device and tells each its place in the environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); ``setup`` reads it and joins the process group: NCCL between GPUs
(one per local rank), gloo between CPU processes. A plain ``ddpmkit`` command has no such environment and stays one
process, for which every function here is a cheap no-op. Beside the default group, a gloo group carries the small
control messages and the gathered samples on the CPU, so they never wait on a GPU stream.

Waits are bounded: a collective that a lost process never joins fails after ``DDPMKIT_DIST_TIMEOUT`` seconds
(default 1800, PyTorch's own default), and ``torchrun`` ends the remaining processes of a job as soon as one fails.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist

from .build import resolve_device
from .errors import DdpmkitError

TIMEOUT_ENV = "DDPMKIT_DIST_TIMEOUT"
_control: dist.ProcessGroup | None = None  # the CPU (gloo) group; the default group itself when that is gloo


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets WORLD_SIZE and RANK)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if active() else 0


def is_main() -> bool:
    """Rank 0: the one process that writes files and prints results."""
    return rank() == 0


def setup(requested: str = "auto") -> torch.device:
    """This process's device, and the process group joined when launched by torchrun (once; later calls return the
    device). Under torchrun, ``auto`` and ``cuda`` mean the GPU of this process's local rank."""
    device = resolve_device(requested)
    if not launched():
        return device
    if device.type == "cuda":
        if requested not in ("auto", "cuda") and int(os.environ["LOCAL_WORLD_SIZE"]) > 1:
            raise DdpmkitError(f"device {requested}: under torchrun each process uses the GPU of its local rank; "
                               f"leave the device at auto (or cuda) and choose GPUs with CUDA_VISIBLE_DEVICES")
        index = int(os.environ.get("LOCAL_RANK", 0))
        if index >= torch.cuda.device_count():
            raise DdpmkitError(f"local rank {index} has no GPU: this machine shows {torch.cuda.device_count()}; "
                               f"start torchrun with --nproc_per_node={torch.cuda.device_count()} at most")
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    elif device.type not in ("cpu",):
        raise DdpmkitError(f"device {device}: several processes run on CUDA GPUs (NCCL) or on the CPU (gloo); use "
                           f"--set train.device=cpu, or a plain single-process command")
    if not active():
        global _control
        timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, 1800)))
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=timeout, **_restart_store(timeout), **kwargs)
        _control = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else dist.group.WORLD
    return device


def _restart_store(timeout: datetime.timedelta) -> dict:
    """A store of the rendezvous keys for workers that torchrun restarted (--max-restarts) on one machine.

    torchrun hands restarted workers the store of the first attempt, which still holds the dead workers' addresses
    (PyTorch issue 135712), so the new process group connects to them and fails. One machine's workers always
    restart together and share their restart count, which keeps each attempt's keys apart. Across machines the
    counts differ, so there the fix is torchrun's own: TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (docs/distributed.md).
    """
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
    if not restart or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or \
            os.environ.get("GROUP_WORLD_SIZE", "1") != "1":
        return {}
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timeout)
    return {"store": dist.PrefixStore(f"ddpmkit/attempt_{restart}", store), "rank": int(os.environ["RANK"]),
            "world_size": int(os.environ["WORLD_SIZE"])}


def shutdown() -> None:
    """Leave the process group (at the end of a command), so that no process exits with collectives in flight."""
    global _control
    if active():
        dist.destroy_process_group()
    _control = None


# -- control messages on the CPU -------------------------------------------------------------------------------------

def barrier() -> None:
    """Wait until every process gets here."""
    if world_size() > 1:
        dist.barrier(group=_control)


def broadcast(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (any picklable object, tensors included, through the CPU)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_control)
    return box[0]


def run_on_main(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on rank 0 only, its result (or the DdpmkitError it raised) passed to every rank, so that
    all processes go on, or stop with the same message, together."""
    result, error = None, None
    if is_main():
        try:
            result = fn(*args, **kwargs)
        except (DdpmkitError, OSError) as err:
            error = err
    result, error = broadcast((result, error))
    if error is not None:
        raise error
    return result


def main_only(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on rank 0, None on the others; the DdpmkitError or OSError it raises on rank 0 is raised
    on every rank, so that none waits for a rank 0 that has stopped."""
    box = {}

    def run():
        box["result"] = fn(*args, **kwargs)

    run_on_main(run)
    return box.get("result")


def sum_over_ranks(values: Sequence[float]) -> list[float]:
    """Element-wise sum of a few numbers over all ranks (float64, on the CPU)."""
    if world_size() == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, group=_control)
    return tensor.tolist()


def mean_over_ranks_(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` replaced, in place and on its device, by its mean over all ranks."""
    if world_size() > 1:
        dist.all_reduce(tensor)
        tensor.div_(world_size())
    return tensor


def gather_in_order(parts: list, count: int) -> list:
    """The ``count`` items of a job spread by ``my_share(count)``, back in their original order, on every rank:
    ``parts`` are this rank's results for its share, in order."""
    if world_size() == 1:
        return parts
    every = [None] * world_size()
    dist.all_gather_object(every, parts, group=_control)
    ordered = [None] * count
    for r, rank_parts in enumerate(every):
        for i, item in zip(my_share(count, r), rank_parts):
            ordered[i] = item
    return ordered


def my_share(count: int, of_rank: int | None = None) -> range:
    """The indices of ``count`` equal pieces of work (batches of samples, say) that one rank takes: every
    world_size-th, so that each piece is done exactly as a single process would do it."""
    return range(rank() if of_rank is None else of_rank, count, world_size())


@contextlib.contextmanager
def local_rank_zero_first() -> Iterator[None]:
    """Local rank 0 of each machine runs the block first (a download, a cache written), then the others."""
    if world_size() > 1 and local_rank() != 0:
        barrier()
    try:
        yield
    finally:
        if world_size() > 1 and local_rank() == 0:
            barrier()


class StopVote:
    """Which stop signal, if any, some rank received, agreed by all at the same step boundary.

    Each step boundary casts this rank's signal number (0 for none) in an all-reduce that runs in the background, and
    reads the previous boundary's result, so the vote costs no wait: a stop asked for during step k takes effect, on
    every rank, at the end of step k + 1. A single process decides at once.
    """

    def __init__(self):
        self._pending: tuple[torch.Tensor, dist.Work] | None = None

    def __call__(self, signum: int) -> int:
        if world_size() == 1:
            return signum
        decided = 0
        if self._pending is not None:
            ballot, work = self._pending
            work.wait()
            decided = int(ballot.item())
        ballot = torch.tensor([signum], dtype=torch.int32)
        self._pending = (ballot, dist.all_reduce(ballot, op=dist.ReduceOp.MAX, group=_control, async_op=True))
        return decided

    def close(self) -> None:
        """Wait for the vote in flight (every rank casts the same number of votes)."""
        if self._pending is not None:
            with contextlib.suppress(RuntimeError):  # a lost peer: the error that matters is already on its way
                self._pending[1].wait()
            self._pending = None


# -- model replicas --------------------------------------------------------------------------------------------------

def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when launched by torchrun (any world size, so that one rank measures its
    cost); the model itself otherwise. DDP starts every rank from rank 0's weights."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def no_sync(network: torch.nn.Module, last: bool):
    """DDP's ``no_sync`` for the micro-batches before the last of a step: their gradients accumulate locally and the
    last one's backward all-reduces the sum."""
    if last or not hasattr(network, "no_sync"):
        return contextlib.nullcontext()
    return network.no_sync()


def first_difference(modules: dict[str, torch.nn.Module]) -> str | None:
    """The first tensor (``'ema: down.0.weight on rank 1'``) in which some rank's copy differs from rank 0's, bit
    for bit, or None when all ranks hold the same; a check in the manner of EDM's ``check_ddp_consistency``."""
    if world_size() == 1:
        return None
    for label, module in modules.items():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            mine = tensor.detach().nan_to_num()
            theirs = mine.clone()
            dist.broadcast(theirs, src=0)
            first = torch.tensor([world_size() if torch.equal(mine, theirs) else rank()], device=mine.device)
            dist.all_reduce(first, op=dist.ReduceOp.MIN)  # the lowest rank that differs, or world_size
            if first.item() < world_size():
                return f"{label}: {name} on rank {first.item()}"
    return None

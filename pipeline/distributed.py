"""Several processes (`accelerate launch`, `torchrun`): a thin layer over accelerate, nothing home-made.

A plain `python -m pipeline run` is one process: every helper here is then the identity (or a no-op) and
accelerate's state is never created, so the single-process path is exactly what it was before.
Under a launcher (WORLD_SIZE > 1) accelerate's PartialState joins the process group: NCCL when CUDA is
present, gloo on CPU. Who does what:
- generation: prompt batches are dealt round-robin to processes and the samples gathered (Policy.sample);
- label store (SQLite) + selector + judge calls: the main process only; its results are broadcast (`on_main`);
- source scoring and a shardable judge's scoring, asked for by the main process while it labels: the other
  processes serve its `parallel_map` calls, each taking a contiguous share (`on_main(..., serve=...)`);
- reference log-probs: each process scores its share of the pairs, gathered;
- SFT and preference updates: the model wrapped by accelerate (DDP), each process takes its share of every
  batch and the gradients are averaged; checkpoints and stage outputs are written by the main process only,
  and everyone waits for them (`barrier`).
"""
from __future__ import annotations

import contextlib
import os

import torch


def world_size() -> int:
    """Number of processes; read from the launcher's environment, so one process needs no accelerate state."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _state():
    from accelerate import PartialState

    # cpu=True when there is no GPU: accelerate otherwise leaves a CPU-only torchrun job undistributed
    return PartialState(cpu=not torch.cuda.is_available())


def rank() -> int:
    return _state().process_index if world_size() > 1 else 0


def is_main() -> bool:
    return rank() == 0


def bar_kwargs() -> dict:
    """tqdm arguments: silent on every process but the main one, whose bar still obeys TQDM_DISABLE (an explicit
    disable=False would override that environment variable)."""
    return {} if is_main() else {"disable": True}


def barrier() -> None:
    if world_size() > 1:
        _state().wait_for_everyone()


def shutdown() -> None:
    """Leave the process group before the interpreter exits: a gloo group torn down at exit instead aborted a
    2-process run now and then ("terminate called without an active exception", SIGABRT on rank 0)."""
    if world_size() > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def main_first():
    """The main process runs the block first (e.g. writes a file); the others then run it (and find it)."""
    if world_size() > 1:
        with _state().main_process_first():
            yield
    else:
        yield


def shard(items: list, rank_: int | None = None, world: int | None = None) -> list:
    """This process's items: every world-th one, from its rank (round-robin keeps the shares balanced)."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    return items[rank_::world]


def unshard(shards: list[list], n: int) -> list:
    """Inverse of `shard` given every process's share in rank order: the n items in their original order."""
    out = [None] * n
    for r, part in enumerate(shards):
        out[r :: len(shards)] = part
    return out


def gather(obj) -> list:
    """Every process's `obj`, in rank order, on every process (accelerate.utils.gather_object)."""
    if world_size() == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


def broadcast(obj):
    """The main process's `obj` on every process."""
    if world_size() == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj])[0]


_SERVED: dict | None = None  # on the main process, while the others serve its parallel_map calls


def on_main(fn, *args, serve: dict | None = None, **kwargs):
    """fn(*args) on the main process only; its result (or its exception) on every process.

    An exception is re-raised everywhere, so a judge failure stops all processes instead of leaving the
    others waiting at the next collective. serve = {name: handler(items) -> one result per item}: while the
    main process runs fn, the others answer its `parallel_map(name, ...)` calls with their share of the items
    (every process must pass handlers for the same names)."""
    global _SERVED
    if world_size() == 1:
        return fn(*args, **kwargs)
    out = None
    if is_main():
        _SERVED = serve
        try:
            out = ("ok", fn(*args, **kwargs))
        except Exception as e:  # noqa: BLE001  (re-raised below, on every process)
            out = ("error", e)
        finally:
            _SERVED = None
            if serve is not None:
                broadcast((None, None))  # the others stop serving
    elif serve is not None:
        _serve(serve)
    kind, value = broadcast(out)
    if kind == "error":
        raise value
    return value


def _serve(handlers: dict) -> None:
    while True:
        name, items = broadcast(None)
        if name is None:
            return
        try:
            part = ("ok", handlers[name](_share(items, rank(), world_size())) if items else [])
        except Exception as e:  # noqa: BLE001  (raised on the main process, which then stops everyone)
            part = ("error", e)
        gather(part)


def _share(items: list, rank_: int, world: int) -> list:
    """A contiguous share (unlike `shard`): a document's responses stay together, so a log-lik source still
    encodes each prompt once."""
    return items[rank_ * len(items) // world:(rank_ + 1) * len(items) // world]


def parallel_map(name: str, handler, items: list) -> tuple[list, list[int]]:
    """(handler over items, items done per process). Inside on_main(..., serve={name: ...}) every process
    does its share; anywhere else (or for a name the others do not serve) this process does all."""
    if _SERVED is None or name not in _SERVED or world_size() == 1 or not items:
        return (handler(items) if items else []), [len(items)]
    broadcast((name, items))
    world = world_size()
    mine = _share(items, 0, world)
    try:
        part = ("ok", handler(mine) if mine else [])
    except Exception as e:  # noqa: BLE001
        part = ("error", e)
    parts = gather(part)
    for kind, value in parts:
        if kind == "error":
            raise value
    return [v for _, value in parts for v in value], [len(_share(items, r, world)) for r in range(world)]


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over processes (a detached copy; the identity in one process)."""
    if world_size() == 1:
        return x
    from accelerate.utils import reduce

    return reduce(x.detach().to(_state().device), reduction="sum").to(x.device)  # NCCL reduces GPU tensors only


@contextlib.contextmanager
def data_parallel(policy):
    """Within the block, policy.model is the DDP-wrapped model (accelerate's prepare_model), so every backward
    averages the gradients over processes; the plain module is put back afterwards (generate, save, LoRA merge
    need it). One process: the model is left alone."""
    if world_size() == 1:
        yield
        return
    from accelerate import Accelerator

    acc = Accelerator(cpu=not torch.cuda.is_available())  # shares PartialState: the process group is joined once
    plain = policy.model
    policy.model = acc.prepare_model(plain)
    try:
        yield
    finally:
        policy.model = acc.unwrap_model(policy.model)

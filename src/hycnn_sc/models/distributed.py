"""Spread many transport-map fits over processes or machines with ``torch.distributed``.

Launch a script with ``torchrun`` (one process per GPU, or several CPU processes); every
process calls :func:`fit_many_distributed` with the same list of pairs, fits its share as one
batched computation, and receives all fitted maps.

    torchrun --standalone --nproc_per_node 2 my_script.py
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from .transport import TransportMap


def _init_process_group() -> bool:
    """Join the process group torchrun described in the environment; True if we created it."""
    if dist.is_initialized():
        return False
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError(
            "fit_many_distributed needs a torch.distributed process group: launch the script "
            "with torchrun (e.g. `torchrun --standalone --nproc_per_node 2 script.py`) or call "
            "torch.distributed.init_process_group first."
        )
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    return True


def fit_many_distributed(
    sources: Sequence[Any], targets: Sequence[Any], **params: Any
) -> list[TransportMap]:
    """Fit ``len(sources)`` maps split round-robin across the ranks of a process group.

    Each rank trains its share with :meth:`TransportMap.fit_many` (on ``cuda:<LOCAL_RANK>``
    when GPUs are present and ``device`` is ``"auto"``); the fitted states are exchanged with
    ``all_gather_object`` and every rank returns the full list of maps, in input order.
    Seeds: rank ``r`` uses ``seed + r`` so the shares train with distinct random streams;
    results therefore depend on the number of ranks.

    Examples
    --------
    In a script run by ``torchrun --standalone --nproc_per_node 2 script.py``::

        maps = fit_many_distributed([control] * 8, perturbed, n_iters=500, seed=0)
    """
    created = _init_process_group()
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        mine = list(range(rank, len(sources), world))
        options = dict(params)
        if options.get("device", "auto") == "auto" and torch.cuda.is_available():
            options["device"] = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
        if options.get("seed") is not None:
            options["seed"] = int(options["seed"]) + rank
        states = []
        if mine:
            fitted = TransportMap.fit_many([sources[i] for i in mine], [targets[i] for i in mine],
                                           **options)
            states = [tmap.get_state() for tmap in fitted]
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, (mine, states))
    finally:
        if created:
            dist.destroy_process_group()
    maps: list[TransportMap | None] = [None] * len(sources)
    for indices, rank_states in gathered:
        for index, state in zip(indices, rank_states, strict=True):
            maps[index] = TransportMap.from_state(state, device=params.get("device", "auto"))
    return maps  # type: ignore[return-value]

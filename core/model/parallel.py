"""Tensor and expert parallelism over torch.distributed.

How the model is split is :mod:`dsport.core.plan`'s (``SPLITS``, the world
of ``max(tp, ep)`` ranks); this module runs it. Rank ``r`` of the world:

* attention, dense MLPs, the shared expert, embedding and LM head are split
  over its tensor-parallel group, ``tp`` consecutive ranks (``r // tp``-th
  group, ``r % tp``-th shard): column-parallel weights give each rank its
  heads or columns, a row-parallel weight's partial sums are all-reduced over
  the group, the vocabulary-parallel embedding is all-reduced and the LM head
  all-gathered. With ``ep > tp`` the ``ep / tp`` groups run attention
  data-parallel, each on its share of the batch.
* routed experts are split over its expert-parallel group, ``ep``
  consecutive ranks (with ``tp > ep`` the experts are replicated, one copy
  per group): rank ``r`` holds experts ``[(r % ep) * E / ep, (r % ep + 1) * E / ep)``.
  Each rank of a tensor-parallel group (which holds the same tokens) routes
  its ``1 / tp`` of them: ``moe_dispatch`` packs them per destination rank,
  the communicator exchanges them, the destination runs ``MoE.routed`` on
  its experts, the results come back the same way and ``moe_combine`` adds
  them up; the group then all-gathers its tokens again.

The exchange goes through :class:`Communicator`, the one object that talks to
torch.distributed (NCCL/RCCL/HCCL on devices, gloo on CPU); a backend with a
fused dispatch kernel replaces it.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..constants import DEEPSEEK_V32, ModelConfig
from ..errors import ConfigError
from ..plan import check_degrees, check_world, split_of

log = logging.getLogger(__name__)
FP8_BLOCK = DEEPSEEK_V32.fp8_block  # the quantization group and weight scale block (core/constants.py)


@dataclass(frozen=True)
class Layout:
    """Where one rank sits: its tensor-parallel shard, data-parallel group and expert range."""

    tp: int = 1
    ep: int = 1
    rank: int = 0

    def __post_init__(self) -> None:
        check_world(self.tp, self.ep, op="parallel")
        if not 0 <= self.rank < self.world:
            raise ConfigError(f"parallel: rank {self.rank} outside the world of {self.world} ranks (tp={self.tp}, ep={self.ep})")

    @property
    def world(self) -> int:
        return max(self.tp, self.ep)

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def dp(self) -> int:
        """Data-parallel attention groups (each a tensor-parallel group with its share of the batch)."""
        return self.world // self.tp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.tp

    @property
    def ep_rank(self) -> int:
        return self.rank % self.ep

    def groups(self, kind: str) -> list[list[int]]:
        """Every group of ``kind`` ('tp', 'dp', 'ep') as rank lists, in a fixed order (each rank creates them all)."""
        w, tp, ep = self.world, self.tp, self.ep
        if kind == "tp":
            return [list(range(g, g + tp)) for g in range(0, w, tp)]
        if kind == "dp":
            return [list(range(s, w, tp)) for s in range(tp)]
        if kind == "ep":
            return [list(range(g, g + ep)) for g in range(0, w, ep)]
        raise ValueError(f"Layout.groups: kind expected one of ['tp', 'dp', 'ep'], got {kind!r}")

    def group_of(self, kind: str) -> list[int]:
        return next(g for g in self.groups(kind) if self.rank in g)

    def check(self, cfg: ModelConfig) -> None:
        """The model-dependent rules (heads and experts divide evenly), as the memory plan states them."""
        check_degrees(cfg, self.tp, self.ep, op="parallel")

    def experts(self, cfg: ModelConfig) -> range:
        """The global ids of the routed experts this rank holds."""
        n = cfg.n_routed_experts // self.ep
        return range(self.ep_rank * n, (self.ep_rank + 1) * n)


class Communicator:
    """The collectives the parallel model needs, over torch.distributed process groups.

    ``all_to_all(x, counts)`` sends the first ``counts[r]`` rows of ``x[r]``
    to the r-th rank of the expert-parallel group and returns the rows
    received (packed, source rank by source rank) with their counts."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self._groups: dict[str, object] = {}
        for kind in ("tp", "dp", "ep"):  # every rank creates every group, in one order (torch.distributed's rule)
            for ranks in layout.groups(kind):
                g = dist.new_group(ranks) if len(ranks) > 1 else None
                if layout.rank in ranks:
                    self._groups[kind] = g

    def size(self, kind: str) -> int:
        return len(self.layout.group_of(kind))

    def all_reduce(self, x: torch.Tensor, kind: str = "tp") -> torch.Tensor:
        if self.size(kind) == 1:
            return x
        x = x.contiguous()
        dist.all_reduce(x, group=self._groups[kind])
        return x

    def all_gather(self, x: torch.Tensor, kind: str, dim: int = 0) -> torch.Tensor:
        """The group's tensors (equal shapes) concatenated along ``dim``, in rank order."""
        if self.size(kind) == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size(kind))]
        dist.all_gather(parts, x.contiguous(), group=self._groups[kind])
        return torch.cat(parts, dim=dim)

    def all_to_all(self, x: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.size("ep")
        if n == 1:
            return x[0, : int(counts[0])], counts
        send_counts = counts.to(torch.int64)  # on x's device: NCCL/HCCL exchange device tensors only
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts, group=self._groups["ep"])
        rows = torch.cat([x[r, : int(send_counts[r])] for r in range(n)])
        return self.exchange(rows, send_counts, recv_counts), recv_counts

    def exchange(self, rows: torch.Tensor, send_counts: torch.Tensor, recv_counts: torch.Tensor) -> torch.Tensor:
        """Packed rows out (``send_counts[r]`` to rank r), packed rows in (``recv_counts[r]`` from rank r)."""
        if self.size("ep") == 1:
            return rows
        out = rows.new_empty(int(recv_counts.sum()), *rows.shape[1:])
        dist.all_to_all_single(out, rows.contiguous(), recv_counts.tolist(), send_counts.tolist(), group=self._groups["ep"])
        return out


@dataclass
class Parallel:
    """One rank's layout and its communicator, handed to the layers that split."""

    layout: Layout
    comm: Communicator | None  # None in a world of one
    trivial: bool = field(init=False)

    def __post_init__(self) -> None:
        self.trivial = self.layout.world == 1


DIST_BACKENDS = {"cuda": "nccl", "npu": "hccl"}  # by device type (ROCm's torch calls its devices cuda: RCCL); gloo otherwise


def init(tp: int, ep: int, device: str | None = None) -> Parallel:
    """Join the torch.distributed world torchrun describes (RANK, WORLD_SIZE,
    MASTER_ADDR/PORT in the environment) as rank RANK of ``max(tp, ep)``,
    over the collective library of ``device``'s type (``DIST_BACKENDS``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    check_world(tp, ep, op="parallel")
    if world != max(tp, ep):
        raise ConfigError(f"parallel: tp={tp}, ep={ep} needs a world of max(tp, ep) = {max(tp, ep)} processes, "
                          f"WORLD_SIZE is {world} (launch with torchrun --nproc-per-node {max(tp, ep)})")
    layout = Layout(tp, ep, rank)
    if layout.world > 1 and not dist.is_initialized():
        kind = torch.device(device).type if device is not None else "cpu"
        dist.init_process_group(DIST_BACKENDS.get(kind, "gloo"), rank=rank, world_size=world)
    return Parallel(layout, Communicator(layout) if layout.world > 1 else None)


def single() -> Parallel:
    """The one-process layout: nothing split, no communicator."""
    return Parallel(Layout(), None)


# -- sharding rules used by the layers and the loader --------------------------------------------


def shard(n: int, parts: int, what: str, fp8: bool) -> int:
    """``n / parts``, or a ConfigError naming ``what`` when it does not split evenly, or (FP8) not into 128-blocks."""
    if n % parts:
        raise ConfigError(f"parallel: {what} = {n} does not split over tp={parts}")
    if fp8 and parts > 1 and (n // parts) % FP8_BLOCK:
        raise ConfigError(f"parallel: {what} = {n} over tp={parts} gives shards of {n // parts}, not a multiple of the "
                          f"FP8 weight block {FP8_BLOCK} (each shard must own whole 128x128 scale blocks); use a smaller tp")
    return n // parts


def checkpoint_name(name: str, layout: Layout, cfg: ModelConfig) -> str:
    """The checkpoint tensor behind parameter ``name`` of this rank: a local expert ``experts.j`` is global expert
    ``ep_rank * E / ep + j``; every other name is the checkpoint's own."""
    if split_of(name).kind != "ep" or layout.ep == 1:
        return name
    local = int(name.split(".experts.")[1].split(".")[0])
    return name.replace(f".experts.{local}.", f".experts.{layout.experts(cfg)[local]}.", 1)


def shard_range(name: str, shape: tuple[int, ...], layout: Layout, fp8_blocks: bool) -> tuple[int, int, int] | None:
    """(dim, start, stop) of this rank's shard of checkpoint tensor ``name`` (full ``shape``), None when it holds all
    of it. ``fp8_blocks``: the tensor is an FP8 weight, whose shard must cover whole 128-row/column scale blocks."""
    split = split_of(name)
    if split.kind != "tp" or layout.tp == 1:
        return None
    n = shape[split.dim]
    what = f"dim {split.dim} of {name} (shape {list(shape)})"
    if fp8_blocks or name.endswith("weight_scale_inv"):
        unit = FP8_BLOCK if fp8_blocks else 1
        if n % layout.tp or (n // layout.tp) % unit:
            raise ConfigError(f"parallel: {what} over tp={layout.tp}: an FP8 weight's shard must be a multiple of "
                              f"{FP8_BLOCK} (whole scale blocks), {n} / {layout.tp} is not; use a smaller tp")
    local = shard(n, layout.tp, what, False)
    return split.dim, layout.tp_rank * local, (layout.tp_rank + 1) * local


# -- the parallel pieces of the forward ----------------------------------------------------------


def embed(tokens: torch.Tensor, weight: torch.Tensor, par: Parallel) -> torch.Tensor:
    """Vocabulary-parallel lookup: each rank its rows, zero elsewhere, summed over the group."""
    if par.trivial or par.layout.tp == 1:
        return F.embedding(tokens, weight)
    lo = par.layout.tp_rank * weight.shape[0]
    local = tokens - lo
    outside = (local < 0) | (local >= weight.shape[0])
    h = F.embedding(local.clamp(0, weight.shape[0] - 1), weight)
    h = h.masked_fill(outside.unsqueeze(-1), 0)
    return par.comm.all_reduce(h, "tp")


def lm_head(h: torch.Tensor, weight: torch.Tensor, par: Parallel) -> torch.Tensor:
    """Vocabulary-parallel logits: each rank its columns, gathered over the group."""
    logits = h @ weight.T
    if par.trivial or par.layout.tp == 1:
        return logits
    return par.comm.all_gather(logits, "tp", dim=-1)


def batch_share(tokens: torch.Tensor, par: Parallel) -> torch.Tensor:
    """This data-parallel group's sequences of ``tokens`` [B, S] (B divisible by the number of groups)."""
    dp = par.layout.dp
    if par.trivial or dp == 1:
        return tokens
    if tokens.shape[0] % dp:
        raise ConfigError(f"parallel: a batch of {tokens.shape[0]} sequences does not split over the {dp} data-parallel "
                          f"attention groups of tp={par.layout.tp}, ep={par.layout.ep}; use a batch that is a multiple of {dp}")
    b = tokens.shape[0] // dp
    return tokens[par.layout.dp_rank * b: (par.layout.dp_rank + 1) * b]


def gather_batch(logits: torch.Tensor, par: Parallel) -> torch.Tensor:
    if par.trivial or par.layout.dp == 1:
        return logits
    return par.comm.all_gather(logits.contiguous(), "dp", dim=0)


def routed(ops, par: Parallel, experts: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],  # noqa: ANN001
           x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, experts_per_rank: int) -> torch.Tensor:
    """The routed experts of the whole expert-parallel group for the tokens ``x`` of this
    tensor-parallel group: each rank routes its 1/tp of the tokens, ``experts`` (the local
    ``MoE.routed``) runs on the rows the rank receives."""
    lay, comm = par.layout, par.comm
    t = x.shape[0]
    chunk = -(-t // lay.tp)
    lo, hi = min(t, lay.tp_rank * chunk), min(t, (lay.tp_rank + 1) * chunk)
    send_x, send_ids, send_w, counts, src = ops.moe_dispatch(x[lo:hi], ids[lo:hi], weights[lo:hi], lay.ep, experts_per_rank)
    recv_x, recv_counts = comm.all_to_all(send_x, counts)
    recv_ids, _ = comm.all_to_all(send_ids, counts)
    recv_w, _ = comm.all_to_all(send_w, counts)
    y = experts(recv_x, recv_ids, recv_w) if recv_x.shape[0] else recv_x.new_zeros(0, x.shape[1])
    back = comm.exchange(y.to(x.dtype), recv_counts, counts.to(torch.int64))
    # the returned rows, put back into dispatch's slots: block r's first counts[r] rows
    slots = torch.zeros_like(send_x)
    starts = torch.cumsum(counts.long(), 0) - counts.long()
    for r in range(lay.ep):
        n = int(counts[r])
        slots[r, :n] = back[int(starts[r]): int(starts[r]) + n]
    out = ops.moe_combine(slots, src)
    if lay.tp == 1:
        return out
    padded = out.new_zeros(chunk, x.shape[1])
    padded[: out.shape[0]] = out
    return comm.all_gather(padded, "tp", dim=0)[:t]

"""The sharding plan: what each rank holds of every parameter and which collectives join the parts.

Detection (detect.py) builds a ShardPlan from the canonical graph; rewriting (rewrite.py) applies it.
The plan prints as a table (one row per group) with the bytes each rank holds:

    group                           kind        split                               collective
    model.layers.0.self_attn        attention   heads 32 -> 16, kv heads 8 -> 4      all_reduce after o_proj
    model.layers.0.mlp              mlp         intermediate 14336 -> 7168          all_reduce after down_proj
    model.embed_tokens              embedding   vocab 128256 -> 64128               all_reduce
    lm_head                         lm_head     vocab 128256 -> 64128               all_gather
    model.layers.1.mlp.experts      experts     experts 8 -> 4                      all_reduce
    rank 0 holds 8.03 GB of 16.06 GB (replicated: 0.5 MB: norms, routers)

A `Slice` says which part of one dim a rank holds: ranges [start, end) on that dim, concatenated in
order (a fused q/k/v weight holds three ranges; a GQA rank whose KV head is replicated holds the one
KV head its query heads read).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import fx

from autodeploy.errors import AutoDeployError


PLAN_KEY = "shard_plan"  # gm.meta: the ShardPlan this rank applied (every SHARD transform's groups)
EARLIER_KEY = "shard_groups"  # gm.meta: groups applied by shard_experts, which runs first
WHOLE_BYTES_KEY = "shard_whole_bytes"  # gm.meta: {param: bytes when whole} of parameters already sliced


class ShardingError(AutoDeployError):
    """The model cannot be split over the requested ranks (heads or experts not divisible, a bad tp_plan)."""


@dataclass(frozen=True)
class Slice:
    """The part of dim `dim` (global size `size`) a rank holds: `ranges`, concatenated in order."""

    dim: int
    ranges: tuple[tuple[int, int], ...]
    size: int

    @classmethod
    def even(cls, dim: int, size: int, world: int, rank: int) -> "Slice":
        n = size // world
        return cls(dim, ((rank * n, (rank + 1) * n),), size)

    @property
    def local(self) -> int:
        return sum(e - s for s, e in self.ranges)

    def with_dim(self, dim: int) -> "Slice":
        return Slice(dim, self.ranges, self.size)

    def scaled(self, unit: int, dim: int | None = None) -> "Slice":
        """Each index becomes `unit` consecutive ones (heads -> the head_dim-wide rows of a weight)."""
        return Slice(self.dim if dim is None else dim, tuple((s * unit, e * unit) for s, e in self.ranges),
                     self.size * unit)

    def divided(self, unit: int, dim: int | None = None) -> "Slice | None":
        """The inverse of scaled; None when a range does not fall on `unit` boundaries."""
        if self.size % unit or any(s % unit or e % unit for s, e in self.ranges):
            return None
        return Slice(self.dim if dim is None else dim, tuple((s // unit, e // unit) for s, e in self.ranges),
                     self.size // unit)

    def shifted(self, offset: int, size: int) -> "Slice":
        return Slice(self.dim, tuple((s + offset, e + offset) for s, e in self.ranges), size)

    def union(self, other: "Slice") -> "Slice":
        merged: list[list[int]] = []
        for s, e in sorted(set(self.ranges) | set(other.ranges)):
            if merged and s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        return Slice(self.dim, tuple((s, e) for s, e in merged), self.size)

    def within(self, start: int, end: int) -> "Slice":
        """The held part of global [start, end), in that window's coordinates."""
        out = tuple((max(s, start) - start, min(e, end) - start) for s, e in self.ranges if min(e, end) > max(s, start))
        return Slice(self.dim, out, end - start)

    def local_index(self, g: int) -> int:
        """How many held elements come before global index g (g held or a range end)."""
        return sum(min(e, g) - s for s, e in self.ranges if s < g)

    def covers(self, other: "Slice") -> bool:
        return all(any(s <= a and b <= e for s, e in self.ranges) for a, b in other.ranges)

    def is_full(self) -> bool:
        return self.ranges == ((0, self.size),)

    def read_indices(self, ndim: int) -> list[tuple]:
        """Per range, the index tuple that reads it from a tensor of `ndim` dims."""
        lead = (slice(None),) * self.dim
        return [lead + (slice(s, e),) for s, e in self.ranges]

    def __str__(self) -> str:
        return f"{self.size} -> {self.local}"


@dataclass
class ParamShard:
    """How one rank holds one graph parameter: a slice of the checkpoint tensor, or zeros."""

    param: str  # graph name, e.g. model.model.layers.0.self_attn.q_proj.weight
    slice: Slice | None  # None with zeros=True: this rank holds zeros of the full shape
    zeros: bool = False  # a bias only rank 0 adds (TP experts' down bias)


@dataclass
class ShardGroup:
    """One region split over the ranks: an attention block, a gated MLP, the embedding, the lm_head, experts."""

    kind: str  # attention / mlp / embedding / lm_head / experts / tp_plan
    name: str  # module path, for printing
    split: str  # what is split, e.g. "heads 32 -> 16, kv heads 8 -> 4"
    collective: str  # what joins the parts, e.g. "all_reduce after o_proj"
    params: dict[str, ParamShard] = field(default_factory=dict)
    source: str = "heuristic"  # heuristic / hf tp_plan / recipe tp_plan
    # rewriting anchors (fx nodes of the graph the plan was detected on)
    columns: list[fx.Node] = field(default_factory=list)  # linears whose output is split
    rows: list[fx.Node] = field(default_factory=list)  # linears whose input is split: all_reduce after
    node_slices: dict[fx.Node, Slice] = field(default_factory=dict)  # region tensors -> the rank's slice
    anchor: fx.Node | None = None  # embedding / lm_head linear / moe node
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ShardPlan:
    world_size: int
    rank: int
    groups: list[ShardGroup] = field(default_factory=list)
    replicated: dict[str, str] = field(default_factory=dict)  # graph param -> why it stays whole
    notes: list[str] = field(default_factory=list)  # regions left replicated, tp_plan entries ignored
    total_bytes: int = 0  # every parameter, whole
    rank_bytes: int = 0  # what this rank holds
    replicated_bytes: int = 0  # held whole by every rank

    @property
    def sharded(self) -> bool:
        return bool(self.groups)

    def param_shards(self) -> dict[str, ParamShard]:
        out: dict[str, ParamShard] = {}
        for g in self.groups:
            out.update(g.params)
        return out

    def account(self, gm: fx.GraphModule, whole_bytes: dict[str, int] | None = None) -> None:
        """Fill the byte counts from the graph's parameters: whole ones, or (`whole_bytes`) ones an
        earlier transform already sliced, whose whole size it recorded."""
        shards = self.param_shards()
        whole_bytes = whole_bytes or {}
        self.total_bytes = self.rank_bytes = self.replicated_bytes = 0
        for name, p in gm.named_parameters():
            whole = p.numel() * p.element_size()
            if name in whole_bytes:  # sliced already: this rank holds what the graph holds now
                self.total_bytes += whole_bytes[name]
                self.rank_bytes += whole
                continue
            self.total_bytes += whole
            s = shards.get(name)
            if s is None:
                self.rank_bytes += whole
                self.replicated_bytes += whole
                self.replicated.setdefault(name, "norms and biases" if p.dim() == 1 else "outside sharded regions")
            elif s.zeros or s.slice is None:
                self.rank_bytes += whole
            else:
                self.rank_bytes += whole // s.slice.size * s.slice.local

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for g in self.groups:
            kinds[g.kind] = kinds.get(g.kind, 0) + 1
        return {"world_size": self.world_size, "rank": self.rank, "groups": kinds,
                "total_bytes": self.total_bytes, "rank_bytes": self.rank_bytes,
                "replicated_bytes": self.replicated_bytes, "replicated_params": len(self.replicated),
                "notes": list(self.notes)}

    def rows(self) -> list[tuple[str, str, str, str]]:
        return [(g.name, g.kind if g.source == "heuristic" else f"{g.kind} ({g.source})", g.split, g.collective)
                for g in self.groups]

    def footer(self) -> str:
        return (f"rank {self.rank} of {self.world_size} holds {_gb(self.rank_bytes)} of {_gb(self.total_bytes)} "
                f"(replicated on every rank: {_gb(self.replicated_bytes)} in {len(self.replicated)} tensors"
                f"{': ' + _replicated_kinds(self.replicated) if self.replicated else ''})")

    def text(self) -> str:
        rows = [("group", "kind", "split", "collective")] + self.rows()
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        return "\n".join(lines + [self.footer()] + [f"note: {n}" for n in self.notes])

    def table(self):
        from rich.table import Table

        table = Table(title=f"Sharding plan ({self.world_size} ranks)", caption=self.footer())
        for col in ("group", "kind", "split", "collective"):
            table.add_column(col, no_wrap=col in ("group", "kind"))
        for r in self.rows():
            table.add_row(*r)
        return table


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _replicated_kinds(replicated: dict[str, str]) -> str:
    """A short account of why things stay whole, e.g. 'norms (5), routers (2)'."""
    counts: dict[str, int] = {}
    for reason in replicated.values():
        counts[reason] = counts.get(reason, 0) + 1
    return ", ".join(f"{r} ({n})" for r, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def show(plan: ShardPlan) -> None:
    """Print the plan on rank 0: on the console when the CLI enabled it, else through logging."""
    import logging

    from autodeploy import progress

    if plan.rank != 0:
        return
    console = progress.console()
    if console is not None:
        console.print(plan.table())
        for n in plan.notes:
            console.print(f"[yellow]note:[/yellow] {n}", highlight=False)
    else:
        logging.getLogger("autodeploy").info("sharding plan\n%s", plan.text())


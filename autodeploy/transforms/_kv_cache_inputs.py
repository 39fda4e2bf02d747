"""The graph inputs insert_kv_cache adds, with symbolic FakeTensor vals that never specialize.

Every per-step size gets its own backed symbol, created DYNAMIC (no duck sizing: a hint equal to
another dim's hint must not merge the two) with hints >= 2 (0 and 1 would specialize):

    T  tokens in the step        input_ids / position_ids [1, T], slot_mapping [T]
    b  sequences in the step     seq_lens, input_pos, cache_lens [b], cu_seqlens [b+1]
    P  page-table width          page_table [b, P]
    N  pages in the pool         k_cache_i [N, page, n_kv, d], v_cache_i [N, page, n_kv, d_v]
    page  tokens per page        (the graph does not bake the pool's geometry in)

The vals live in the export's FakeTensorMode so shape propagation sees one ShapeEnv.
"""

from __future__ import annotations

import torch
from torch import fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv

from autodeploy.graph import val
from autodeploy.runtime.sequence_info import SequenceInfo

_HINTS = {"num_tokens": 37, "num_seqs": 5, "max_pages": 7, "num_pages": 11, "page_size": 3}
_DTYPES = {"seq_lens": torch.int32, "cu_seqlens": torch.int32, "input_pos": torch.int32,
           "cache_lens": torch.int32, "page_table": torch.int32, "slot_mapping": torch.int64}


class StepInputs:
    """Adds placeholders after the last one, each with a symbolic fake val."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        old = val(self.placeholders[0])
        mode = getattr(old, "fake_mode", None)
        if mode is None or mode.shape_env is None:
            # A graph exported without dynamic dims: every placeholder val is rebuilt here.
            mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True)
        self.mode = mode
        self.device = old.device if isinstance(old, torch.Tensor) else torch.device("meta")
        self.last = self.placeholders[-1]
        self.sym = {name: self._symbol(name, hint) for name, hint in _HINTS.items()}

    def _symbol(self, name: str, hint: int) -> torch.SymInt:
        from torch._dynamo.source import ConstantSource

        env = self.mode.shape_env
        source = ConstantSource(f"autodeploy_{name}")
        expr = env.create_symbol(hint, source, dynamic_dim=DimDynamic.DYNAMIC)
        return env.create_symintnode(expr, hint=hint, source=source)

    def fake(self, shape, dtype: torch.dtype) -> torch.Tensor:
        with self.mode:
            return torch.empty(shape, dtype=dtype, device=self.device)

    def add(self, name: str, fake: torch.Tensor) -> fx.Node:
        with self.gm.graph.inserting_after(self.last):
            node = self.gm.graph.placeholder(name)
        node.meta["val"] = fake
        self.last = node
        return node

    def pack_tokens(self) -> None:
        """input_ids / position_ids become [1, T]: every token of the step in one batch row."""
        for node in self.placeholders[:2]:
            node.meta["val"] = self.fake((1, self.sym["num_tokens"]), torch.int64)

    def add_sequence_inputs(self) -> dict[str, fx.Node]:
        """The SequenceInfo.GRAPH_INPUTS placeholders, in that order."""
        b, T, P = self.sym["num_seqs"], self.sym["num_tokens"], self.sym["max_pages"]
        shapes = {"seq_lens": (b,), "cu_seqlens": (b + 1,), "input_pos": (b,), "cache_lens": (b,),
                  "page_table": (b, P), "slot_mapping": (T,)}
        return {name: self.add(name, self.fake(shapes[name], _DTYPES[name])) for name in SequenceInfo.GRAPH_INPUTS}

    def add_cache_pair(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[fx.Node, fx.Node]:
        """k_cache_<layer> [N, page, n_kv, d] and v_cache_<layer> [N, page, n_kv, d_v] in k's dtype."""
        N, page = self.sym["num_pages"], self.sym["page_size"]
        n_kv, d, d_v = int(k.shape[2]), int(k.shape[3]), int(v.shape[3])
        kc = self.add(f"k_cache_{layer}", self.fake((N, page, n_kv, d), k.dtype))
        vc = self.add(f"v_cache_{layer}", self.fake((N, page, n_kv, d_v), k.dtype))
        return kc, vc

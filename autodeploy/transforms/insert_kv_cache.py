"""insert_kv_cache: canonical attention -> cached attention over a paged KV pool; last-token logits only.

    before:  gm(input_ids [B, S], position_ids [B, S]) -> logits [B, S, V]
               q, k, v [B, S, n(_kv), d] ─ autodeploy.attention ─ [B, S, n, d_v]
               hidden [B, S, H] ─ lm_head linear ─ logits [B, S, V]

    after:   gm(input_ids [1, T], position_ids [1, T], seq_lens [b], cu_seqlens [b+1], input_pos [b],
                cache_lens [b], page_table [b, P], slot_mapping [T],
                k_cache_0, v_cache_0, k_cache_1, v_cache_1, …) -> logits [b, V]
               q, k, v ─ reshape [T, n(_kv), d] ─ autodeploy.cached_attention(…, k_cache_i, v_cache_i,
                   seq_lens, cu_seqlens, input_pos, cache_lens, page_table, slot_mapping, …)
                 ─ [T, n, d_v] ─ unsqueeze(0) ─ [1, T, n, d_v]
               hidden [1, T, H] ─ index_select(dim 1, cu_seqlens[1:] - 1) ─ [1, b, H] ─ lm_head ─ select(0, 0)

All tokens of a step are packed into one batch row (B = 1, S = T); SequenceInfo.graph_inputs()
gives the inputs in this order. Gathering each sequence's last hidden state before the lm_head
makes the vocabulary projection run on b rows instead of T (for a 2k-token prefill of a 128k
vocabulary that is ~1 GFLOP per token saved).

The KV caches are placeholders, not buffers: `load_weights` never sees them, the runtime sizes
the pool after loading, and CUDA graphs capture them as fixed-address inputs. What each layer's
cache needs is recorded in `gm.meta["kv_cache_spec"]` (runtime/kv_cache.LayerCacheSpec).

A graph whose attention is not fully canonical (an SDPA or eager attention left, fewer canonical
attention ops than layers, a non-causal op) is left unchanged, with a warning: caching only some
layers would silently drop the others' context.
"""

from __future__ import annotations

import torch
from torch import fx

import autodeploy.distributed.collectives  # noqa: F401  (registers autodeploy::all_gather)
from autodeploy.graph import aten, is_op, nodes_of, val
from autodeploy.ops import bound_args
from autodeploy.runtime.cached_model import SPEC_KEY
from autodeploy.runtime.kv_cache import LayerCacheSpec
from autodeploy.runtime.sequence_info import SequenceInfo
from autodeploy.transforms._kv_cache_inputs import StepInputs
from autodeploy.transforms.pipeline import Stage, TransformInfo, register

ATTENTION = torch.ops.autodeploy.attention.default
CACHED_ATTENTION = torch.ops.autodeploy.cached_attention.default
_SDPA = (aten.scaled_dot_product_attention, aten._scaled_dot_product_flash_attention,
         aten._scaled_dot_product_efficient_attention)

# Ops between the lm_head and the output that act on each token's row alone (casts, final softcap):
# the last-token gather may move in front of them.
_ROWWISE = (aten.to.dtype, aten._to_copy, aten.alias, aten.clone, aten.contiguous, aten.tanh,
            aten.mul.Tensor, aten.div.Tensor, aten.add.Tensor, aten.sub.Tensor,
            torch.ops.autodeploy.all_gather.default)  # a vocab-parallel lm_head's logits, gathered per row


def _uncacheable(gm: fx.GraphModule, ctx, attns: list[fx.Node]) -> str | None:
    """Why this graph must stay uncached, or None."""
    if not attns:
        return "no autodeploy.attention in the graph (attention not canonicalized): left uncached"
    sdpa = nodes_of(gm, _SDPA)
    if sdpa:
        return f"{len(sdpa)} SDPA attention call(s) not canonicalized: left uncached"
    layers = _num_layers(ctx)
    if layers is not None and len(attns) != layers:
        return f"{len(attns)} canonical attention ops for {layers} layers (some not canonicalized): left uncached"
    if any(not bound_args(n)["causal"] for n in attns):
        return "a non-causal autodeploy.attention cannot read a causal KV cache: left uncached"
    return None


def _num_layers(ctx) -> int | None:
    cfg = getattr(ctx, "hf_config", None)
    if cfg is None:
        return None
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n = getattr(text, "num_hidden_layers", None)
    return n if isinstance(n, int) else None


def _replace_attention(gm: fx.GraphModule, node: fx.Node, caches: tuple[fx.Node, fx.Node], seq: dict) -> LayerCacheSpec:
    a = bound_args(node)
    q, k, v = val(a["q"]), val(a["k"]), val(a["v"])  # [B, S, n, d], [B, S, n_kv, d], [B, S, n_kv, d_v]
    n, d = int(q.shape[2]), int(q.shape[3])
    n_kv, d_v = int(k.shape[2]), int(v.shape[3])
    scale = a["scale"] if a["scale"] is not None else d**-0.5
    g = gm.graph
    with g.inserting_before(node):
        q2 = g.call_function(aten.reshape.default, (a["q"], [-1, n, d]))  # [T, n, d]
        k2 = g.call_function(aten.reshape.default, (a["k"], [-1, n_kv, d]))  # [T, n_kv, d]
        v2 = g.call_function(aten.reshape.default, (a["v"], [-1, n_kv, d_v]))  # [T, n_kv, d_v]
        args = (q2, k2, v2, *caches, *(seq[name] for name in SequenceInfo.GRAPH_INPUTS),
                a["sinks"], float(scale), a["sliding_window"], a["logit_softcap"])
        out = g.call_function(CACHED_ATTENTION, args)  # [T, n, d_v]
        out4 = g.call_function(aten.unsqueeze.default, (out, 0))  # [1, T, n, d_v]
    out.meta.update({k_: v_ for k_, v_ in node.meta.items() if k_ in ("nn_module_stack", "stack_trace")})
    node.replace_all_uses_with(out4)
    g.erase_node(node)
    return LayerCacheSpec(n_kv=n_kv, head_dim=d, v_head_dim=d_v, dtype=k.dtype, sliding_window=a["sliding_window"])


# Linear ops an lm_head may be by the time Stage.CACHE runs: aten.linear, the quantized linears
# (Stage.QUANTIZE) and what select_backends (Stage.FUSE) may have put in their place: a Triton twin, or a
# canonical op's `_tuned` / `_compiled` variant (profiler/variants.py: the same schema). Each takes x [.., K]
# first and maps each row alone, so gathering x's rows gathers the logits' rows. Names, not ops: the twins
# and variants exist only once the Triton backends are imported or select_backends derived them.
_LINEAR_OP_NAMES = ("triton_linear", "fp8_linear", "triton_fp8_linear", "int8_wo_linear", "int4_wo_linear",
                    "int4_wo_linear_kmajor", "triton_int4_wo_linear", "triton_int4_wo_linear_dot",
                    "triton_int4_wo_linear_kmajor")
_VARIANTS = ("", "_tuned", "_compiled")


def _is_linear(node: fx.Node) -> bool:
    """A linear (plain, quantized, a Triton twin or a tuned variant: _LINEAR_OP_NAMES) whose only per-token
    input is x."""
    if is_op(node, aten.linear):
        return True
    ops = [getattr(torch.ops.autodeploy, n + v).default for n in _LINEAR_OP_NAMES for v in _VARIANTS
           if hasattr(torch.ops.autodeploy, n + v)]
    return is_op(node, tuple(ops))


def _lm_head(gm: fx.GraphModule) -> fx.Node | None:
    """The lm_head linear (its input: hidden states [B, S, H]), walking back from the output."""
    x = next(n for n in reversed(gm.graph.nodes) if n.op == "output").args[0]
    while isinstance(x, fx.Node) and x.op == "call_function":
        if _is_linear(x):
            h = val(x.args[0])
            return x if isinstance(h, torch.Tensor) and h.dim() == 3 else None
        others = [a for a in x.args[1:] if isinstance(a, fx.Node)]
        if not is_op(x, _ROWWISE) or others:
            return None
        x = x.args[0]
    return None


def _gather_last_tokens(gm: fx.GraphModule, cu_seqlens: fx.Node) -> bool:
    """Make the graph return logits [b, V] of each sequence's last token; True if before the lm_head."""
    g = gm.graph
    output = next(n for n in reversed(g.nodes) if n.op == "output")
    lm_head = _lm_head(gm)
    # gather the lm_head's input [1, T, H]; failing that, the logits [1, T, V] at the output
    consumer = lm_head if lm_head is not None else output
    target = consumer.args[0]
    with g.inserting_before(target.next):  # in this order, right after target
        ends = g.call_function(aten.slice.Tensor, (cu_seqlens, 0, 1))  # [b] = cu_seqlens[1:]
        last = g.call_function(aten.sub.Tensor, (ends, 1))  # [b] index of each sequence's last token
        rows = g.call_function(aten.index_select.default, (target, 1, last))  # [1, b, *]
    consumer.replace_input_with(target, rows)
    logits = output.args[0]  # [1, b, V]
    with g.inserting_before(output):
        out = g.call_function(aten.select.int, (logits, 0, 0))  # [b, V]
    output.args = (out,)
    return lm_head is not None


def _drop_export_guards(gm: fx.GraphModule) -> None:
    """The export's input checks describe the uncached signature (two [B, S] inputs): they no longer apply."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            gm.graph.erase_node(node)
    if hasattr(gm, "validate_inputs"):  # the unlifted module's pre-hook matching args to the export's spec
        gm.validate_inputs = False


@register(Stage.CACHE, shape_prop=True)
def apply(gm, ctx, cfg) -> TransformInfo:
    attns = nodes_of(gm, ATTENTION)
    problem = _uncacheable(gm, ctx, attns)
    if problem:
        return TransformInfo(warning=problem)
    _drop_export_guards(gm)
    inputs = StepInputs(gm)
    inputs.pack_tokens()
    seq = inputs.add_sequence_inputs()
    specs = []
    for i, node in enumerate(attns):
        a = bound_args(node)
        caches = inputs.add_cache_pair(i, val(a["k"]), val(a["v"]))
        specs.append(_replace_attention(gm, node, caches, seq))
    before_lm_head = _gather_last_tokens(gm, seq["cu_seqlens"])
    gm.meta[SPEC_KEY] = specs
    rt = getattr(ctx.recipe, "runtime", None)
    if rt is not None:  # the export's [batch, seq] dims are gone; these are the step's
        gm.meta["dynamic_dims"] = {"tokens": (1, rt.max_num_tokens), "seqs": (1, rt.max_batch_size)}
    info = TransformInfo(matches=len(attns), changed=True,
                         details={"layers": len(specs), "gather_before_lm_head": before_lm_head})
    if not before_lm_head:
        info.warning = "lm_head not found: logits are computed for every token, then gathered"
    return info

"""The memory-bandwidth roofline of a decode step.

A decode step must read every weight once (the embedding table is not read whole: one row per
token, so it is left out) plus each sequence's KV cache up to its context length. Over the copy
bandwidth measured on the same device in the same run, that gives the fastest possible step:

    step_bytes(b, ctx) = weight_bytes + b * ctx * kv_bytes_per_token
    roofline tok/s     = b * bandwidth / step_bytes

Bandwidth counts bytes read plus bytes written of a large device-to-device copy (a host memcpy
on the CPU), the convention of ../shared/device/README.md (3016 GB/s on an H100 80GB).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import fx

from autodeploy.graph import aten, is_op


def copy_bandwidth(device: torch.device | str, nbytes: int | None = None, reps: int = 10) -> float:
    """Bytes per second (read + written) of a large copy on `device`, median of `reps`."""
    device = torch.device(device)
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (1 << 27)  # 1 GiB on a GPU: far beyond L2
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t0)
    return 2 * src.numel() * 4 / statistics.median(times)


def _embedding_tables(gm: fx.GraphModule) -> set[str]:
    """get_attr targets used only as the table of aten.embedding (a tied lm_head is read whole)."""
    out = set()
    for node in gm.graph.nodes:
        if node.op != "get_attr" or not node.users:
            continue
        if all(is_op(u, aten.embedding) and u.args[0] is node for u in node.users):
            out.add(str(node.target))
    return out


def weight_bytes(gm: fx.GraphModule) -> tuple[int, int]:
    """(bytes of all parameters, bytes a decode step reads: all but embedding-only tables).

    Tied tensors count once (by storage)."""
    tables = _embedding_tables(gm)
    seen: dict[int, bool] = {}  # storage ptr -> read per step
    sizes: dict[int, int] = {}
    for name, p in gm.named_parameters(remove_duplicate=False):
        if p.device.type == "meta":
            key = id(p)
        else:
            key = p.untyped_storage().data_ptr()
        sizes[key] = p.numel() * p.element_size()
        seen[key] = seen.get(key, False) or name not in tables
    total = sum(sizes.values())
    read = sum(sizes[k] for k, r in seen.items() if r)
    return total, read


def kv_bytes_per_token(gm: fx.GraphModule | None = None, hf_config: Any = None, dtype: torch.dtype = torch.bfloat16) -> int:
    """KV-cache bytes one token occupies over all layers: the cache spec when present, else the config."""
    if gm is not None and gm.meta.get("kv_cache_spec"):
        return sum(s.bytes_per_token() for s in gm.meta["kv_cache_spec"])
    if hf_config is None:
        return 0
    cfg = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    layers = cfg.num_hidden_layers
    n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return layers * n_kv * head_dim * 2 * torch.empty((), dtype=dtype).element_size()


@dataclass
class Roofline:
    weight_bytes: int  # read per decode step
    param_bytes: int  # all parameters
    kv_bytes_per_token: int
    bandwidth: float  # bytes/s, read + written

    def step_bytes(self, batch: int, context: float) -> float:
        return self.weight_bytes + batch * context * self.kv_bytes_per_token

    def step_seconds(self, batch: int, context: float) -> float:
        return self.step_bytes(batch, context) / self.bandwidth

    def tokens_per_s(self, batch: int, context: float) -> float:
        """The fastest decode throughput (all sequences) at this batch and mean context."""
        return batch / self.step_seconds(batch, context)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bandwidth_gb_s"] = self.bandwidth / 1e9
        return d


def mean_decode_context(input_len: int, output_len: int) -> float:
    """Mean KV length read over the decode steps of a fixed-length request (input_len .. input_len + output_len - 2)."""
    return input_len + (output_len - 2) / 2 if output_len > 1 else float(input_len)


def roofline_for(gm: fx.GraphModule, hf_config: Any, device: torch.device | str, dtype: torch.dtype,
                 bandwidth: float | None = None) -> Roofline:
    total, read = weight_bytes(gm)
    bw = bandwidth if bandwidth is not None else copy_bandwidth(device)
    return Roofline(read, total, kv_bytes_per_token(gm, hf_config, dtype), bw)

"""Scatter a step's new keys and values into the paged KV cache: `autodeploy::triton_kv_cache_write`.

    k [T, n_kv, d], v [T, n_kv, d_v]                      (or [b, s, ...], flattened to T = b * s tokens)
    k_cache [num_pages, page_size, n_kv, d], v_cache [num_pages, page_size, n_kv, d_v]
    slot_mapping [T] int64: flat slot page * page_size + offset of each token; a negative slot skips
                  the token (padding rows of a CUDA-graph bucket write nothing).

One program per token writes its k and v rows; the cache's dtype wins (values are cast on the store).
k / v may be strided views of a fused qkv output: only the head dim must be contiguous.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from autodeploy.backends.triton._common import unit_stride, unsupported_device_or_dtype


@triton.jit
def _kv_write_kernel(
    k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr,
    sk_t, sk_h, sv_t, sv_h,
    skc_p, skc_s, skc_h, svc_p, svc_s, svc_h,
    N_KV: tl.constexpr, D: tl.constexpr, D_V: tl.constexpr, PAGE_SIZE: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot >= 0:
        page = slot // PAGE_SIZE
        off = slot % PAGE_SIZE
        h = tl.arange(0, BLOCK_H)
        dk = tl.arange(0, BLOCK_D)
        mk = (h < N_KV)[:, None] & (dk < D)[None, :]
        kv = tl.load(k_ptr + t * sk_t + h[:, None] * sk_h + dk[None, :], mask=mk)
        tl.store(kc_ptr + page * skc_p + off * skc_s + h[:, None] * skc_h + dk[None, :],
                 kv.to(kc_ptr.dtype.element_ty), mask=mk)
        dv = tl.arange(0, BLOCK_DV)
        mv = (h < N_KV)[:, None] & (dv < D_V)[None, :]
        vv = tl.load(v_ptr + t * sv_t + h[:, None] * sv_h + dv[None, :], mask=mv)
        tl.store(vc_ptr + page * svc_p + off * svc_s + h[:, None] * svc_h + dv[None, :],
                 vv.to(vc_ptr.dtype.element_ty), mask=mv)


def _tokens(x: Tensor) -> Tensor:
    """[..., n_kv, d] -> [T, n_kv, d], a view when the token dims flatten."""
    return unit_stride(x.reshape(-1, x.shape[-2], x.shape[-1]))


def unsupported_reason(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor) -> Optional[str]:
    why = unsupported_device_or_dtype(k, v, k_cache, v_cache)
    if why:
        return why
    if k_cache.dim() != 4 or v_cache.dim() != 4 or k_cache.shape[:3] != v_cache.shape[:3]:
        return "caches must be [num_pages, page_size, n_kv, d] with the same pages, page size and heads"
    if k.shape[-2:] != k_cache.shape[-2:] or v.shape[-2:] != v_cache.shape[-2:]:
        return f"k {tuple(k.shape)} / v {tuple(v.shape)} do not match the caches' heads and dims"
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        return "cache head dim must be contiguous"
    return None


def supports(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor) -> bool:
    return unsupported_reason(k, v, k_cache, v_cache) is None


def launch(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor, check: bool = True) -> None:
    """check=False: the caller already validated (each check costs host time on every step)."""
    why = unsupported_reason(k, v, k_cache, v_cache) if check else None
    if why:
        raise NotImplementedError(f"triton kv_cache_write: {why}")
    k3, v3 = _tokens(k), _tokens(v)  # [T, n_kv, d], [T, n_kv, d_v]
    t = k3.shape[0]
    if t == 0:
        return
    n_kv, d, d_v = k3.shape[1], k3.shape[2], v3.shape[2]
    _kv_write_kernel[(t,)](
        k3, v3, k_cache, v_cache, slot_mapping,
        k3.stride(0), k3.stride(1), v3.stride(0), v3.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        N_KV=n_kv, D=d, D_V=d_v, PAGE_SIZE=k_cache.shape[1],
        BLOCK_H=triton.next_power_of_2(n_kv), BLOCK_D=triton.next_power_of_2(d),
        BLOCK_DV=triton.next_power_of_2(d_v), num_warps=4,
    )


@torch.library.custom_op("autodeploy::triton_kv_cache_write", mutates_args=("k_cache", "v_cache"))
def triton_kv_cache_write(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor) -> None:
    """k [T, n_kv, d], v [T, n_kv, d_v] -> k_cache / v_cache at slot_mapping [T] (negative: skipped)."""
    launch(k, v, k_cache, v_cache, slot_mapping)


@triton_kv_cache_write.register_fake
def _(k, v, k_cache, v_cache, slot_mapping):
    return None

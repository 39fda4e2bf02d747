"""Triton KV-cache write (slot_mapping scatter) vs the reference write of autodeploy::cached_attention."""

from __future__ import annotations

import pytest
import torch

from autodeploy.backends.torch.cached_attention import write_kv
from autodeploy.backends.triton import kv_cache_write
from tests.backends.triton.cases import DEVICE, dtypes, randn
from tests.backends.triton.paged import make_step


@dtypes
def test_matches_reference_write(dtype):
    step = make_step([(5, 0), (3, 6), (1, 12)], n_kv=2, d=16, d_v=8, page_size=4, dtype=dtype)
    i = step.info
    kc, vc = step.k_cache.clone(), step.v_cache.clone()
    torch.ops.autodeploy.triton_kv_cache_write(step.k, step.v, kc, vc, i.slot_mapping)
    kc_ref, vc_ref = step.k_cache.clone(), step.v_cache.clone()
    write_kv(step.k, step.v, kc_ref, vc_ref, i.slot_mapping)
    assert torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)  # a copy: bit-exact, every other slot kept


def test_strided_views_of_fused_qkv_and_cache_dtype_cast():
    n, n_kv, d = 4, 2, 16
    qkv = randn(6, n + 2 * n_kv, d)  # [T, heads, d]: k and v are strided views
    k, v = qkv[:, n : n + n_kv], qkv[:, n + n_kv :]
    kc = torch.zeros(3, 4, n_kv, d, device=DEVICE, dtype=torch.float16)
    vc = torch.zeros_like(kc)
    slots = torch.tensor([9, 2, 0, 11, 5, 6], device=DEVICE)
    kv_cache_write.launch(k, v, kc, vc, slots)
    assert torch.equal(kc.flatten(0, 1)[slots], k.half())
    assert torch.equal(vc.flatten(0, 1)[slots], v.half())


def test_negative_slots_are_skipped():
    k, v = randn(3, 1, 16), randn(3, 1, 16)
    kc = torch.zeros(2, 4, 1, 16, device=DEVICE)
    vc = torch.zeros_like(kc)
    kv_cache_write.launch(k, v, kc, vc, torch.tensor([3, -1, 4], device=DEVICE))
    flat = kc.flatten(0, 1)
    assert torch.equal(flat[3], k[0]) and torch.equal(flat[4], k[2])
    assert int((flat.abs().sum(-1) > 0).sum()) == 2  # the padding row wrote nothing


def test_bsnd_input_and_mismatch():
    k = randn(1, 4, 2, 16)  # [b, s, n_kv, d] flattens to 4 tokens
    kc = torch.zeros(2, 4, 2, 16, device=DEVICE)
    vc = torch.zeros_like(kc)
    kv_cache_write.launch(k, k, kc, vc, torch.arange(4, device=DEVICE))
    assert torch.equal(kc[0], k[0])
    with pytest.raises(NotImplementedError, match="do not match"):
        kv_cache_write.launch(randn(4, 2, 8), randn(4, 2, 8), kc, vc, torch.arange(4, device=DEVICE))

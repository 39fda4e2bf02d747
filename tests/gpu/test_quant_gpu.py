"""Quantized linears on the GPU: the Triton int4 kernel at model shapes (and inside a CUDA graph),
FP8 through torch._scaled_mm, and whole tiny-Llama pipelines quantized with CUDA graphs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import autodeploy.ops  # noqa: F401
from autodeploy.quantization import fp8, int4
from autodeploy.quantization.metrics import sqnr
from tests.helpers.tolerances import assert_close

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _int4(n, k, g=128, dtype=torch.bfloat16):
    p = int4.quantize(torch.randn(n, k, device="cuda") / k**0.5, g)
    return p["qweight"], p["scales"].to(dtype), p["zeros"].to(dtype)


@pytest.mark.parametrize("m", [1, 4, 16, 300])
@pytest.mark.parametrize("n,k", [(4096, 4096), (1024, 4096), (4096, 14336), (6144, 4096)])
def test_triton_int4_matches_reference(m, n, k):
    from autodeploy.backends.triton import int4_gemm

    qw, s, z = _int4(n, k)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16) if m == 4 else None
    got = int4_gemm.launch(x, qw, s, z, bias, 128)
    want = torch.ops.autodeploy.int4_wo_linear(x, qw, s, z, bias, 128)
    assert sqnr(got, want) >= 40.0  # same dequantized weights; fp32 accumulation vs cuBLAS bf16 output
    assert_close(got, want)


@pytest.mark.parametrize("g", [32, 64])
def test_triton_int4_small_groups(g):
    from autodeploy.backends.triton import int4_gemm

    qw, s, z = _int4(2048, 4096, g)
    x = torch.randn(2, 4096, device="cuda", dtype=torch.bfloat16)
    assert sqnr(int4_gemm.launch(x, qw, s, z, None, g), torch.ops.autodeploy.int4_wo_linear(x, qw, s, z, None, g)) >= 40.0


def test_triton_int4_replays_in_a_cuda_graph():
    qw, s, z = _int4(1024, 4096)  # split-K at decode: partials buffer and reduction inside the graph
    x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    op = torch.ops.autodeploy.triton_int4_wo_linear
    op(x, qw, s, z, None, 128)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = op(x, qw, s, z, None, 128)
    x.copy_(torch.randn_like(x))
    graph.replay()
    assert_close(out, torch.ops.autodeploy.int4_wo_linear(x, qw, s, z, None, 128))


def test_fp8_scaled_mm_path():
    from autodeploy.backends.torch.quant_linear import scaled_mm_reason

    w = torch.randn(4096, 4096, device="cuda") / 64
    p = fp8.quantize(w)
    x = torch.randn(8, 4096, device="cuda", dtype=torch.bfloat16)
    assert scaled_mm_reason(x, p["weight"], p["weight_scale"], True) is None, "H100 should take torch._scaled_mm"
    got = torch.ops.autodeploy.fp8_linear(x, p["weight"], p["weight_scale"], None, True)
    cpu = torch.ops.autodeploy.fp8_linear(x.cpu(), p["weight"].cpu(), p["weight_scale"].cpu(), None, True)
    assert got.dtype == torch.bfloat16
    assert sqnr(got.cpu(), cpu) >= 35.0  # the same e4m3 operands, different accumulation / rounding
    assert sqnr(got.float(), F.linear(x.float(), w)) >= 25.0


def _tiny_llama_runtime(tmp_path, transforms: list[str], backend: str):
    from autodeploy.profiler.bench import build_runtime
    from tests.helpers.tiny_models import save_tiny

    d = tmp_path / "tiny"
    if not d.exists():
        save_tiny("llama", d)
    overrides = ["runtime.dtype=bfloat16", f"runtime.compile_backend={backend}", "runtime.max_batch_size=4",
                 "runtime.max_seq_len=128", "runtime.max_num_tokens=256", "runtime.kv_page_size=16",
                 "runtime.kv_num_pages=64", "runtime.cuda_graph_batch_sizes=[1,2,4]"] + transforms
    return build_runtime(str(d), "h100", overrides)


@pytest.mark.parametrize("quant", [
    ["transforms.quantize_int4_weight_only.enabled=true", "transforms.quantize_int4_weight_only.group_size=32"],
    ["transforms.quantize_fp8.enabled=true"],
    ["transforms.quantize_int8_weight_only.enabled=true"],
])
def test_tiny_llama_quantized_cuda_graph_matches_eager(tmp_path, quant):
    from autodeploy.runtime.sampling import SamplingParams

    prompts = [[5, 17, 33, 2, 9], [100, 3], [44, 45, 46, 47, 48, 49, 50]]
    sampling = SamplingParams(max_tokens=16, ignore_eos=True)
    rt = _tiny_llama_runtime(tmp_path, quant, "cuda-graph")
    graphed = [o.token_ids for o in rt.generate(prompts, sampling)]
    eager = [o.token_ids for o in _tiny_llama_runtime(tmp_path, quant, "eager").generate(prompts, sampling)]
    assert graphed == eager
    targets = {n.target for n in rt.graph_module.graph.nodes if n.op == "call_function"}
    names = {getattr(t, "__name__", str(t)) for t in targets}
    assert any("int4" in n or "fp8" in n or "int8" in n for n in names)

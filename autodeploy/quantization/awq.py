"""AWQ: activation-aware int4 (Lin et al., 2023): protect the weights that meet large activations.

For linears that read the same input x [n, K] (q/k/v, or gate/up), one per-input-channel scale
s [K] multiplies the weights before rounding and divides the input:

    y = x W^T = (x / s) (W diag(s))^T  ~=  (x / s) Q(W diag(s))^T

Channels with large activations get s > 1, so their weights sit on a finer grid relative to the
rounding step. s = mean|x|^alpha (normalized), alpha searched on a grid to minimize the group's
output error. The 1/s is then folded into whatever produced x (an RMSNorm weight, or the rows of
the `up` projection feeding `down` through act(gate) * up), so the quantized model runs the plain
int4 op. Then each linear searches a clipping ratio per (output channel, group): shrinking the
range trades clipping of rare large weights for a finer grid on the rest.
"""

from __future__ import annotations

import torch
from torch import Tensor

from autodeploy.quantization import int4

ALPHAS = torch.linspace(0.0, 1.0, 21).tolist()  # 0, 0.05, ..., 1
CLIP_RATIOS = torch.linspace(1.0, 0.5, 11).tolist()  # 1, 0.95, ..., 0.5 of the group's range
SCALE_TOKENS = 1024  # tokens sampled for the scale search (each alpha is a [tokens, K] x [K, N] product)
CLIP_TOKENS = 256  # tokens sampled for the clip search
CHUNK_ROWS = 1024  # output channels per step of the clip search (bounds its [tokens, rows, groups] buffer)


def fake_quant(w: Tensor, group_size: int, clip: Tensor | None = None) -> Tensor:
    """Round-to-nearest int4 and back (fp32), as the int4 op will see the weight."""
    p = int4.quantize(w.float(), group_size, clip)
    return int4.dequantize(p["qweight"], p["scales"], p["zeros"], group_size)


def _sample(x: Tensor, n: int) -> Tensor:
    """At most n rows of x [t, K], evenly spaced (calibration windows stay represented)."""
    return x if x.shape[0] <= n else x[torch.linspace(0, x.shape[0] - 1, n, device=x.device).long()]


@torch.no_grad()
def search_scale(x: Tensor, weights: list[Tensor], group_size: int) -> tuple[Tensor, float]:
    """x [n, K], weights [N_i, K] sharing that input -> (s [K] fp32, best alpha)."""
    x = x.reshape(-1, x.shape[-1]).float()
    x_mean = x.abs().mean(dim=0)  # [K], over every token
    x = _sample(x, SCALE_TOKENS)
    w_cat = torch.cat([w.float() for w in weights], dim=0)  # [sum N_i, K]
    ref = x @ w_cat.T
    best, best_s, best_alpha = float("inf"), torch.ones_like(x_mean), 0.0
    for alpha in ALPHAS:
        s = x_mean.pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()  # centred on 1 so scales neither over- nor underflow
        q = fake_quant(w_cat * s, group_size) / s
        err = (ref - x @ q.T).pow(2).mean().item()
        if err < best:
            best, best_s, best_alpha = err, s, alpha
    return best_s, best_alpha


@torch.no_grad()
def search_clip(x: Tensor, w: Tensor, group_size: int) -> Tensor:
    """Per (output channel, group) clipping ratio [N, K/g] minimizing that group's share of the output error."""
    x = _sample(x.reshape(-1, x.shape[-1]).float(), CLIP_TOKENS)
    n, k = w.shape
    groups = k // group_size
    xg = x.reshape(-1, groups, group_size)  # [t, G, g]
    best_ratio = torch.ones(n, groups, device=w.device)
    for r0 in range(0, n, CHUNK_ROWS):
        wc = w[r0 : r0 + CHUNK_ROWS].float()
        wg = wc.reshape(-1, groups, group_size)  # [rows, G, g]
        best_err = torch.full((wc.shape[0], groups), float("inf"), device=w.device)
        for ratio in CLIP_RATIOS:
            clip = torch.full((wc.shape[0], groups), ratio, device=w.device)
            dq = fake_quant(wc, group_size, clip).reshape_as(wg)
            err = torch.einsum("tgk,rgk->trg", xg, wg - dq).pow(2).mean(0)  # [rows, G]
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_ratio[r0 : r0 + CHUNK_ROWS] = torch.where(better, ratio, best_ratio[r0 : r0 + CHUNK_ROWS])
    return best_ratio


def quantize(w: Tensor, x: Tensor, group_size: int, scale: Tensor | None = None) -> dict[str, Tensor]:
    """One linear: weights times the input scale (if any), clip search, round. The caller divides the input by s."""
    ws = w.float() * scale if scale is not None else w.float()
    xs = x.reshape(-1, x.shape[-1]).float() / scale if scale is not None else x
    clip = search_clip(xs, ws, group_size)
    return int4.quantize(ws.to(w.dtype), group_size, clip)


def quantize_group(x: Tensor, weights: list[Tensor], group_size: int, scale_input: bool = True):
    """Layer-level AWQ for linears sharing input x: -> (s [K] or None, [parts per weight]).

    With `scale_input` False (no op before x to fold 1/s into) only the clip search runs.
    """
    s = search_scale(x, weights, group_size)[0] if scale_input else None
    return s, [quantize(w, x, group_size, s) for w in weights]

"""Regression check between two `autodeploy bench --json` results.

Workloads are matched by name; each metric has a direction (throughput up is better, latency
and memory down is better). A change for the worse beyond `threshold` percent is a regression.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autodeploy.errors import AutoDeployError

# metric -> True when higher is better
METRICS: dict[str, bool] = {
    "tokens_per_s": True,
    "tokens_per_s_per_seq": True,
    "decode_tokens_per_s": True,
    "output_tokens_per_s": True,
    "pct_roofline": True,
    "ttft_ms": False,
    "tpot_ms": False,
    "ttft_ms_p50": False,
    "ttft_ms_p99": False,
    "tpot_ms_p50": False,
    "tpot_ms_p99": False,
    "peak_memory_gb": False,
}
TOP_LEVEL: dict[str, bool] = {"optimize_s": False}


@dataclass
class Change:
    workload: str
    metric: str
    baseline: float
    current: float
    higher_is_better: bool

    @property
    def pct(self) -> float:
        """Signed change in percent, positive = better."""
        if self.baseline == 0:
            return 0.0
        delta = (self.current - self.baseline) / abs(self.baseline) * 100
        return delta if self.higher_is_better else -delta


def load_result(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise AutoDeployError(f"--compare {path}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise AutoDeployError(f"--compare {path}: not a bench JSON file ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("workloads"), list):
        raise AutoDeployError(f"--compare {path}: not a bench JSON file (no 'workloads' list)")
    return data


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def changes(current: dict[str, Any], baseline: dict[str, Any]) -> list[Change]:
    """Every metric present (as a number) in both results, workload by workload."""
    out = []
    for metric, up in TOP_LEVEL.items():
        a, b = _num(baseline.get(metric)), _num(current.get(metric))
        if a is not None and b is not None:
            out.append(Change("(run)", metric, a, b, up))
    base = {w.get("name"): w for w in baseline.get("workloads", [])}
    for w in current.get("workloads", []):
        old = base.get(w.get("name"))
        if old is None:
            continue
        for metric, up in METRICS.items():
            a, b = _num(old.get(metric)), _num(w.get(metric))
            if a is not None and b is not None:
                out.append(Change(w["name"], metric, a, b, up))
    return out


def regressions(current: dict[str, Any], baseline: dict[str, Any], threshold: float) -> list[Change]:
    """Changes for the worse by more than `threshold` percent."""
    return [c for c in changes(current, baseline) if c.pct < -threshold]

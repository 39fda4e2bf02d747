"""Server metrics in the Prometheus text format (0.0.4), written without a client library.

    autodeploy_requests_total{endpoint, finish_reason}   counter
    autodeploy_prompt_tokens_total / _generation_tokens_total  counters
    autodeploy_time_to_first_token_seconds              histogram
    autodeploy_time_per_output_token_seconds            histogram (after the first token)
    autodeploy_request_latency_seconds                  histogram (submit to last token)
    autodeploy_kv_pages_{used,free,total}, _num_requests_{waiting,running}, _num_preemptions_total
                                                        from the engine, after its latest step
Updated from the event loop only, so no lock.
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Any

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Histogram:
    def __init__(self, name: str, help: str, buckets: tuple[float, ...]):
        self.name, self.help, self.buckets = name, help, buckets
        self.counts = [0] * (len(buckets) + 1)  # the last: +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, v)] += 1
        self.sum += v
        self.count += 1

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        acc = 0
        for le, c in zip([*map(_num, self.buckets), "+Inf"], self.counts):
            acc += c
            out.append(f'{self.name}_bucket{{le="{le}"}} {acc}')
        out += [f"{self.name}_sum {_num(self.sum)}", f"{self.name}_count {self.count}"]
        return out


def _num(v: float) -> str:
    return repr(float(v)) if not float(v).is_integer() else str(int(v)) if abs(v) < 1e15 else repr(float(v))


def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class ServerMetrics:
    def __init__(self):
        self.requests: Counter[tuple[str, str]] = Counter()
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.ttft = Histogram("autodeploy_time_to_first_token_seconds", "Time from request to its first token.",
                              TTFT_BUCKETS)
        self.tpot = Histogram("autodeploy_time_per_output_token_seconds",
                              "Mean time per output token after the first, per request.", TPOT_BUCKETS)
        self.latency = Histogram("autodeploy_request_latency_seconds", "Time from request to its last token.",
                                 LATENCY_BUCKETS)

    def record(self, endpoint: str, finish_reason: str, prompt_tokens: int, output_tokens: int,
               t_submit: float, t_first: float | None, t_last: float | None) -> None:
        self.requests[(endpoint, finish_reason or "none")] += 1
        self.prompt_tokens += prompt_tokens
        self.generation_tokens += output_tokens
        if t_first is not None:
            self.ttft.observe(t_first - t_submit)
            self.latency.observe((t_last or t_first) - t_submit)
            if output_tokens > 1 and t_last is not None:
                self.tpot.observe((t_last - t_first) / (output_tokens - 1))

    def record_rejected(self, endpoint: str, status: int) -> None:
        self.requests[(endpoint, f"rejected_{status}")] += 1

    def render(self, engine: dict[str, Any]) -> str:
        out = ["# HELP autodeploy_requests_total Requests by endpoint and how they ended.",
               "# TYPE autodeploy_requests_total counter"]
        for (ep, reason), n in sorted(self.requests.items()):
            out.append(f'autodeploy_requests_total{{endpoint="{_label(ep)}",finish_reason="{_label(reason)}"}} {n}')
        for name, help, v in (("prompt_tokens_total", "Prompt tokens of finished requests.", self.prompt_tokens),
                              ("generation_tokens_total", "Tokens generated for finished requests.",
                               self.generation_tokens)):
            out += [f"# HELP autodeploy_{name} {help}", f"# TYPE autodeploy_{name} counter", f"autodeploy_{name} {v}"]
        for h in (self.ttft, self.tpot, self.latency):
            out += h.lines()
        gauges = (("kv_pages_used", "KV cache pages held by requests.", "kv_pages_used"),
                  ("kv_pages_free", "KV cache pages allocatable now (cached ones included).", "kv_pages_free"),
                  ("kv_pages_total", "KV cache pages in the pool.", "kv_pages_total"),
                  ("num_requests_waiting", "Requests queued (the scheduler's waiting queue).", "num_waiting"),
                  ("num_requests_running", "Requests in the running batch.", "num_running"))
        for name, help, key in gauges:
            out += [f"# HELP autodeploy_{name} {help}", f"# TYPE autodeploy_{name} gauge",
                    f"autodeploy_{name} {engine.get(key, 0)}"]
        out += ["# HELP autodeploy_num_preemptions_total Requests preempted (KV recomputed later).",
                "# TYPE autodeploy_num_preemptions_total counter",
                f"autodeploy_num_preemptions_total {engine.get('num_preemptions', 0)}"]
        return "\n".join(out) + "\n"

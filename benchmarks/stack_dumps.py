"""Run a module with every thread's Python stack dumped to stderr every N seconds (finding where a
long build spends its time on the GPU machine, where no profiler is installed).

    python3 benchmarks/stack_dumps.py 60 autodeploy bench random:llama-3.2-1b --recipe h100 ...
"""

from __future__ import annotations

import faulthandler
import runpy
import sys

if __name__ == "__main__":
    every, module, *args = sys.argv[1:]
    faulthandler.dump_traceback_later(float(every), repeat=True, file=sys.stderr)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)

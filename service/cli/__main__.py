"""``python -m service.cli``: the bnlab command without its installed entry point."""

from service.cli import app

app(prog_name="bnlab")

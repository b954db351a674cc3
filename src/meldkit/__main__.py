"""``python -m meldkit`` is the ``meldkit`` command."""

from meldkit.cli.main import run

run()

"""The ``fedloom`` command: `fedloom.cli.main.main` parses arguments and dispatches.

There is one module per subcommand (`simulate`, `server`, `client`, `certs`,
`launch`). Nothing else in fedloom imports this package; it is where everything
is wired together. The package itself imports nothing, so ``python -m
fedloom.cli.main`` runs cleanly.
"""

__all__: list[str] = []

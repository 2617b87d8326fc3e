"""Command line: every argparse parser and every ``print`` of ``python -m engine``.

:mod:`engine.cli.main` builds the parser and dispatches to one module per subcommand.
"""

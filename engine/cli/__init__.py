"""Command line: every argparse parser and every ``print`` of ``python -m engine``."""

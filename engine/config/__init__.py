"""Configuration: frozen dataclasses loaded from TOML, with ``--set key=value`` overrides.

The first floor of the engine: every later stage reads its settings from here and from
nothing else.
"""

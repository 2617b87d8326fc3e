"""Telemetry: per-request events, step metrics, logging, convergence monitoring and export.

Imports only configuration, so every later stage (the client included) can write events.
"""

"""Endpoints: the rate-limited OpenAI-compatible client, its limits, retry rules and the
typed structured-output modules built on it.
"""

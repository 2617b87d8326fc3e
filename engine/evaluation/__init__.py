"""Evaluation: A/B comparison of two models and the HTML report of a run."""

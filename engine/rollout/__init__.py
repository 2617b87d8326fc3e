"""Rollout: one group fanned out (G samples generated and scored), admitted whole by the gate
of :mod:`~engine.rollout.admission`, and a policy's greedy evaluation on a dataset."""

"""Rollout: one group fanned out (G samples generated and scored), and greedy evaluation."""

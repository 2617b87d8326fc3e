"""Rewards: reward functions, LLM judges and the rewarder that combines them."""

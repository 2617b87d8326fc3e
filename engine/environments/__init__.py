"""Multi-turn, tool-using rollouts: environments, tools and the episode runner.

An *episode* is a chain of turns against the policy: the policy's turn, the environment's
reply (tool results, feedback, a simulated user), until the environment says it is done or a
limit is reached. See :mod:`engine.environments.base` for the protocols.
"""

"""Multi-turn, tool-using rollouts: environments, tools and the episode runner.

An *episode* is a chain of turns against the policy: the policy's turn, the environment's
reply (tool results, feedback, a simulated user), until the environment says it is done or a
limit is reached; semantics in :mod:`~engine.environments.base`.

- :mod:`~engine.environments.base`: the protocols (Tool, Environment, Episode, Conversation)
  and records (EpisodeLimits, EpisodeRecord, TurnRecord, ToolResult);
- :mod:`~engine.environments.runner`: the episode runner the rollout stage uses;
- :mod:`~engine.environments.chat`: the conversation of an endpoint policy (chat tools, or
  the text protocol) through the endpoint client;
- :mod:`~engine.environments.text_protocol`: ``<tool_call>``/``<tool_result>`` tags;
- :mod:`~engine.environments.tools`: running calls (parallel, errors as results);
- :mod:`~engine.environments.calculator`: the built-in calculator task;
- :mod:`~engine.environments.registry`: the names ``[environment] name`` may select.
"""

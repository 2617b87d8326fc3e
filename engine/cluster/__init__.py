"""Beyond one machine, on Ray: reward workers, rollout shards, one shared rate limit.

Nothing here imports Ray until it is used (``import engine`` stays light); without Ray
installed, asking for it is one :class:`~engine.errors.ConfigError` naming
``pip install 'grpo-engine[ray]'``. The modules:

* :mod:`~engine.cluster.connect`: join or start the cluster; refuse nodes that differ;
* :mod:`~engine.cluster.rewards`: CPU-heavy reward functions (the sandbox) on reward workers;
* :mod:`~engine.cluster.limiter`: the limiter actor and the shards' leased permits;
* :mod:`~engine.cluster.shards`: rollout shards as async actors;
* :mod:`~engine.cluster.training`: :class:`ClusterTrainingManager`, a run on the cluster.
"""

"""A/B testing: ``ModelComparator`` answers the same inputs with two models and tests the gap.

Example::

    a = await load_generator("runs/latest#ref")    # the run's initial (step-0) policy
    b = await load_generator("runs/latest")        # its latest checkpoint
    comparator = ModelComparator(a, b, heldout_examples(b.run_config),
                                 metrics=["quality", "diversity", "relevance"],
                                 samples_per_input=4, seed=0)
    result = await comparator.compare()
    print(result)                  # a table: means, B - A with a 95% CI, p-value, win/tie/loss
    result.improvement["quality"]  # (B - A) / |A|

**Models** (:mod:`.generation`, :mod:`.loading`). A model is anything with ``async
generate(example, n, seed) -> list[str]`` (:class:`Generator`). Adapters:
:class:`PolicyGenerator` (an engine policy and a snapshot, e.g. a tinylm checkpoint),
:class:`TextModelGenerator` (any object with an async ``generate(text)``, such as
``engine.training.finetune.FineTunedModel``), :class:`EndpointGenerator` (a fixed prompt on
an OpenAI-compatible endpoint). :func:`load_generator` builds one from a checkpoint directory
of a tinylm or prompt policy, a run directory (its latest checkpoint; ``#ref`` for the frozen
initial policy) or a TOML config. Both models get the same inputs with the same seeds
(common random numbers: with identical models the two sides are identical draws).

**Metrics** (:mod:`.scoring`, :mod:`.text_metrics`), each a number per input (the mean over
the ``k = samples_per_input`` samples):

* ``quality``: a reward function or judge ``(example, text) -> float`` (sync or async), an
  :class:`engine.rewards.rewarder.Rewarder` or a :class:`engine.rewards.rewarder.RewardSpec`.
  Default for tinylm checkpoints: the built-in task's reward (:func:`engine.data.tasks.reward`).
* ``preference`` (when ``pairwise_judge`` is given): a judge ``(example, first, second) ->
  float`` in [0, 1], the probability that ``first`` is better. A and B are shown in a seeded
  random order per sample; B's value is its share of the preference, A's the rest.
* ``diversity`` = 1 - the mean pairwise n-gram overlap among the k samples (Jaccard of the
  n-gram sets, averaged over n = 1, 2), plus ``distinct_1`` and ``distinct_2`` (unique n-grams
  / all n-grams over the k samples). Needs k >= 2.
* ``relevance``: a judge ``(example, text) -> float`` if ``relevance_judge`` is given, else
  :func:`lexical_relevance`: bag-of-words F1 between the input text and the output.
* custom metrics: callables ``(example, text) -> float`` (named by ``__name__``) or
  ``(name, callable)`` pairs.

**Statistics** (:mod:`.statistics`) on the per-input paired differences ``d = B - A``: the
mean, a percentile bootstrap CI (:func:`bootstrap_ci`), a two-sided sign-flip permutation
p-value (:func:`paired_permutation_test`; exact when n <= 16), win/tie/loss rates, and the
relative improvement ``(B - A) / |A|``.

**Failures are recorded, never zeroed.** A failed generation drops that input from every
metric (for both models, so pairs stay paired) and is listed in ``result.failures``; a failed
score drops that sample from its input's mean (the input is dropped when all k failed), and
is counted in ``result.score_failures``.
"""

from __future__ import annotations

from .comparator import BUILTIN_METRICS, ModelComparator
from .generation import (
    EndpointGenerator,
    Generator,
    PolicyGenerator,
    TextModelGenerator,
    as_generator,
)
from .loading import endpoint_generator, heldout_examples, load_generator
from .result import ComparisonResult
from .scoring import PairwiseJudge
from .statistics import MetricComparison, bootstrap_ci, compare_scores, paired_permutation_test
from .text_metrics import distinct_n, diversity, lexical_relevance, ngram_overlap, tokenize

__all__ = (
    "BUILTIN_METRICS",
    "ComparisonResult",
    "EndpointGenerator",
    "Generator",
    "MetricComparison",
    "ModelComparator",
    "PairwiseJudge",
    "PolicyGenerator",
    "TextModelGenerator",
    "as_generator",
    "bootstrap_ci",
    "compare_scores",
    "distinct_n",
    "diversity",
    "endpoint_generator",
    "heldout_examples",
    "lexical_relevance",
    "load_generator",
    "ngram_overlap",
    "paired_permutation_test",
    "tokenize",
)

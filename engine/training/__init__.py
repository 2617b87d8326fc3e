"""Training: the one assembly point, the training manager and its parts, and ``finetune()``.

:mod:`~engine.training.assembly` builds clients, judges, rewarders and policies from a config;
:mod:`~engine.training.trainer` runs GRPO with :mod:`~engine.training.producer` (batches ahead
of the learner), :mod:`~engine.training.heldout` (evaluation), :mod:`~engine.training.progress`
(early stopping), :mod:`~engine.training.checkpoints` and :mod:`~engine.training.outputs`
(the run directory), :mod:`~engine.training.rundir` (one owner per run directory) and
:mod:`~engine.training.resume` (continuing a run where it is); :mod:`~engine.training.saved`
decides what a saved config may supply (data, not authority: no endpoint, key variable or
import unless the user gives or trusts it); :mod:`~engine.training.stopping` turns signals
into clean stops; :mod:`~engine.training.finetune` is the API for prompt fine-tuning.
"""

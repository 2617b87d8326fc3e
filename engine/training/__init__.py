"""Training: the one assembly point, the training manager, and ``finetune()``."""

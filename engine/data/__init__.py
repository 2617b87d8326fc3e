"""Data: streamed JSONL examples, the seeded group sampler, built-in tasks and datasets."""

"""Policies: the ``Policy`` protocol, the GRPO objective, and the policies that implement them."""

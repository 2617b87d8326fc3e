"""Learning: group-relative advantages, the learner actor, optimizer math and checkpoints."""

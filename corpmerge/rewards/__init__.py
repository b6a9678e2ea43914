"""Reward functions of corpmerge's tasks: pure functions from a completion to (reward, correct)."""

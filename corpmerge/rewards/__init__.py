"""Reward functions of corpmerge's tasks: from a completion to (reward, correct).

All are pure functions except MBPP's, which runs the completion's code in the sandbox (``sandbox.py``).
This package imports nothing else of corpmerge: it is the lowest stage.
"""

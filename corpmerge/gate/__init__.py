"""The gate: paired statistics against a reference, the paper's gate/probe procedure, stage-2 proposals and rounds.

May import: scoring, methods, plan and the top-level foundations.
"""

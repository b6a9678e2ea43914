"""Report: held-out evaluation, the RandOpt ensemble vote, the split-half diagnostic, tables and plots.

May import: scoring, gate (its statistics), output, methods and the top-level foundations.
"""

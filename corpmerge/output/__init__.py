"""Output: stream θ₀ + Σ aₛ·ε(s) into sharded safetensors, assemble the model folder and card, push to the Hub.

May import: methods and the top-level foundations (never scoring or the gate: an output is a pure function of its amplitudes).
"""

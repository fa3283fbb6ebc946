"""Synthetic generation with safeguards: plan which domains are short of data, pick and chunk seeds, generate
question–answer and instruction pairs, score them like real data, and reject what copies, drifts or games the
scorers (each rejection a named ledger reason)."""

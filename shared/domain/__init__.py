"""Domain: the pipeline's rules as pure code (jobs, variants and their versions,
batches, economy batches, hand-over zips, style-anchor syntax, prices, quota
arithmetic, the model catalog).

Imports nothing of ours outside ``shared.domain``, and no cloud SDK: every rule
here is tested with plain values.
"""

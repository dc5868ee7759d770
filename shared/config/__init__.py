"""Config: the typed settings, read once from the environment, and the time
budgets that tie them to each function's timeout.

May import ``shared.domain``; nothing else of ours.
"""

"""Services: the use cases (intake, generation, thumbnails, the economy lane,
cancels, re-rolls, exports, dead letters, the job ledger and sheet sync), the
read side (``views``) and the ports (``ports``) through which they reach the
cloud, the network and Pillow.

May import ``shared.contracts``, ``shared.config`` and ``shared.domain``; never an
adapter or an SDK (adapters are handed in by ``functions/wiring.py``).
"""

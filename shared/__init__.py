"""Our code shared by the functions, one package per layer; a module imports only
layers to its right, never in a circle (tests/unit/test_layers.py holds this):

adapters -> services -> contracts, config -> domain
"""

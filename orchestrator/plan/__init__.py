"""Planning: experiments.yaml checked, grids expanded into trials with stable ids, search spaces.

Plain Python: no torch, no ray, nothing from the other layers.
"""

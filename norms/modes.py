"""The names of the normalizer kinds and error-compensation modes (torch-free).

Kept apart from the layers so that configs and command-line parsers can validate names
without importing torch.
"""

NORM_MODES = ("batch", "group", "layer", "instance", "online", "none")
ECM_MODES = ("ls", "ac", "none")

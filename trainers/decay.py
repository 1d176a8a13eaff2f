"""Decay factors as the paper writes them: read "1023/1024", write 1 - 2^-k back as a fraction.

Torch-free: the CLI parsers, experiments.yaml validation and the tables all use it.
"""

from __future__ import annotations

import math
from fractions import Fraction


class OutOfRange(ValueError):
    """A well-formed number too large for a float."""


def parse_fraction(text: str) -> float:
    """A number or an exact fraction such as "1023/1024"; parsed, never evaluated as code.

    Raises ValueError for anything else: a zero divisor, or a value beyond float's range
    ("1e1000", which would otherwise be an OverflowError).
    """
    try:
        return float(Fraction(text.strip()))
    except ZeroDivisionError:
        raise ValueError(f"{text!r} divides by zero") from None
    except OverflowError:
        raise OutOfRange(f"{text!r} is beyond the range of a float") from None


def dyadic(k: int) -> float:
    """1 - 2^-k, exact in float64 for the k used here."""
    return 1.0 - 2.0 ** -k


def dyadic_k(value: float, tolerance: float = 0.0) -> int | None:
    """k when value is 1 - 2^-k, else None.

    tolerance > 0 also accepts values within that distance of 1/(1 - value) = 2^k, e.g. a
    decay factor that went through float32 (1023/1024 then reads 1024.0000x).
    """
    if not 0.0 < value < 1.0:
        return None
    k = round(-math.log2(1.0 - value))
    if not 0 < k <= 60:
        return None
    exact = dyadic(k) == value
    return k if exact or abs(1.0 / (1.0 - value) - 2.0 ** k) < tolerance else None


def fraction_text(value: float, exact: bool = False, tolerance: float = 0.0) -> str:
    """'1023/1024' for 1 - 2^-k; otherwise '0.999' (exact=True: every digit, for YAML)."""
    k = dyadic_k(value, tolerance)
    if k is not None:
        return f"{2 ** k - 1}/{2 ** k}"
    return repr(float(value)) if exact else f"{value:g}"

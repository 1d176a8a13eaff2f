"""Decay factors written as the paper writes them, both ways."""

import pytest

from trainers.decay import dyadic, dyadic_k, fraction_text, parse_fraction


def test_parse_fraction_is_exact_and_refuses_code():
    assert parse_fraction("1023/1024") == 0.9990234375
    assert parse_fraction(" 15/16 ") == 0.9375
    assert parse_fraction("0.999") == 0.999
    for bad in ("1/0", "1-2**-10", "__import__('os')", ""):
        with pytest.raises(ValueError):
            parse_fraction(bad)


def test_dyadic_values_round_trip_to_fractions():
    assert dyadic(10) == 1023 / 1024
    assert dyadic_k(127 / 128) == 7 and dyadic_k(0.5) == 1
    assert dyadic_k(0.999) is None and dyadic_k(1.0) is None and dyadic_k(0.0) is None
    assert fraction_text(dyadic(9)) == "511/512"
    assert fraction_text(0.999) == "0.999"
    assert fraction_text(0.9954443521487726, exact=True) == "0.9954443521487726"


def test_float32_rounded_decay_is_recognised_only_with_tolerance():
    import numpy as np

    near = 1023 / 1024 + 1e-9    # 1/(1 - near) is 1024.001: dyadic only within tolerance
    assert dyadic_k(near) is None and dyadic_k(near, tolerance=1e-2) == 10
    assert fraction_text(float(np.float32(0.999)), tolerance=1e-6) == "0.999"
    assert dyadic_k(float(np.float32(1023 / 1024)), tolerance=1e-6) == 10

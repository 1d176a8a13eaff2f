"""A normalizer's options as a short label ('1023/1024 127/128 ls', 'groups=8'), as the live
view, `onorm status` and the trackers' run names show them. Plain Python."""

from __future__ import annotations

from typing import Any

from trainers.decay import dyadic_k, fraction_text

# below this many columns the live view writes decay factors as k=10/7
NARROW_COLUMNS = 100


def compact_options(norm: str, options: dict[str, Any], narrow: bool = False) -> str:
    """The normalizer's options in a few characters: '1023/1024 127/128 ls' (narrow:
    'k=10/7', the ecm only when it is not ls), 'groups=8' ('g=8'), '' for the others."""
    if norm == "online":
        a, b, ecm = options.get("afwd"), options.get("abkw"), options.get("ecm", "ls")
        if a is None or b is None:
            return ""
        if not narrow:
            return f"{fraction_text(a)} {fraction_text(b)} {ecm}"
        ka, kb = dyadic_k(a), dyadic_k(b)
        text = f"k={ka}/{kb}" if ka is not None and kb is not None else f"{a:g}/{b:g}"
        return text if ecm == "ls" else f"{text} {ecm}"
    if norm == "group" and "gn_num_groups" in options:
        return f"{'g' if narrow else 'groups'}={options['gn_num_groups']}"
    return ""

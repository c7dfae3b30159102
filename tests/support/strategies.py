"""Hypothesis strategies shared by the property tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy


def json_scalars(text_size: int | None = None) -> SearchStrategy[Any]:
    """JSON scalars every reader holds exactly: null, booleans, integers within ±2**53 (what a
    double keeps exact, so Ruby, Rust and Python agree), finite floats and strings."""
    return (
        st.none()
        | st.booleans()
        | st.integers(-(2**53), 2**53)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=text_size)
    )


def json_values(
    scalars: SearchStrategy[Any], *, size: int, leaves: int, key_size: int | None = None
) -> SearchStrategy[Any]:
    """JSON documents of ``scalars``: nested lists and string-keyed objects of at most ``size``
    items (keys at most ``key_size`` characters), ``leaves`` scalars at most."""
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=size)
            | st.dictionaries(st.text(max_size=key_size), inner, max_size=size)
        ),
        max_leaves=leaves,
    )

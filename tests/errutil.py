"""The errno name a call fails with, for tests that check error codes."""

from __future__ import annotations

import pytest

from libaios import AiosError


def code_of(fn, *a, **kw) -> str:
    """Call fn; it must raise a libaios error, whose code is returned."""
    with pytest.raises(AiosError) as e:
        fn(*a, **kw)
    return e.value.code

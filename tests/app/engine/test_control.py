"""app.engine.control helpers: the traversal's amounts."""

from __future__ import annotations

from app.engine.control import frame_amounts


def test_frame_amounts_are_symmetric_with_an_exact_zero_in_the_middle():
    a = frame_amounts(3.0, 7)
    assert a == [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]
    b = frame_amounts(2.5, 4)
    assert b[0] == -2.5 and b[-1] == 2.5 and len(b) == 4
    assert [x == -y for x, y in zip(b, reversed(b))] == [True] * 4
    odd = frame_amounts(0.7, 9)
    assert odd[4] == 0.0 and all(x < y for x, y in zip(odd, odd[1:]))

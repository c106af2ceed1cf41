"""map_concurrent property test (skipped when hypothesis is not installed)."""

from __future__ import annotations

import asyncio

import pytest

from penguiflow.patterns import map_concurrent

pytest.importorskip("hypothesis")

from hypothesis import given, settings, strategies as st


async def yields(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


@settings(max_examples=60, deadline=None)
@given(
    items=st.lists(st.integers(min_value=0, max_value=5), max_size=25),
    limit=st.integers(min_value=1, max_value=10),
    failing=st.one_of(st.none(), st.integers(min_value=0, max_value=24)),
)
def test_property_order_bound_and_failure(
    items: list[int], limit: int, failing: int | None
) -> None:
    async def scenario() -> None:
        active = peak = 0

        async def work(pair: tuple[int, int]) -> int:
            nonlocal active, peak
            index, delay = pair
            active += 1
            peak = max(peak, active)
            try:
                await yields(delay)
                if index == failing:
                    raise LookupError(index)
                return delay * 2
            finally:
                active -= 1

        pairs = list(enumerate(items))
        fails = failing is not None and failing < len(items)
        if fails:
            with pytest.raises(LookupError):
                await map_concurrent(pairs, work, max_concurrency=limit)
        else:
            assert await map_concurrent(pairs, work, max_concurrency=limit) == [
                d * 2 for d in items
            ]
        collected = await map_concurrent(pairs, work, max_concurrency=limit, return_exceptions=True)
        for (index, delay), value in zip(pairs, collected, strict=True):
            if index == failing:
                assert isinstance(value, LookupError)
            else:
                assert value == delay * 2
        assert active == 0
        assert peak <= limit
        assert len(asyncio.all_tasks()) == 1  # only this scenario

    asyncio.run(scenario())

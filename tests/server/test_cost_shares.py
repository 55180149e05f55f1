"""Fair by cost at every unit of a frame's work (server/frames/cost_shares.py), without a
server: the order itself, on the event loop. test_frame_cost.py runs it on real ppocr."""

from __future__ import annotations

import asyncio

from server.frames.cost_shares import CostShares, UnitTurns

HONEST, PAGE = 1, 2


def shares_after_one_frame_each(now: float) -> CostShares:
    """An honest stream whose frames cost 0.3 s and a page stream whose frames cost 5 s."""
    shares = CostShares()
    for key, cost_s in ((HONEST, 0.3), (PAGE, 5.0)):
        shares.settled(key, shares.started(key, now), cost_s)
    return shares


async def test_a_page_waits_between_its_units_while_an_honest_frame_runs():
    loop = asyncio.get_running_loop()
    shares = shares_after_one_frame_each(loop.time())
    turns = UnitTurns(shares)
    page = turns.turn(PAGE, shares.started(PAGE, loop.time()))
    honest = turns.turn(HONEST, shares.started(HONEST, loop.time()))
    turns.began(page)
    turns.began(honest)

    # The honest frame, far behind the page in cost, never waits for it.
    await asyncio.wait_for(honest.wait(), timeout=1.0)
    assert not honest.released.done()  # it keeps its pull's slot while it runs
    # The page's next unit waits while the honest frame runs, and frees its pull's slot.
    page_unit = asyncio.create_task(page.wait())
    await asyncio.sleep(0.2)
    assert not page_unit.done()
    assert page.released.done()
    # The honest frame ends: the page goes on.
    turns.ended(honest)
    await asyncio.wait_for(page_unit, timeout=1.0)


async def test_frames_within_one_cheap_frame_of_each_other_never_wait():
    loop = asyncio.get_running_loop()
    shares = CostShares()
    for key in (HONEST, PAGE):  # two honest streams alike
        shares.settled(key, shares.started(key, loop.time()), 0.3)
    turns = UnitTurns(shares)
    first = turns.turn(HONEST, shares.started(HONEST, loop.time()))
    second = turns.turn(PAGE, shares.started(PAGE, loop.time()))
    turns.began(first)
    turns.began(second)
    await asyncio.wait_for(asyncio.gather(first.wait(), second.wait()), timeout=1.0)


def test_time_spent_waiting_for_a_turn_is_no_overrun():
    """A frame past its estimate is billed its overrun as it runs, but not the time it waited
    for its turn: otherwise a page held back by honest frames would look ever more expensive
    and never get its share."""
    shares = shares_after_one_frame_each(0.0)
    token = shares.started(HONEST, 10.0)  # estimate 0.3 s
    before = shares.tag(HONEST, 12.0)  # 1.7 s of overrun
    shares.held(HONEST, token, 1.5)  # of which 1.5 s waiting for its turn
    assert round(before - shares.tag(HONEST, 12.0), 6) == 1.5

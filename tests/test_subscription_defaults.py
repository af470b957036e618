"""The subscription defaults table of docs/reference.md ("subscriber | policy |
mailbox"), checked against what each way of subscribing actually makes."""

import asyncio
import io

import evloop.callbacks as ecb
from evloop import Recipe, Subscriber


def _made(recipe, subscribe):
    before = set(map(id, recipe.bus.subscriptions))
    subscribe()
    (made,) = [s for s in recipe.bus.subscriptions if id(s) not in before]
    return made.policy, made.mailbox.maxsize


def test_each_way_of_subscribing_gets_the_documented_policy_and_mailbox(tmp_path):
    recipe = Recipe(lambda batch: None, [1])

    class Mine(Subscriber):
        def on_event(self, event):
            pass

    assert _made(recipe, lambda: recipe.bus.subscribe(lambda event: None)) == ("latest", 256)
    assert _made(recipe, lambda: recipe.bus.subscribe(Mine())) == ("latest", 256)
    asked = _made(recipe, lambda: recipe.bus.subscribe(lambda e: None, policy="block"))
    assert asked == ("block", 256)
    stdout = ecb.StdoutLogger(stream=io.StringIO())
    assert _made(recipe, lambda: recipe.bus.subscribe(stdout)) == ("latest", 64)
    jsonl = ecb.JsonlWriter(tmp_path / "events.jsonl")
    assert _made(recipe, lambda: recipe.bus.subscribe(jsonl))[0] == "block"


def test_a_stream_is_drop_oldest_over_1024_events():
    recipe = Recipe(lambda batch: None, [1])

    async def first_subscription():
        stream = recipe.bus.stream()
        pending = asyncio.ensure_future(stream.__anext__())
        try:
            for _ in range(100):  # attached once the iteration starts
                if recipe.bus.subscriptions:
                    break
                await asyncio.sleep(0)
            (made,) = recipe.bus.subscriptions
            return made.policy, made.mailbox.maxsize
        finally:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
            await stream.aclose()

    assert asyncio.run(first_subscription()) == ("drop_oldest", 1024)
    assert not recipe.bus.subscriptions  # closing the stream unsubscribes it

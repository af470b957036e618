import msgspec
import pytest
import torch

from evloop import events as ev

SAMPLES = [
    ev.RunStarted(epochs=3, epoch=-1, iters=-1),
    ev.RunFinished(epoch=2, iters=29, stopped=True, metrics={"loss": 0.5}),
    ev.RunFailed(epoch=0, iters=3, error="ValueError('x')", traceback="..."),
    ev.EpochStarted(epoch=0, iters=-1, epoch_batch=0),
    ev.EpochEnded(epoch=0, iters=9, epoch_batch=10, metrics={"loss": 1.0, "report": "<b>x</b>"}),
    ev.BatchStarted(epoch=0, iters=0, epoch_batch=1),
    ev.BatchEnded(epoch=0, iters=0, epoch_batch=1, metrics={"acc": 0.25}),
    ev.SubscriberDropped(subscriber="StdoutLogger", dropped=3, total=7),
    ev.SubscriberFailed(subscriber="x", error="RuntimeError()", traceback="tb"),
]


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_json_and_msgpack_round_trip(event):
    assert ev.decode_json(ev.encode_json(event)) == event
    assert ev.decode_msgpack(ev.encode_msgpack(event)) == event


def test_events_are_immutable():
    event = SAMPLES[0]
    with pytest.raises(AttributeError):
        event.iters = 5


def test_tensor_metrics_encode_as_numbers_and_lists():
    event = ev.BatchEnded(
        epoch=0, iters=1, epoch_batch=2, metrics={"loss": torch.tensor(0.5), "cm": torch.eye(2)}
    )
    decoded = ev.decode_json(ev.encode_json(event))
    assert decoded.metrics == {"loss": 0.5, "cm": [[1.0, 0.0], [0.0, 1.0]]}


def test_unencodable_value_names_its_type():
    event = ev.BatchEnded(epoch=0, iters=1, epoch_batch=2, metrics={"x": object()})
    with pytest.raises(NotImplementedError, match="object"):
        ev.encode_json(event)


def test_garbage_and_unknown_types_raise_clear_errors():
    with pytest.raises(msgspec.DecodeError, match="malformed|JSON"):
        ev.decode_json(b"{not json")
    with pytest.raises(msgspec.ValidationError, match=r"Invalid value 'nope' - at `\$.type`"):
        ev.decode_json(b'{"type": "nope"}')
    with pytest.raises(msgspec.ValidationError, match=r"Expected `int`, got `str` - at `\$.iters`"):
        ev.decode_json(b'{"type":"batch_started","epoch":0,"iters":"x","epoch_batch":1}')
    with pytest.raises(msgspec.DecodeError):
        ev.decode_msgpack(b"\xc1\xff")

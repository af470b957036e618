"""The events' wire codec: JSON (browsers) and MessagePack (Python clients).

Encoding is done on the consumer side: metric values that are detached tensors,
possibly still on the device, become plain numbers or nested lists
(:func:`to_builtin`). Decoding reads any event of :data:`~evloop.events.ANY_EVENT`
and refuses hostile input with :class:`msgspec.DecodeError` (never a deeper error).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from .decoding import SafeDecoder
from .events import ANY_EVENT, Event
from .kinds import BY_DIMENSIONS, Kind, kind_of

__all__ = [
    "encode_json",
    "decode_json",
    "encode_msgpack",
    "decode_msgpack",
    "encode_msgpack_batch",
    "decode_msgpack_batch",
    "to_builtin",
    "scalar",
]


def scalar(value: Any) -> float | int | bool | None:
    """The host value of a number or one-element tensor, else None. Syncs the device."""
    if isinstance(value, bool | int | float):
        return value
    numel = getattr(value, "numel", None)
    if numel is not None and numel() == 1:
        return value.item()
    if hasattr(value, "dtype") and getattr(value, "shape", None) == ():  # numpy scalars
        return value.item()
    return None


def to_builtin(value: Any) -> Any:
    """Host-side, JSON-friendly copy of a metric value, by its kind: numbers, nested
    lists for tensors, HTML for reports."""
    kind = kind_of(value)
    if kind is Kind.SCALAR:
        return scalar(value)
    if kind is Kind.HTML:
        return value.render()
    if kind in TENSOR_KINDS:
        return (value.detach().cpu() if hasattr(value, "detach") else value).tolist()
    if isinstance(value, dict):
        return {str(k): to_builtin(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_builtin(v) for v in value]
    return value


TENSOR_KINDS = frozenset(BY_DIMENSIONS.values())


def _enc_hook(value: Any) -> Any:
    converted = to_builtin(value)
    if converted is value:
        raise NotImplementedError(f"cannot encode a {type(value).__name__} in an event")
    return converted


_json_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)
_json_decoder = SafeDecoder(msgspec.json.Decoder(ANY_EVENT))
_msgpack_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_msgpack_decoder = SafeDecoder(msgspec.msgpack.Decoder(ANY_EVENT))
_msgpack_batch_decoder = SafeDecoder(msgspec.msgpack.Decoder(list[ANY_EVENT]))


def encode_json(event: Event) -> bytes:
    """One event as JSON (tensors as numbers or nested lists)."""
    return _json_encoder.encode(event)


def decode_json(data: bytes | str) -> Event:
    """Decode one event; raises :class:`msgspec.DecodeError` naming the problem."""
    return _json_decoder.decode(data)


def encode_msgpack(event: Event) -> bytes:
    """One event as MessagePack (tensors as numbers or nested lists)."""
    return _msgpack_encoder.encode(event)


def decode_msgpack(data: bytes) -> Event:
    """Decode one event; raises :class:`msgspec.DecodeError` naming the problem."""
    return _msgpack_decoder.decode(data)


def encode_msgpack_batch(events: Sequence[Event]) -> bytes:
    """Several events in one MessagePack array."""
    return _msgpack_encoder.encode(events)


def decode_msgpack_batch(data: bytes) -> Sequence[Event]:
    """The events of :func:`encode_msgpack_batch`; raises :class:`msgspec.DecodeError`
    naming the problem."""
    return _msgpack_batch_decoder.decode(data)

"""Decoding what comes from outside the process (a websocket message, a line of a run's
log, a summary): whatever is wrong with it is a :class:`msgspec.DecodeError` naming
the problem, nesting too deep for the decoder included (msgspec raises RecursionError
for it, which no caller expects)."""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar

import msgspec

__all__ = ["SafeDecoder", "decode_any_json"]

T = TypeVar("T", covariant=True)


class _Decoder(Protocol[T]):
    def decode(self, data: Any, /) -> T: ...


class SafeDecoder(Generic[T]):
    """``SafeDecoder(msgspec.json.Decoder(Type)).decode(data)``: the wrapped
    decoder's result, or a :class:`msgspec.DecodeError` (ValidationError is one)."""

    __slots__ = ("_decode",)

    def __init__(self, decoder: _Decoder[T]) -> None:
        self._decode = decoder.decode

    def decode(self, data: Any) -> T:
        try:
            return self._decode(data)
        except RecursionError:
            raise msgspec.DecodeError("nested too deeply to decode") from None


_any_json = SafeDecoder(msgspec.json.Decoder())


def decode_any_json(data: bytes | str) -> Any:
    """JSON of any shape; a :class:`msgspec.DecodeError` for whatever does not decode."""
    return _any_json.decode(data)

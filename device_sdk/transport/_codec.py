"""MQTT 3.1.1 / 5 packet encoding and decoding for the native transport (pure functions).

Only what a device needs: CONNECT, CONNACK, PUBLISH (QoS 0/1), PUBACK, SUBSCRIBE, SUBACK,
UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP and DISCONNECT. Everything here is free of I/O and
state, so it is unit-tested directly (including round trips with hypothesis). Decoders take
the *body* of a packet (after the fixed header) as produced by :func:`split_packets`, and
raise :class:`MalformedPacketError` on input that does not follow the specification.

MQTT 5 properties are decoded generically into ``{identifier: value}`` plus the ordered user
properties, so properties a broker adds later do not break the parser.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import TYPE_CHECKING, Final

from device_sdk._exceptions import ProtocolError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "CONNACK",
    "CONNECT",
    "DISCONNECT",
    "PINGREQ",
    "PINGREQ_PACKET",
    "PINGRESP",
    "PUBACK",
    "PUBLISH",
    "SUBACK",
    "SUBSCRIBE",
    "UNSUBACK",
    "UNSUBSCRIBE",
    "Ack",
    "Connack",
    "Disconnect",
    "MalformedPacketError",
    "Properties",
    "PropertyValue",
    "Publish",
    "decode_ack",
    "decode_connack",
    "decode_disconnect",
    "decode_properties",
    "decode_publish",
    "decode_varint",
    "encode_connect",
    "encode_disconnect",
    "encode_properties",
    "encode_puback",
    "encode_publish",
    "encode_subscribe",
    "encode_unsubscribe",
    "encode_varint",
    "split_packets",
]

# Packet types (the high nibble of the first byte).
CONNECT: Final = 1
CONNACK: Final = 2
PUBLISH: Final = 3
PUBACK: Final = 4
SUBSCRIBE: Final = 8
SUBACK: Final = 9
UNSUBSCRIBE: Final = 10
UNSUBACK: Final = 11
PINGREQ: Final = 12
PINGRESP: Final = 13
DISCONNECT: Final = 14

PINGREQ_PACKET: Final = b"\xc0\x00"
MAX_VARINT: Final = 268_435_455
MAX_PACKET_ID: Final = 65535

# MQTT 5 property identifiers used by the transport.
PROP_SESSION_EXPIRY: Final = 0x11
PROP_ASSIGNED_CLIENT_ID: Final = 0x12
PROP_SERVER_KEEP_ALIVE: Final = 0x13
PROP_WILL_DELAY: Final = 0x18
PROP_REASON_STRING: Final = 0x1F
PROP_RECEIVE_MAXIMUM: Final = 0x21
PROP_USER: Final = 0x26
PROP_MAXIMUM_PACKET_SIZE: Final = 0x27

_BYTE, _TWO, _FOUR, _VARINT, _STR, _BIN, _PAIR = range(7)
_PROPERTY_TYPES: Final[dict[int, int]] = {
    0x01: _BYTE,  # payload format indicator
    0x02: _FOUR,  # message expiry interval
    0x03: _STR,  # content type
    0x08: _STR,  # response topic
    0x09: _BIN,  # correlation data
    0x0B: _VARINT,  # subscription identifier
    0x11: _FOUR,  # session expiry interval
    0x12: _STR,  # assigned client identifier
    0x13: _TWO,  # server keep alive
    0x15: _STR,  # authentication method
    0x16: _BIN,  # authentication data
    0x17: _BYTE,  # request problem information
    0x18: _FOUR,  # will delay interval
    0x19: _BYTE,  # request response information
    0x1A: _STR,  # response information
    0x1C: _STR,  # server reference
    0x1F: _STR,  # reason string
    0x21: _TWO,  # receive maximum
    0x22: _TWO,  # topic alias maximum
    0x23: _TWO,  # topic alias
    0x24: _BYTE,  # maximum QoS
    0x25: _BYTE,  # retain available
    0x26: _PAIR,  # user property
    0x27: _FOUR,  # maximum packet size
    0x28: _BYTE,  # wildcard subscription available
    0x29: _BYTE,  # subscription identifiers available
    0x2A: _BYTE,  # shared subscription available
}

PropertyValue = int | str | bytes
"""The value of one MQTT 5 property (user properties are kept separately, in order)."""

_H = struct.Struct("!H")
_I = struct.Struct("!I")


class MalformedPacketError(ProtocolError):
    """A packet that does not follow the MQTT specification (the connection must close)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Properties:
    """Decoded MQTT 5 properties.

    Attributes:
        values: Every property except user properties, by identifier (the last one wins
            if a property repeats).
        user: User properties, in order.
    """

    values: dict[int, PropertyValue] = dataclasses.field(default_factory=dict)
    user: tuple[tuple[str, str], ...] = ()

    def get_int(self, identifier: int) -> int | None:
        """The integer property ``identifier``, or ``None``."""
        value = self.values.get(identifier)
        return value if isinstance(value, int) else None

    def get_str(self, identifier: int) -> str | None:
        """The string property ``identifier``, or ``None``."""
        value = self.values.get(identifier)
        return value if isinstance(value, str) else None


_NO_PROPERTIES: Final = Properties()


@dataclasses.dataclass(frozen=True, slots=True)
class Connack:
    """A decoded CONNACK.

    Attributes:
        session_present: The broker resumed a session.
        reason_code: MQTT 5 reason code, or the MQTT 3.1.1 return code.
        properties: MQTT 5 properties (empty on 3.1.1).
    """

    session_present: bool
    reason_code: int
    properties: Properties = _NO_PROPERTIES


@dataclasses.dataclass(frozen=True, slots=True)
class Publish:
    """A decoded inbound PUBLISH.

    Attributes:
        topic: Topic name.
        payload: Payload bytes.
        qos: 0, 1 or 2.
        retain: The RETAIN flag.
        dup: The DUP flag.
        packet_id: Packet identifier (``0`` for QoS 0).
        properties: MQTT 5 properties (empty on 3.1.1).
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int
    properties: Properties = _NO_PROPERTIES


@dataclasses.dataclass(frozen=True, slots=True)
class Ack:
    """A decoded PUBACK, SUBACK or UNSUBACK.

    Attributes:
        packet_id: Packet identifier.
        reason_codes: One code for PUBACK (``0`` if omitted), one per filter for SUBACK and
            MQTT 5 UNSUBACK (MQTT 3.1.1 UNSUBACK has none).
        properties: MQTT 5 properties (empty on 3.1.1).
    """

    packet_id: int
    reason_codes: tuple[int, ...]
    properties: Properties = _NO_PROPERTIES


@dataclasses.dataclass(frozen=True, slots=True)
class Disconnect:
    """A decoded server DISCONNECT (MQTT 5; 3.1.1 servers never send one).

    Attributes:
        reason_code: Reason code (``0`` if omitted).
        properties: Properties (reason string, server reference, ...).
    """

    reason_code: int
    properties: Properties = _NO_PROPERTIES


# -- primitives ---------------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """Encode a Variable Byte Integer (0..268,435,455)."""
    if value < 0x80:  # noqa: PLR2004 - the common case: one byte
        if value < 0:
            raise ValueError(f"varint out of range: {value}")
        return bytes((value,))
    if value > MAX_VARINT:
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int]:
    """Decode a Variable Byte Integer at ``pos``; return ``(value, position after it)``.

    Raises:
        MalformedPacketError: More than four bytes, or the buffer ends inside the integer.
    """
    value = 0
    shift = 0
    for i in range(4):
        if pos + i >= len(buf):
            raise MalformedPacketError("truncated variable byte integer")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise MalformedPacketError("variable byte integer longer than four bytes")


_USER_HEAD = struct.Struct(">BH")


def _string(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > MAX_PACKET_ID:
        raise ValueError("MQTT strings are limited to 65535 bytes")
    return _H.pack(len(raw)) + raw


def _binary(value: bytes) -> bytes:
    if len(value) > MAX_PACKET_ID:
        raise ValueError("MQTT binary data is limited to 65535 bytes")
    return _H.pack(len(value)) + value


def _read_binary(buf: bytes, pos: int, end: int) -> tuple[bytes, int]:
    if pos + 2 > end:
        raise MalformedPacketError("truncated length prefix")
    (size,) = _H.unpack_from(buf, pos)
    pos += 2
    if pos + size > end:
        raise MalformedPacketError("truncated string or binary data")
    return buf[pos : pos + size], pos + size


def _read_string(buf: bytes, pos: int, end: int) -> tuple[str, int]:
    raw, pos = _read_binary(buf, pos, end)
    try:
        return raw.decode(), pos
    except UnicodeDecodeError as exc:
        raise MalformedPacketError(f"invalid UTF-8 string: {exc}") from exc


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


# -- properties ---------------------------------------------------------------------------


def encode_properties(
    values: Sequence[tuple[int, PropertyValue]] = (),
    user: Sequence[tuple[str, str]] = (),
) -> bytes:
    """Encode an MQTT 5 property block (length prefix included).

    Args:
        values: ``(identifier, value)`` pairs of non-user properties, in wire order.
        user: User properties, in order (written after ``values``).

    Raises:
        ValueError: Unknown identifier or a value of the wrong type.
    """
    if not values:
        if not user:
            return b"\x00"
        # The hot path (a PUBLISH with its msg-id user property): one join, no bytearray.
        parts = []
        for name, text in user:
            k, v = name.encode(), text.encode()
            if len(k) > MAX_PACKET_ID or len(v) > MAX_PACKET_ID:
                raise ValueError("MQTT strings are limited to 65535 bytes")
            parts.append(_USER_HEAD.pack(PROP_USER, len(k)) + k + _H.pack(len(v)) + v)
        body = b"".join(parts)
        size = len(body)
        return (bytes((size,)) if size < 0x80 else encode_varint(size)) + body  # noqa: PLR2004
    out = bytearray()
    for ident, value in values:
        kind = _PROPERTY_TYPES.get(ident)
        out.append(ident)
        if kind == _BYTE and isinstance(value, int):
            out.append(value)
        elif kind == _TWO and isinstance(value, int):
            out += _H.pack(value)
        elif kind == _FOUR and isinstance(value, int):
            out += _I.pack(value)
        elif kind == _VARINT and isinstance(value, int):
            out += encode_varint(value)
        elif kind == _STR and isinstance(value, str):
            out += _string(value)
        elif kind == _BIN and isinstance(value, bytes):
            out += _binary(value)
        else:
            raise ValueError(f"cannot encode property {ident:#04x} = {value!r}")
    for key, value in user:
        out.append(PROP_USER)
        out += _string(key)
        out += _string(value)
    return encode_varint(len(out)) + bytes(out)


def decode_properties(buf: bytes, pos: int, end: int | None = None) -> tuple[Properties, int]:
    """Decode the property block at ``pos``; return it and the position after it.

    Raises:
        MalformedPacketError: Unknown identifier or a truncated block.
    """
    if end is None:
        end = len(buf)
    size, pos = decode_varint(buf, pos)
    stop = pos + size
    if stop > end:
        raise MalformedPacketError("property length exceeds the packet")
    if size == 0:
        return _NO_PROPERTIES, pos
    values: dict[int, PropertyValue] = {}
    user: list[tuple[str, str]] = []
    while pos < stop:
        ident = buf[pos]
        pos += 1
        kind = _PROPERTY_TYPES.get(ident)
        if kind is None:
            raise MalformedPacketError(f"unknown property identifier {ident:#04x}")
        if kind == _BYTE:
            if pos + 1 > stop:
                raise MalformedPacketError("truncated property")
            values[ident] = buf[pos]
            pos += 1
        elif kind == _TWO:
            if pos + 2 > stop:
                raise MalformedPacketError("truncated property")
            values[ident] = _H.unpack_from(buf, pos)[0]
            pos += 2
        elif kind == _FOUR:
            if pos + 4 > stop:
                raise MalformedPacketError("truncated property")
            values[ident] = _I.unpack_from(buf, pos)[0]
            pos += 4
        elif kind == _VARINT:
            values[ident], pos = decode_varint(buf[:stop], pos)
        elif kind == _STR:
            values[ident], pos = _read_string(buf, pos, stop)
        elif kind == _BIN:
            values[ident], pos = _read_binary(buf, pos, stop)
        else:
            key, pos = _read_string(buf, pos, stop)
            value, pos = _read_string(buf, pos, stop)
            user.append((key, value))
    return Properties(values, tuple(user)), pos


# -- framing ------------------------------------------------------------------------------


def split_packets(
    buf: bytes, max_size: int = MAX_VARINT
) -> tuple[list[tuple[int, int, bytes]], int]:
    """Cut the complete packets off the front of ``buf``.

    Args:
        buf: Received bytes.
        max_size: Largest acceptable packet (fixed header included).

    Returns:
        ``([(packet type, flags, body), ...], number of bytes consumed)``; the rest of
        ``buf`` is an incomplete packet to keep for the next read.

    Raises:
        MalformedPacketError: Bad remaining length, or a packet larger than ``max_size``.
    """
    packets: list[tuple[int, int, bytes]] = []
    pos = 0
    n = len(buf)
    while n - pos >= 2:  # noqa: PLR2004 - the smallest packet has two bytes
        first = buf[pos]
        byte = buf[pos + 1]
        if byte < 0x80:  # noqa: PLR2004 - one-byte remaining length: the common case
            size, start = byte, pos + 2
        else:
            try:
                size, start = decode_varint(buf, pos + 1)
            except MalformedPacketError:
                if n - pos - 1 < 4:  # noqa: PLR2004 - the length itself is still incomplete
                    break
                raise
        if start - pos + size > max_size:
            raise MalformedPacketError(f"packet of {start - pos + size} bytes exceeds {max_size}")
        stop = start + size
        if stop > n:
            break
        packets.append((first >> 4, first & 0x0F, buf[start:stop]))
        pos = stop
    return packets, pos


# -- client -> server ---------------------------------------------------------------------


def encode_connect(
    client_id: str,
    *,
    keepalive_s: int,
    clean_start: bool = True,
    version: int = 5,
    session_expiry_s: int = 0,
    receive_maximum: int | None = None,
    will_topic: str | None = None,
    will_payload: bytes = b"",
    will_qos: int = 0,
    will_retain: bool = False,
    will_delay_s: int | None = None,
) -> bytes:
    """Encode CONNECT (``version`` 5, or 4 / 3 for MQTT 3.1.1).

    Raises:
        ValueError: A string or the keep-alive is out of range.
    """
    v5 = version == 5  # noqa: PLR2004
    if not 0 <= keepalive_s <= MAX_PACKET_ID:
        raise ValueError("keep-alive must be within 0..65535")
    flags = 0x02 if clean_start else 0
    if will_topic is not None:
        flags |= 0x04 | (will_qos << 3) | (0x20 if will_retain else 0)
    body = bytearray(b"\x00\x04MQTT")
    body.append(5 if v5 else 4)
    body.append(flags)
    body += _H.pack(keepalive_s)
    if v5:
        props: list[tuple[int, PropertyValue]] = []
        if session_expiry_s:
            props.append((PROP_SESSION_EXPIRY, session_expiry_s))
        if receive_maximum is not None:
            props.append((PROP_RECEIVE_MAXIMUM, receive_maximum))
        body += encode_properties(props)
    body += _string(client_id)
    if will_topic is not None:
        if v5:
            will_props: list[tuple[int, PropertyValue]] = []
            if will_delay_s is not None:
                will_props.append((PROP_WILL_DELAY, will_delay_s))
            body += encode_properties(will_props)
        body += _string(will_topic)
        body += _binary(will_payload)
    return _packet(CONNECT << 4, bytes(body))


def encode_publish(
    topic: str,
    payload: bytes,
    qos: int,
    packet_id: int = 0,
    *,
    retain: bool = False,
    dup: bool = False,
    version: int = 5,
    user_properties: Sequence[tuple[str, str]] = (),
) -> bytes:
    """Encode PUBLISH (the hot path: one allocation for the fixed part and one join).

    User properties are only written on MQTT 5; ``packet_id`` is required for QoS > 0.
    """
    raw_topic = topic.encode()
    head = _H.pack(len(raw_topic)) + raw_topic
    if qos:
        if not 0 < packet_id <= MAX_PACKET_ID:
            raise ValueError(f"packet id out of range: {packet_id}")
        head += _H.pack(packet_id)
    if version == 5:  # noqa: PLR2004
        head += encode_properties((), user_properties) if user_properties else b"\x00"
    first = (PUBLISH << 4) | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    size = len(head) + len(payload)
    if size < 0x80:  # noqa: PLR2004
        return b"".join((bytes((first, size)), head, payload))
    return b"".join((bytes((first,)), encode_varint(size), head, payload))


def encode_puback(packet_id: int, reason_code: int = 0, *, version: int = 5) -> bytes:
    """Encode PUBACK (the reason code is omitted when it is 0 or on MQTT 3.1.1)."""
    if reason_code and version == 5:  # noqa: PLR2004
        return b"\x40\x03" + _H.pack(packet_id) + bytes((reason_code,))
    return b"\x40\x02" + _H.pack(packet_id)


def encode_subscribe(
    packet_id: int, filters: Sequence[tuple[str, int]], *, version: int = 5
) -> bytes:
    """Encode SUBSCRIBE; each filter carries its maximum QoS (MQTT 5 options otherwise 0)."""
    if not filters:
        raise ValueError("SUBSCRIBE needs at least one filter")
    body = bytearray(_H.pack(packet_id))
    if version == 5:  # noqa: PLR2004
        body.append(0)
    for topic_filter, qos in filters:
        body += _string(topic_filter)
        body.append(qos)
    return _packet((SUBSCRIBE << 4) | 0x02, bytes(body))


def encode_unsubscribe(packet_id: int, filters: Sequence[str], *, version: int = 5) -> bytes:
    """Encode UNSUBSCRIBE."""
    if not filters:
        raise ValueError("UNSUBSCRIBE needs at least one filter")
    body = bytearray(_H.pack(packet_id))
    if version == 5:  # noqa: PLR2004
        body.append(0)
    for topic_filter in filters:
        body += _string(topic_filter)
    return _packet((UNSUBSCRIBE << 4) | 0x02, bytes(body))


def encode_disconnect(reason_code: int = 0, *, version: int = 5) -> bytes:
    """Encode DISCONNECT (MQTT 3.1.1 has no reason code)."""
    if reason_code and version == 5:  # noqa: PLR2004
        return bytes((DISCONNECT << 4, 2, reason_code, 0))
    return bytes((DISCONNECT << 4, 0))


# -- server -> client ---------------------------------------------------------------------


def decode_connack(body: bytes, *, version: int = 5) -> Connack:
    """Decode a CONNACK body.

    Raises:
        MalformedPacketError: Truncated or invalid.
    """
    if len(body) < 2:  # noqa: PLR2004
        raise MalformedPacketError("CONNACK shorter than two bytes")
    props = _NO_PROPERTIES
    if version == 5 and len(body) > 2:  # noqa: PLR2004
        props, _ = decode_properties(body, 2)
    return Connack(bool(body[0] & 0x01), body[1], props)


def decode_publish(flags: int, body: bytes, *, version: int = 5) -> Publish:
    """Decode a PUBLISH body given the fixed header's flags.

    Raises:
        MalformedPacketError: Truncated, QoS 3, or invalid UTF-8 in the topic.
    """
    qos = (flags >> 1) & 0x03
    if qos == 3:  # noqa: PLR2004
        raise MalformedPacketError("PUBLISH with QoS 3")
    end = len(body)
    topic, pos = _read_string(body, 0, end)
    packet_id = 0
    if qos:
        if pos + 2 > end:
            raise MalformedPacketError("PUBLISH without packet id")
        (packet_id,) = _H.unpack_from(body, pos)
        pos += 2
    props = _NO_PROPERTIES
    if version == 5:  # noqa: PLR2004
        if pos < end and body[pos] == 0:
            pos += 1
        else:
            props, pos = decode_properties(body, pos, end)
    return Publish(topic, body[pos:], qos, bool(flags & 0x01), bool(flags & 0x08), packet_id, props)


def decode_ack(packet_type: int, body: bytes, *, version: int = 5) -> Ack:
    """Decode a PUBACK, SUBACK or UNSUBACK body.

    Raises:
        MalformedPacketError: Truncated or invalid.
    """
    end = len(body)
    if end < 2:  # noqa: PLR2004
        raise MalformedPacketError("acknowledgement without packet id")
    (packet_id,) = _H.unpack_from(body, 0)
    v5 = version == 5  # noqa: PLR2004
    if packet_type == PUBACK:
        if not v5 or end == 2:  # noqa: PLR2004
            return Ack(packet_id, (0,))
        props = _NO_PROPERTIES
        if end > 3:  # noqa: PLR2004
            props, _ = decode_properties(body, 3, end)
        return Ack(packet_id, (body[2],), props)
    pos = 2
    props = _NO_PROPERTIES
    if v5:
        props, pos = decode_properties(body, pos, end)
    return Ack(packet_id, tuple(body[pos:]), props)


def decode_disconnect(body: bytes) -> Disconnect:
    """Decode a (server) DISCONNECT body.

    Raises:
        MalformedPacketError: Invalid properties.
    """
    if not body:
        return Disconnect(0)
    props = _NO_PROPERTIES
    if len(body) > 1:
        props, _ = decode_properties(body, 1)
    return Disconnect(body[0], props)

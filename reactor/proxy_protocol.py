"""A sans-IO parser for the PROXY protocol header, versions 1 (text) and 2 (binary).

A proxy in front of a server (HAProxy, stunnel, an AWS NLB...) prepends this header
to each connection to say who the client really is. The admission stage of a
connection feeds the first bytes it reads to a :class:`ProxyParser`; the parser
answers "need more", a :class:`ProxyHeader` (plus :attr:`ProxyParser.remainder`,
the application bytes that came after it), or raises :class:`ProxyHeaderError`,
after which the connection must be dropped. It does no I/O, keeps no clock and
never blocks: the caller owns the socket and the deadline.

The reference is HAProxy's ``doc/proxy-protocol.txt`` ("the spec" below).

Theory of operation
-------------------

1. **Never guess.** A listener is configured to expect the header; the parser
   never decides that one is absent. Bytes that cannot start a header are an
   error, not "plain traffic". (Spec, sections 2 and 5: guessing lets any client
   spoof its address.)
2. **Only trusted peers may send it.** Accepting the header from anyone lets anyone
   choose the address the server logs and filters on. Checking that the TCP peer
   is a known proxy is the caller's job, done before feeding a single byte.
3. **The first byte decides the version.** ``P`` can only start ``b"PROXY "``
   (v1), ``\\r`` only the 12-byte v2 signature. In mode ``"any"`` anything else is
   an error at once; in mode ``"v1"`` / ``"v2"`` the other version is too.
4. **Fail at the first bad byte.** Every byte is checked as soon as it arrives
   against what could still make a valid header: a v1 field is checked as a
   prefix while it grows and in full when its space or CRLF arrives; the v2
   version, command, family and length are checked when their byte arrives, and
   each TLV when its three header bytes arrive. A truncated valid header is never
   an error, only "need more": the deadline is the caller's.
5. **Bounded memory, no rescans.** The parser buffers only header bytes: at most
   107 for v1 (a line without CRLF in its first 107 bytes is an error, and no
   more is read), at most 16 + 65535 for v2 (the length field). Each byte is
   examined when it arrives, and the state says where to resume; only the v1
   field being built (at most 45 bytes) is checked again by the next feed, and a
   CRC32c, when present, is one more pass over the complete header.
6. **The v2 length is law.** The header is exactly 16 + length bytes, whatever the
   command or family, so the stream stays aligned: after the address block (whose
   size the family fixes) the rest must be whole TLVs, and a CRC32c TLV, if any,
   must match the header.
7. **What is returned is what getpeername() would say.** Addresses come back as
   ``(host, port)`` with the host in ``inet_ntop`` form, or as a Unix path. LOCAL
   headers, v1 ``UNKNOWN`` and unspecified families or transports carry no
   address (``source is None``): the caller keeps the real endpoints.
8. **Bytes after the header belong to the application.** They come back in
   :attr:`ProxyParser.remainder`. A caller that never reads more than
   :attr:`ProxyParser.needed` bytes at a time never reads past the header at all.

Interpretations of the spec, where it leaves room:

* v1 addresses: IPv4 as exactly four decimal numbers 0-255 without leading zeros;
  IPv6 as :mod:`ipaddress` accepts it (which, like ``inet_pton``, allows 1-4 digit
  groups and an embedded dotted IPv4 tail), except a ``%scope`` suffix. The family
  must match the protocol (``TCP4`` / ``TCP6``). After ``UNKNOWN`` any byte but CR
  and LF is ignored up to the CRLF.
* v2 commands other than LOCAL and PROXY, families above AF_UNIX and transports
  above DGRAM are errors, even for LOCAL (the nibble rules are unconditional).
* v2 LOCAL: family, transport and addresses are ignored (reported as ``None``). With
  the AF_UNSPEC family byte that senders use for LOCAL, the whole length is parsed
  as TLVs (as HAProxy does); a LOCAL header naming a family has an address block of
  unknown presence, so its length is skipped unparsed (no TLVs, no checksum check).
* v2 PROXY: the address block's size comes from the family (12, 36 or 216 bytes,
  ports included for AF_INET/AF_INET6 whatever the transport) and must fit in the
  length. With an UNSPEC transport the spec's fallback applies: no address is
  reported (``family`` still says what was declared, ``transport`` is ``None``).
* Unix paths must be NUL-terminated within their 108 bytes; the text before the
  NUL is the path (an unnamed or abstract socket gives ``""``), decoded as the
  socket module decodes paths (UTF-8, surrogateescape).
* TLVs: a CRC32c TLV must be 4 bytes and appear at most once; a UNIQUE_ID at most
  128 bytes; an SSL TLV must hold its 5 fixed bytes then whole sub-TLVs. Other
  values, reserved types included, are returned as they are, in order (NOOP and
  CRC32c too).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

__all__ = [
    "ProxyHeaderError", "ProxyHeader", "ProxyParser", "crc32c",
    "V1_MAX_LENGTH", "V2_SIGNATURE",
    "PP2_TYPE_ALPN", "PP2_TYPE_AUTHORITY", "PP2_TYPE_CRC32C", "PP2_TYPE_NOOP",
    "PP2_TYPE_UNIQUE_ID", "PP2_TYPE_SSL", "PP2_TYPE_NETNS",
    "PP2_SUBTYPE_SSL_VERSION", "PP2_SUBTYPE_SSL_CN", "PP2_SUBTYPE_SSL_CIPHER",
    "PP2_SUBTYPE_SSL_SIG_ALG", "PP2_SUBTYPE_SSL_KEY_ALG",
]

#: The longest v1 line, CRLF included ("PROXY UNKNOWN" with two full IPv6 addresses).
V1_MAX_LENGTH = 107
#: The first 12 bytes of every v2 header.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

# TLV types registered by the spec (section 2.2).
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_TYPE_NETNS = 0x30

_V1_MAGIC = b"PROXY "
_V1_MIN_LENGTH = len(b"PROXY UNKNOWN\r\n")
_V1_PROTOCOLS = (b"TCP4", b"TCP6", b"UNKNOWN")
_V1_DELIMITER = re.compile(rb"[ \r\n]")
_V1_LINE_END = re.compile(rb"[\r\n]")
_V1_LAST_FIELD = 4  # protocol, source, destination, source port, destination port
_IPV4_CHARS = frozenset(b"0123456789.")
_IPV6_CHARS = frozenset(b"0123456789abcdefABCDEF:.")
_IPV4_MAX_TEXT = len("255.255.255.255")
_IPV6_MAX_TEXT = len("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255")
# Suffixes that turn any viable prefix of an address into a valid address (see
# _address_prefix_viable): a prefix none of them completes cannot be completed.
_IPV4_COMPLETIONS = ("", "0", ".0", "0.0", ".0.0", "0.0.0", ".0.0.0")
_IPV6_COMPLETIONS = ("", "0", ":", "::", ":0", ".0", "0.0", ".0.0", "0.0.0", ".0.0.0")

_V2_FIXED = 16
_V2_VERSION = 0x2
_CMD_LOCAL = 0x0
_CMD_PROXY = 0x1
_UNIX_PATH = 108
_FAMILIES = {0x0: None, 0x1: socket.AF_INET, 0x2: socket.AF_INET6, 0x3: socket.AF_UNIX}
_TRANSPORTS = {0x0: None, 0x1: socket.SOCK_STREAM, 0x2: socket.SOCK_DGRAM}
_ADDRESS_BLOCK = {0x0: 0, 0x1: 12, 0x2: 36, 0x3: 2 * _UNIX_PATH}
_TLV_HEADER = 3
_UNIQUE_ID_MAX = 128
_SSL_FIXED = 5  # client (1 byte) + verify (4 bytes)

_ANY, _V1, _V2 = "any", "v1", "v2"


class ProxyHeaderError(ValueError):
    """The bytes are not a valid PROXY protocol header (the connection must be dropped)."""


@dataclass(frozen=True)
class ProxyHeader:
    """One parsed PROXY protocol header.

    Attributes:
        version: 1 (text) or 2 (binary).
        command: ``"PROXY"`` (relayed connection; v1 is always this) or ``"LOCAL"``
            (the proxy's own connection, e.g. a health check: use the real endpoints).
        family: ``socket.AF_INET``, ``AF_INET6`` or ``AF_UNIX``; ``None`` for v1
            ``UNKNOWN``, v2 AF_UNSPEC and LOCAL.
        transport: ``socket.SOCK_STREAM`` or ``SOCK_DGRAM``; ``None`` for v1
            ``UNKNOWN``, a v2 UNSPEC transport and LOCAL.
        source: the client's address, ``(host, port)`` for IPv4/IPv6 (host in
            ``inet_ntop`` form, as ``getpeername()`` gives it) or a path for AF_UNIX;
            ``None`` when the header carries none.
        destination: the address the client connected to, same forms as ``source``.
        tlvs: v2 Type-Length-Value records, ``(type, value)`` in wire order; empty
            for v1.
    """

    version: int
    command: str
    family: int | None
    transport: int | None
    source: tuple[str, int] | str | None
    destination: tuple[str, int] | str | None
    tlvs: tuple[tuple[int, bytes], ...] = ()

    def tlv(self, type: int) -> bytes | None:
        """The value of the first TLV of this type, or ``None`` if there is none."""
        for kind, value in self.tlvs:
            if kind == type:
                return value
        return None

    def tlvs_of(self, type: int) -> tuple[bytes, ...]:
        """The values of every TLV of this type, in wire order."""
        return tuple(value for kind, value in self.tlvs if kind == type)


# ---------------------------------------------------------------- CRC32c (RFC 4960, appendix B)

def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """The CRC32c (Castagnoli) of ``data``, continuing from ``crc``.

    ``zlib.crc32`` uses another polynomial; this one is the checksum the PROXY
    protocol's PP2_TYPE_CRC32C TLV carries (big-endian on the wire).
    """
    table = _CRC32C_TABLE
    crc ^= 0xFFFFFFFF
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# ---------------------------------------------------------------- v1 fields

def _address_prefix_viable(family: int, text: bytes) -> bool:
    """Whether ``text`` can still grow into a valid address of ``family``.

    The character set and length are checked first; then the prefix is viable if
    one of a few fixed suffixes completes it into an address :mod:`ipaddress`
    accepts (a missing group, octet or ``::``): any viable prefix is completed by
    one of them, so the address grammar lives in one place, :mod:`ipaddress`.
    """
    if not _address_chars(family, text):
        return False
    prefix = text.decode("ascii")
    completions = _IPV4_COMPLETIONS if family == socket.AF_INET else _IPV6_COMPLETIONS
    return any(_valid_address(family, prefix + suffix) for suffix in completions)


def _address_chars(family: int, text: bytes) -> bool:
    """Whether ``text`` is short enough and made of the characters an address may hold."""
    if family == socket.AF_INET:
        return len(text) <= _IPV4_MAX_TEXT and _IPV4_CHARS.issuperset(text)
    return len(text) <= _IPV6_MAX_TEXT and _IPV6_CHARS.issuperset(text)


def _valid_address(family: int, text: str) -> bool:
    try:
        if family == socket.AF_INET:
            ipaddress.IPv4Address(text)
        else:
            ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _parse_v1_address(family: int, field: bytes) -> str:
    text = field.decode("ascii") if _address_chars(family, field) else ""
    if not _valid_address(family, text):
        raise ProxyHeaderError(f"v1: invalid address {field[:_IPV6_MAX_TEXT]!r}")
    if family == socket.AF_INET:
        return text  # four decimal numbers without leading zeros: already canonical
    return socket.inet_ntop(socket.AF_INET6, ipaddress.IPv6Address(text).packed)


def _port_prefix_viable(field: bytes) -> bool:
    return (field.isdigit() and len(field) <= 5 and not (len(field) > 1 and field[0] == 0x30)
            and int(field) <= 0xFFFF)


def _parse_v1_port(field: bytes) -> int:
    if not _port_prefix_viable(field):  # bytes.isdigit() is ASCII-only
        raise ProxyHeaderError(f"v1: invalid port {field[:8]!r}")
    return int(field)


# ---------------------------------------------------------------- the parser

class ProxyParser:
    """Incremental parser: feed bytes as they arrive; never guess whether a header is present.

    Args:
        mode: ``"v1"`` or ``"v2"`` to accept only that version, ``"any"`` (the
            default) to accept either, told apart by the first byte.

    Raises:
        ValueError: for an unknown mode.

    Thread-safety: none; one parser belongs to one connection's admission stage.
    """

    __slots__ = (
        "_mode", "_version", "_buf", "_done", "_failed", "_remainder",
        # v1: scan position, start of the field being built, fields parsed so far
        "_pos", "_field_start", "_fields", "_cr", "_ignore_rest",
        # v2: total header length (0 until known), next TLV offset (0: no TLVs to
        # parse), TLVs found, CRC32c value offset (-1: none), unix source checked
        "_total", "_tlv_pos", "_tlvs", "_crc_at", "_src_checked",
    )

    def __init__(self, mode: str = _ANY) -> None:
        if mode not in (_ANY, _V1, _V2):
            raise ValueError(f"mode must be 'v1', 'v2' or 'any', not {mode!r}")
        self._mode = mode
        self._version = 0
        self._buf = bytearray()
        self._done = False
        self._failed = False
        self._remainder = b""
        self._pos = len(_V1_MAGIC)
        self._field_start = len(_V1_MAGIC)
        self._fields: list[object] = []
        self._cr = False
        self._ignore_rest = False
        self._total = 0
        self._tlv_pos = 0
        self._tlvs: list[tuple[int, int, int]] = []  # (type, value offset, value length)
        self._crc_at = -1
        self._src_checked = False

    @property
    def mode(self) -> str:
        """``"v1"``, ``"v2"`` or ``"any"``, as given."""
        return self._mode

    @property
    def remainder(self) -> bytes:
        """The bytes received after the header (application data); ``b""`` before completion."""
        return self._remainder

    @property
    def needed(self) -> int:
        """A lower bound on the bytes still needed; 0 once finished (or failed).

        Reading at most this many bytes at a time never reads past the header.
        """
        if self._done or self._failed:
            return 0
        have = len(self._buf)
        if self._version == 2 or (self._version == 0 and self._mode == _V2):
            return (self._total or _V2_FIXED) - have
        if self._cr:
            return 1
        return max(1, _V1_MIN_LENGTH - have)

    def feed(self, data: bytes | bytearray | memoryview) -> ProxyHeader | None:
        """Add received bytes; return the header once it is complete.

        Returns:
            The :class:`ProxyHeader`, after which :attr:`remainder` holds the bytes
            that followed it; ``None`` while more bytes are needed (``b""`` changes
            nothing).

        Raises:
            ProxyHeaderError: the bytes so far cannot be (the start of) a valid
                header; drop the connection.
            RuntimeError: the parser already returned a header or raised.
        """
        if self._done or self._failed:
            raise RuntimeError("this ProxyParser is finished: it already returned a header or failed")
        data = bytes(data)
        try:
            if not self._version:
                if not data:
                    return None
                self._version = self._choose_version(data[0])
            header = self._feed_v1(data) if self._version == 1 else self._feed_v2(data)
        except ProxyHeaderError:
            self._failed = True
            self._buf = bytearray()
            raise
        if header is not None:
            self._done = True
            self._buf = bytearray()
            self._fields = []
            self._tlvs = []
        return header

    def _choose_version(self, first: int) -> int:
        if first == _V1_MAGIC[0] and self._mode != _V2:
            return 1
        if first == V2_SIGNATURE[0] and self._mode != _V1:
            return 2
        expected = {_ANY: "a PROXY protocol header", _V1: "a v1 PROXY header",
                    _V2: "a v2 PROXY header"}[self._mode]
        raise ProxyHeaderError(f"not {expected}: first byte {bytes([first])!r}")

    # ------------------------------------------------------------ v1

    def _feed_v1(self, data: bytes) -> ProxyHeader | None:
        buf = self._buf
        start = len(buf)
        room = V1_MAX_LENGTH - start
        buf += data[:room]
        if start < len(_V1_MAGIC):
            end = min(len(buf), len(_V1_MAGIC))
            if buf[start:end] != _V1_MAGIC[start:end]:
                raise ProxyHeaderError(f"v1: the line must start with {_V1_MAGIC!r}")
        end_of_line = self._scan_v1()
        if end_of_line:
            self._remainder = bytes(buf[end_of_line:]) + data[room:]
            return self._v1_header()
        if len(buf) >= V1_MAX_LENGTH:
            raise ProxyHeaderError(f"v1: no CRLF within the first {V1_MAX_LENGTH} bytes")
        if not self._ignore_rest and not self._cr:
            self._check_partial_field(bytes(buf[self._field_start:]))
        return None

    def _scan_v1(self) -> int:
        """Examine the bytes not seen yet; the header's length once its LF is in, else 0."""
        buf = self._buf
        while self._pos < len(buf):
            if self._cr:
                if buf[self._pos] != 0x0A:
                    raise ProxyHeaderError("v1: CR not followed by LF")
                return self._pos + 1
            pattern = _V1_LINE_END if self._ignore_rest else _V1_DELIMITER
            match = pattern.search(buf, self._pos)
            if match is None:
                self._pos = len(buf)
                break
            at = match.start()
            self._pos = at + 1
            delimiter = buf[at]
            if delimiter == 0x0A:
                raise ProxyHeaderError("v1: LF without CR")
            if delimiter == 0x0D:
                self._cr = True
                if self._ignore_rest:
                    continue
            self._end_field(bytes(buf[self._field_start:at]), delimiter == 0x0D)
            self._field_start = at + 1
        return 0

    def _end_field(self, field: bytes, at_line_end: bool) -> None:
        index = len(self._fields)
        if not field:
            raise ProxyHeaderError("v1: empty field (fields are separated by exactly one space)")
        if index == 0:
            if field not in _V1_PROTOCOLS:
                raise ProxyHeaderError(f"v1: unknown protocol {field[:8]!r} (TCP4, TCP6 or UNKNOWN)")
            self._fields.append(field)
            if field == b"UNKNOWN":
                self._ignore_rest = not at_line_end
                return
        elif index in (1, 2):
            self._fields.append(_parse_v1_address(self._v1_family(), field))
        else:
            self._fields.append(_parse_v1_port(field))
        if at_line_end and index != _V1_LAST_FIELD:
            raise ProxyHeaderError("v1: the line ends before the destination port")
        if not at_line_end and index == _V1_LAST_FIELD:
            raise ProxyHeaderError("v1: CRLF expected after the destination port")

    def _v1_family(self) -> int:
        return socket.AF_INET if self._fields[0] == b"TCP4" else socket.AF_INET6

    def _check_partial_field(self, field: bytes) -> None:
        """Raise if the field being built can no longer become valid."""
        if not field:
            return
        index = len(self._fields)
        if index == 0:
            viable = any(name.startswith(field) for name in _V1_PROTOCOLS)
        elif index in (1, 2):
            viable = _address_prefix_viable(self._v1_family(), field)
        else:
            viable = _port_prefix_viable(field)
        if not viable:
            raise ProxyHeaderError(f"v1: invalid field {field[:_IPV6_MAX_TEXT]!r}")

    def _v1_header(self) -> ProxyHeader:
        fields = self._fields
        if fields[0] == b"UNKNOWN":
            return ProxyHeader(1, "PROXY", None, None, None, None)
        src, dst, sport, dport = fields[1:]
        assert isinstance(src, str) and isinstance(dst, str)
        assert isinstance(sport, int) and isinstance(dport, int)
        return ProxyHeader(1, "PROXY", self._v1_family(), socket.SOCK_STREAM,
                           (src, sport), (dst, dport))

    # ------------------------------------------------------------ v2

    def _feed_v2(self, data: bytes) -> ProxyHeader | None:
        buf = self._buf
        while True:
            limit = self._total or _V2_FIXED
            start = len(buf)
            room = limit - start
            buf += data[:room]
            data = data[room:]
            self._check_v2(start)
            if len(buf) < limit:
                return None
            if limit == self._total:
                self._remainder = data
                return self._v2_header()

    def _check_v2(self, start: int) -> None:
        """Validate ``buf[start:]``, the bytes just added, as far as they go."""
        buf = self._buf
        have = len(buf)
        if start < len(V2_SIGNATURE):
            end = min(have, len(V2_SIGNATURE))
            if buf[start:end] != V2_SIGNATURE[start:end]:
                raise ProxyHeaderError("v2: bad signature")
        if start <= 12 < have:
            if buf[12] >> 4 != _V2_VERSION:
                raise ProxyHeaderError(f"v2: version {buf[12] >> 4} (only 2 is defined)")
            if buf[12] & 0xF not in (_CMD_LOCAL, _CMD_PROXY):
                raise ProxyHeaderError(f"v2: unknown command {buf[12] & 0xF:#x}")
        if start <= 13 < have:
            if buf[13] >> 4 not in _FAMILIES:
                raise ProxyHeaderError(f"v2: unknown address family {buf[13] >> 4:#x}")
            if buf[13] & 0xF not in _TRANSPORTS:
                raise ProxyHeaderError(f"v2: unknown transport {buf[13] & 0xF:#x}")
        if start < _V2_FIXED <= have:
            self._start_body()
        if self._total:
            self._check_unix_source()
            if self._tlv_pos:
                self._scan_tlvs()

    def _start_body(self) -> None:
        buf = self._buf
        length = int.from_bytes(buf[14:16], "big")
        self._total = _V2_FIXED + length
        block = _ADDRESS_BLOCK[buf[13] >> 4]
        if buf[12] & 0xF == _CMD_PROXY:
            if block > length:
                raise ProxyHeaderError(f"v2: length {length} cannot hold the {block}-byte address block")
            tlv_start = _V2_FIXED + block
        elif buf[13] == 0x00:
            tlv_start = _V2_FIXED  # LOCAL, AF_UNSPEC: everything after the fixed part is TLVs
        else:
            return  # LOCAL naming a family: the block is skipped unparsed
        if tlv_start < self._total:
            if self._total - tlv_start < _TLV_HEADER:
                raise ProxyHeaderError("v2: bytes after the address block are too few for a TLV")
            self._tlv_pos = tlv_start

    def _check_unix_source(self) -> None:
        buf = self._buf
        if (not self._src_checked and buf[12] & 0xF == _CMD_PROXY and buf[13] >> 4 == 0x3
                and buf[13] & 0xF and len(buf) >= _V2_FIXED + _UNIX_PATH):
            self._src_checked = True
            _unix_path(buf, _V2_FIXED, "source")

    def _scan_tlvs(self) -> None:
        buf = self._buf
        pos = self._tlv_pos
        while pos + _TLV_HEADER <= len(buf):
            kind = buf[pos]
            length = int.from_bytes(buf[pos + 1:pos + 3], "big")
            end = pos + _TLV_HEADER + length
            if end > self._total:
                raise ProxyHeaderError(f"v2: TLV {kind:#04x} of {length} bytes overruns the header")
            if 0 < self._total - end < _TLV_HEADER:
                raise ProxyHeaderError(f"v2: {self._total - end} bytes after TLV {kind:#04x} are too few for a TLV")
            if kind == PP2_TYPE_CRC32C:
                if length != 4:
                    raise ProxyHeaderError(f"v2: CRC32c TLV of {length} bytes (4 expected)")
                if self._crc_at >= 0:
                    raise ProxyHeaderError("v2: more than one CRC32c TLV")
            elif kind == PP2_TYPE_UNIQUE_ID and length > _UNIQUE_ID_MAX:
                raise ProxyHeaderError(f"v2: UNIQUE_ID TLV of {length} bytes (at most {_UNIQUE_ID_MAX})")
            if end > len(buf):
                break  # the header was fine; wait for the value
            if kind == PP2_TYPE_SSL:
                _check_ssl_value(bytes(buf[pos + _TLV_HEADER:end]))
            elif kind == PP2_TYPE_CRC32C:
                self._crc_at = pos + _TLV_HEADER
            self._tlvs.append((kind, pos + _TLV_HEADER, length))
            pos = end
        self._tlv_pos = pos

    def _v2_header(self) -> ProxyHeader:
        buf = self._buf
        if self._crc_at >= 0:
            received = int.from_bytes(buf[self._crc_at:self._crc_at + 4], "big")
            zeroed = buf[:self._crc_at] + b"\0\0\0\0" + buf[self._crc_at + 4:]
            if crc32c(zeroed) != received:
                raise ProxyHeaderError("v2: CRC32c mismatch")
        tlvs = tuple((kind, bytes(buf[at:at + length])) for kind, at, length in self._tlvs)
        if buf[12] & 0xF == _CMD_LOCAL:
            return ProxyHeader(2, "LOCAL", None, None, None, None, tlvs)
        family = _FAMILIES[buf[13] >> 4]
        transport = _TRANSPORTS[buf[13] & 0xF]
        source: tuple[str, int] | str | None = None
        destination: tuple[str, int] | str | None = None
        if family is not None and transport is not None:
            if family == socket.AF_UNIX:
                source = _unix_path(buf, _V2_FIXED, "source")
                destination = _unix_path(buf, _V2_FIXED + _UNIX_PATH, "destination")
            else:
                size = 4 if family == socket.AF_INET else 16
                ports = _V2_FIXED + 2 * size
                source = (socket.inet_ntop(family, bytes(buf[_V2_FIXED:_V2_FIXED + size])),
                          int.from_bytes(buf[ports:ports + 2], "big"))
                destination = (socket.inet_ntop(family, bytes(buf[_V2_FIXED + size:ports])),
                               int.from_bytes(buf[ports + 2:ports + 4], "big"))
        return ProxyHeader(2, "PROXY", family, transport, source, destination, tlvs)


def _unix_path(buf: bytearray, offset: int, which: str) -> str:
    field = bytes(buf[offset:offset + _UNIX_PATH])
    end = field.find(b"\0")
    if end < 0:
        raise ProxyHeaderError(f"v2: the Unix {which} path is not NUL-terminated within {_UNIX_PATH} bytes")
    return field[:end].decode("utf-8", "surrogateescape")


def _check_ssl_value(value: bytes) -> None:
    """A PP2_TYPE_SSL value: client (1 byte), verify (4 bytes), then whole sub-TLVs."""
    if len(value) < _SSL_FIXED:
        raise ProxyHeaderError(f"v2: SSL TLV of {len(value)} bytes (at least {_SSL_FIXED})")
    pos = _SSL_FIXED
    while pos < len(value):
        if pos + _TLV_HEADER > len(value):
            raise ProxyHeaderError("v2: truncated sub-TLV in the SSL TLV")
        pos += _TLV_HEADER + int.from_bytes(value[pos + 1:pos + 3], "big")
        if pos > len(value):
            raise ProxyHeaderError("v2: a sub-TLV overruns the SSL TLV")

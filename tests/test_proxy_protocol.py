"""The PROXY protocol parser (reactor.proxy_protocol): pure, no sockets.

Every valid vector is fed whole, in two pieces split at every byte boundary and
byte by byte, followed by application bytes that must come back in
``remainder``. Every invalid vector names the index of the byte at which it
becomes invalid: everything before that byte is "need more" (``None``), that
byte raises, whatever the chunking. The v2 vectors are built with a small
``struct`` helper, cross-checked against literal bytes written from the spec
(HAProxy's doc/proxy-protocol.txt).
"""

from __future__ import annotations

import ast
import ipaddress
import random
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass

import pytest

from reactor import proxy_protocol as pp
from reactor.proxy_protocol import ProxyHeader, ProxyHeaderError, ProxyParser
from support import REPO_ROOT, run_python

SIG = b"\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A"
APP = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"
INET, INET6, UNIX = socket.AF_INET, socket.AF_INET6, socket.AF_UNIX
STREAM, DGRAM = socket.SOCK_STREAM, socket.SOCK_DGRAM


# ---------------------------------------------------------------- building v2 headers

def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def v2(command: int = 1, fam: int = 0x11, addresses: bytes = b"", tlvs: Iterable[bytes] = (),
       length: int | None = None, version: int = 2, crc: bool = False) -> bytes:
    """A v2 header; ``length`` overrides the length field, ``crc`` appends a valid CRC32c TLV."""
    body = addresses + b"".join(tlvs)
    if crc:
        body += tlv(pp.PP2_TYPE_CRC32C, b"\0\0\0\0")
    size = len(body) if length is None else length
    header = SIG + bytes([version << 4 | command, fam]) + struct.pack("!H", size) + body
    if crc:
        header = header[:-4] + struct.pack("!I", pp.crc32c(header))
    return header


def ipv4(src: str, dst: str, sport: int, dport: int) -> bytes:
    return socket.inet_pton(INET, src) + socket.inet_pton(INET, dst) + struct.pack("!HH", sport, dport)


def ipv6(src: str, dst: str, sport: int, dport: int) -> bytes:
    return socket.inet_pton(INET6, src) + socket.inet_pton(INET6, dst) + struct.pack("!HH", sport, dport)


def unix(src: bytes, dst: bytes) -> bytes:
    return src.ljust(108, b"\0") + dst.ljust(108, b"\0")


def ssl_value(client: int, verify: int, *subs: bytes) -> bytes:
    return struct.pack("!BI", client, verify) + b"".join(subs)


ADDR4 = ipv4("203.0.113.7", "192.0.2.1", 56324, 443)
ADDR6 = ipv6("2001:db8::7", "2001:db8::1", 56324, 443)
SRC4 = ("203.0.113.7", 56324)
DST4 = ("192.0.2.1", 443)
SRC6 = ("2001:db8::7", 56324)
DST6 = ("2001:db8::1", 443)

SSL_TLV = ssl_value(0x07, 0, tlv(pp.PP2_SUBTYPE_SSL_VERSION, b"TLSv1.3"),
                    tlv(pp.PP2_SUBTYPE_SSL_CN, b"client.example"),
                    tlv(pp.PP2_SUBTYPE_SSL_CIPHER, b"TLS_AES_128_GCM_SHA256"))
MIXED_TLVS = (
    (pp.PP2_TYPE_ALPN, b"\x02h2"),
    (pp.PP2_TYPE_AUTHORITY, b"example.com"),
    (pp.PP2_TYPE_NOOP, b""),
    (pp.PP2_TYPE_UNIQUE_ID, bytes(range(128))),
    (pp.PP2_TYPE_SSL, SSL_TLV),
    (pp.PP2_TYPE_NETNS, b"blue"),
    (0xE0, b"custom"),
    (0xF8, b"future"),
)


def proxy(version: int, family: int | None, transport: int | None, source: object, destination: object,
          tlvs: tuple[tuple[int, bytes], ...] = ()) -> ProxyHeader:
    return ProxyHeader(version, "PROXY", family, transport, source, destination, tlvs)  # type: ignore[arg-type]


LOCAL = ProxyHeader(2, "LOCAL", None, None, None, None)
UNKNOWN = ProxyHeader(1, "PROXY", None, None, None, None)

IPV6_MAX = ":".join(["ffff"] * 8)
V1_WORST_CASE = f"PROXY UNKNOWN {IPV6_MAX} {IPV6_MAX} 65535 65535\r\n".encode()
assert len(V1_WORST_CASE) == 107


def _crc_header_with(*tlvs: bytes) -> bytes:
    return v2(1, 0x11, ADDR4, tlvs, crc=True)


# ---------------------------------------------------------------- valid vectors

@dataclass(frozen=True)
class Valid:
    id: str
    data: bytes
    expected: ProxyHeader
    mode: str = "any"


VALID = [
    # v1, from the spec's examples and its maximum line lengths (section 2.1)
    Valid("v1-spec-example", b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
          proxy(1, INET, STREAM, ("192.168.0.1", 56324), ("192.168.0.11", 443))),
    Valid("v1-tcp4-max", b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
          proxy(1, INET, STREAM, ("255.255.255.255", 65535), ("255.255.255.255", 65535))),
    Valid("v1-tcp4-zeros", b"PROXY TCP4 0.0.0.0 10.0.0.1 0 0\r\n",
          proxy(1, INET, STREAM, ("0.0.0.0", 0), ("10.0.0.1", 0))),
    Valid("v1-tcp6-max", f"PROXY TCP6 {IPV6_MAX} {IPV6_MAX} 65535 65535\r\n".encode(),
          proxy(1, INET6, STREAM, (IPV6_MAX, 65535), (IPV6_MAX, 65535))),
    Valid("v1-tcp6-compressed-uppercase", b"PROXY TCP6 2001:DB8::7 ::1 56324 443\r\n",
          proxy(1, INET6, STREAM, SRC6, ("::1", 443))),
    Valid("v1-tcp6-uncompressed-is-normalised", b"PROXY TCP6 2001:0db8:0000:0000:0000:0000:0000:0007 :: 1 2\r\n",
          proxy(1, INET6, STREAM, SRC6[:1] + (1,), ("::", 2))),
    Valid("v1-tcp6-v4-mapped", b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n",
          proxy(1, INET6, STREAM, (socket.inet_ntop(INET6, socket.inet_pton(INET6, "::ffff:192.0.2.1")), 1),
                ("::1", 2))),
    Valid("v1-unknown-short", b"PROXY UNKNOWN\r\n", UNKNOWN),
    Valid("v1-unknown-with-addresses", b"PROXY UNKNOWN 10.0.0.1 10.0.0.2 1 2\r\n", UNKNOWN),
    Valid("v1-unknown-ignores-anything", b"PROXY UNKNOWN  whatever\x00\xff  \r\n", UNKNOWN),
    Valid("v1-unknown-worst-case-107-bytes", V1_WORST_CASE, UNKNOWN),
    Valid("v1-mode-v1", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
          proxy(1, INET, STREAM, ("1.2.3.4", 1), ("5.6.7.8", 2)), mode="v1"),
    # v2, by the helper
    Valid("v2-tcp4", v2(1, 0x11, ADDR4), proxy(2, INET, STREAM, SRC4, DST4)),
    Valid("v2-udp4", v2(1, 0x12, ADDR4), proxy(2, INET, DGRAM, SRC4, DST4)),
    Valid("v2-tcp6", v2(1, 0x21, ADDR6), proxy(2, INET6, STREAM, SRC6, DST6)),
    Valid("v2-udp6", v2(1, 0x22, ADDR6), proxy(2, INET6, DGRAM, SRC6, DST6)),
    Valid("v2-unix-stream", v2(1, 0x31, unix(b"/run/client.sock", b"/run/server.sock")),
          proxy(2, UNIX, STREAM, "/run/client.sock", "/run/server.sock")),
    Valid("v2-unix-dgram-unnamed-and-107-byte-path", v2(1, 0x32, unix(b"", b"/" + b"p" * 106)),
          proxy(2, UNIX, DGRAM, "", "/" + "p" * 106)),
    Valid("v2-unix-abstract-and-garbage-after-nul", v2(1, 0x31, unix(b"\0abstract", b"/a\0junk")),
          proxy(2, UNIX, STREAM, "", "/a")),
    Valid("v2-unix-non-utf8-path", v2(1, 0x31, unix(b"/tmp/\xff", b"/x")),
          proxy(2, UNIX, STREAM, "/tmp/\udcff", "/x")),
    Valid("v2-tcp4-mode-v2", v2(1, 0x11, ADDR4), proxy(2, INET, STREAM, SRC4, DST4), mode="v2"),
    Valid("v2-local-unspec", v2(0, 0x00), LOCAL),
    Valid("v2-local-with-tlvs", v2(0, 0x00, b"", [tlv(pp.PP2_TYPE_NOOP, b"pad")], crc=True),
          ProxyHeader(2, "LOCAL", None, None, None, None, (
              (pp.PP2_TYPE_NOOP, b"pad"),
              (pp.PP2_TYPE_CRC32C, v2(0, 0x00, b"", [tlv(pp.PP2_TYPE_NOOP, b"pad")], crc=True)[-4:])))),
    Valid("v2-local-naming-a-family-with-addresses", v2(0, 0x11, ADDR4), LOCAL),
    Valid("v2-local-naming-a-family-without-addresses", v2(0, 0x21), LOCAL),
    Valid("v2-local-length-is-skipped-unparsed", v2(0, 0x11, b"\xff" * 40), LOCAL),
    Valid("v2-proxy-unspec", v2(1, 0x00), proxy(2, None, None, None, None)),
    Valid("v2-proxy-unspec-family-stream", v2(1, 0x01, b"", [tlv(0xE1, b"x")]),
          proxy(2, None, STREAM, None, None, ((0xE1, b"x"),))),
    Valid("v2-proxy-inet6-unspec-transport", v2(1, 0x20, ADDR6), proxy(2, INET6, None, None, None)),
    Valid("v2-proxy-unix-unspec-transport", v2(1, 0x30, b"/" * 216), proxy(2, UNIX, None, None, None)),
    Valid("v2-proxy-inet-unspec-transport", v2(1, 0x10, ADDR4, [tlv(0xE1, b"x")]),
          proxy(2, INET, None, None, None, ((0xE1, b"x"),))),
    Valid("v2-tcp4-tlvs", v2(1, 0x11, ADDR4, [tlv(kind, value) for kind, value in MIXED_TLVS]),
          proxy(2, INET, STREAM, SRC4, DST4, MIXED_TLVS)),
    Valid("v2-tcp6-crc32c", v2(1, 0x21, ADDR6, [tlv(pp.PP2_TYPE_ALPN, b"h2")], crc=True),
          proxy(2, INET6, STREAM, SRC6, DST6, (
              (pp.PP2_TYPE_ALPN, b"h2"),
              (pp.PP2_TYPE_CRC32C, v2(1, 0x21, ADDR6, [tlv(pp.PP2_TYPE_ALPN, b"h2")], crc=True)[-4:])))),
    Valid("v2-crc32c-first", v2(1, 0x11, ADDR4, [tlv(pp.PP2_TYPE_CRC32C, struct.pack(
        "!I", pp.crc32c(v2(1, 0x11, ADDR4, [tlv(pp.PP2_TYPE_CRC32C, b"\0" * 4), tlv(0xE0, b"after")])))),
        tlv(0xE0, b"after")]),
          proxy(2, INET, STREAM, SRC4, DST4, (
              (pp.PP2_TYPE_CRC32C, struct.pack("!I", pp.crc32c(v2(1, 0x11, ADDR4, [
                  tlv(pp.PP2_TYPE_CRC32C, b"\0" * 4), tlv(0xE0, b"after")])))),
              (0xE0, b"after")))),
    Valid("v2-empty-ssl-tlv", v2(1, 0x11, ADDR4, [tlv(pp.PP2_TYPE_SSL, ssl_value(0, 1))]),
          proxy(2, INET, STREAM, SRC4, DST4, ((pp.PP2_TYPE_SSL, ssl_value(0, 1)),))),
]

# The longest v2 header: a 65535-byte length, one NOOP TLV (fed whole, byte by byte,
# and split at sampled boundaries only: every split would take minutes).
BIG = Valid("v2-max-length", v2(1, 0x11, ADDR4, [tlv(pp.PP2_TYPE_NOOP, b"\xaa" * (65535 - 12 - 3))]),
            proxy(2, INET, STREAM, SRC4, DST4, ((pp.PP2_TYPE_NOOP, b"\xaa" * (65535 - 12 - 3)),)))
assert len(BIG.data) == 16 + 65535


def test_spec_literals_match_the_helper() -> None:
    # The spec's v1 example, in v2 form: signature, PROXY v2, TCP over IPv4, 12 bytes,
    # 192.168.0.1 -> 192.168.0.11, 56324 -> 443, all in network byte order.
    literal = (b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a" b"\x21" b"\x11" b"\x00\x0c"
               b"\xc0\xa8\x00\x01" b"\xc0\xa8\x00\x0b" b"\xdc\x04" b"\x01\xbb")
    assert literal == v2(1, 0x11, ipv4("192.168.0.1", "192.168.0.11", 56324, 443))
    header = ProxyParser().feed(literal)
    assert header == proxy(2, INET, STREAM, ("192.168.0.1", 56324), ("192.168.0.11", 443))
    # A health check as HAProxy sends it: LOCAL, AF_UNSPEC/UNSPEC, no address.
    local = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a\x20\x00\x00\x00"
    assert local == v2(0, 0x00)
    assert ProxyParser().feed(local) == LOCAL
    # The signature and the v1 magic, byte for byte as the spec spells them.
    assert pp.V2_SIGNATURE == SIG
    assert b"\x50\x52\x4F\x58\x59\x20" == b"PROXY "


def test_crc32c_known_answers() -> None:
    # The usual check value, and RFC 3720 (iSCSI) appendix B.4 vectors.
    assert pp.crc32c(b"123456789") == 0xE3069283
    assert pp.crc32c(bytes(32)) == 0x8A9136AA
    assert pp.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert pp.crc32c(bytes(range(32))) == 0x46DD794E
    assert pp.crc32c(b"6789", pp.crc32c(b"12345")) == 0xE3069283
    assert pp.crc32c(b"") == 0


def _feed_all(parser: ProxyParser, chunks: Iterable[bytes]) -> ProxyHeader | None:
    result = None
    for chunk in chunks:
        assert result is None, "a header was returned before the last chunk"
        result = parser.feed(chunk)
    return result


@pytest.mark.parametrize("vector", VALID, ids=[v.id for v in VALID])
def test_valid_header_fed_whole(vector: Valid) -> None:
    parser = ProxyParser(vector.mode)
    assert parser.feed(vector.data + APP) == vector.expected
    assert parser.remainder == APP
    assert parser.needed == 0
    with pytest.raises(RuntimeError):
        parser.feed(b"more")

    parser = ProxyParser(vector.mode)
    assert parser.feed(vector.data) == vector.expected
    assert parser.remainder == b""


@pytest.mark.parametrize("vector", VALID, ids=[v.id for v in VALID])
def test_valid_header_split_at_every_byte(vector: Valid) -> None:
    data = vector.data + APP
    for cut in range(len(data) + 1):
        parser = ProxyParser(vector.mode)
        first = parser.feed(data[:cut])
        if cut >= len(vector.data):
            assert first == vector.expected, cut
            assert parser.remainder == data[len(vector.data):cut], cut
            continue
        assert first is None, cut
        assert parser.remainder == b""
        assert parser.feed(data[cut:]) == vector.expected, cut
        assert parser.remainder == APP, cut


def _byte_by_byte(vector: Valid) -> None:
    parser = ProxyParser(vector.mode)
    for index in range(len(vector.data)):
        # needed is a lower bound: reading that many bytes never reads past the header
        assert 0 < parser.needed <= len(vector.data) - index, index
        result = parser.feed(vector.data[index:index + 1])
        if index < len(vector.data) - 1:
            assert result is None, index
            assert parser.remainder == b""
    assert result == vector.expected
    assert parser.remainder == b""
    assert parser.needed == 0


@pytest.mark.parametrize("vector", VALID, ids=[v.id for v in VALID])
def test_valid_header_byte_by_byte(vector: Valid) -> None:
    _byte_by_byte(vector)


def test_longest_v2_header() -> None:
    parser = ProxyParser()
    assert parser.feed(BIG.data + APP) == BIG.expected
    assert parser.remainder == APP
    _byte_by_byte(BIG)
    cuts = sorted(set(range(0, 300)) | set(range(len(BIG.data) - 300, len(BIG.data) + len(APP) + 1))
                  | set(range(0, len(BIG.data), 4099)))
    data = BIG.data + APP
    for cut in cuts:
        parser = ProxyParser()
        if cut >= len(BIG.data):
            assert parser.feed(data[:cut]) == BIG.expected
            continue
        assert parser.feed(data[:cut]) is None
        assert parser.feed(data[cut:]) == BIG.expected
        assert parser.remainder == APP


def test_empty_feeds_change_nothing() -> None:
    parser = ProxyParser()
    assert parser.feed(b"") is None
    assert parser.needed == 15  # the shortest header, "PROXY UNKNOWN\r\n"
    assert parser.feed(b"PROXY ") is None
    assert parser.feed(b"") is None
    assert parser.feed(bytearray(b"UNKNOWN\r\n")) == UNKNOWN
    parser = ProxyParser("v2")
    assert parser.needed == 16
    assert parser.feed(memoryview(v2(1, 0x11, ADDR4))[:16]) is None
    assert parser.needed == 12
    assert parser.feed(memoryview(ADDR4)) == proxy(2, INET, STREAM, SRC4, DST4)


def test_header_helpers() -> None:
    header = ProxyParser().feed(v2(1, 0x11, ADDR4, [tlv(pp.PP2_TYPE_NOOP, b"a"), tlv(0xE0, b"b"),
                                                    tlv(pp.PP2_TYPE_NOOP, b"c")]))
    assert header is not None
    assert header.tlv(pp.PP2_TYPE_NOOP) == b"a"
    assert header.tlvs_of(pp.PP2_TYPE_NOOP) == (b"a", b"c")
    assert header.tlv(pp.PP2_TYPE_ALPN) is None
    assert header.tlvs_of(pp.PP2_TYPE_ALPN) == ()
    v1 = ProxyParser().feed(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
    assert v1 is not None and v1.tlvs == () and v1.tlv(pp.PP2_TYPE_ALPN) is None
    with pytest.raises(AttributeError):
        v1.version = 2  # type: ignore[misc]
    assert (pp.PP2_TYPE_ALPN, pp.PP2_TYPE_AUTHORITY, pp.PP2_TYPE_CRC32C, pp.PP2_TYPE_NOOP,
            pp.PP2_TYPE_UNIQUE_ID, pp.PP2_TYPE_SSL, pp.PP2_TYPE_NETNS) == (1, 2, 3, 4, 5, 0x20, 0x30)


def test_mode_is_checked() -> None:
    for mode in ("v1", "v2", "any"):
        assert ProxyParser(mode).mode == mode
    for mode in ("V1", "", "both", "1"):
        with pytest.raises(ValueError):
            ProxyParser(mode)


def test_a_failed_parser_stays_failed() -> None:
    parser = ProxyParser()
    with pytest.raises(ProxyHeaderError):
        parser.feed(b"GET")
    assert parser.needed == 0
    with pytest.raises(RuntimeError):
        parser.feed(b"PROXY UNKNOWN\r\n")


def test_errors_are_value_errors() -> None:
    assert issubclass(ProxyHeaderError, ValueError)


# ---------------------------------------------------------------- invalid vectors

@dataclass(frozen=True)
class Invalid:
    id: str
    data: bytes
    bad_at: int  # index of the byte at which the data can no longer be a valid header
    mode: str = "any"


def at(data: bytes, marker: bytes) -> int:
    """The index of the last byte of the first ``marker`` in ``data``."""
    index = data.index(marker)
    return index + len(marker) - 1


def invalid(id: str, data: bytes, marker: bytes | int, mode: str = "any") -> Invalid:
    """An invalid vector that goes bad at the last byte of ``marker`` (or at an index)."""
    return Invalid(id, data, marker if isinstance(marker, int) else at(data, marker), mode)


V1_OK = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"
TOO_LONG = b"PROXY UNKNOWN " + b"a" * 92 + b"\r\n"
assert len(TOO_LONG) == 108
V2_CRC = _crc_header_with(tlv(0xE0, b"x"))
UNIX_NO_NUL_SRC = v2(1, 0x31, b"/" * 108 + b"\0" * 108)
UNIX_NO_NUL_DST = v2(1, 0x31, b"\0" * 108 + b"/" * 108)

INVALID = [
    # first bytes
    invalid("http", b"GET / HTTP/1.1\r\n", 0),
    invalid("tls", b"\x16\x03\x01\x02\x00\x01\x00", 0),
    invalid("blank-lines", b"\r\n\r\n\r\n", 4),
    invalid("lowercase-proxy", b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", 0),
    invalid("v1-in-v2-mode", V1_OK, 0, mode="v2"),
    invalid("v2-in-v1-mode", v2(1, 0x11, ADDR4), 0, mode="v1"),
    # v1
    invalid("v1-bad-magic", b"PROXX TCP4 1.2.3.4 5.6.7.8 1 2\r\n", 4),
    invalid("v1-no-space-after-magic", b"PROXY\r\n", 5),
    invalid("v1-two-spaces", b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", 6),
    invalid("v1-bad-protocol", b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", b"TCP5"),
    invalid("v1-lowercase-protocol", b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", 6),
    invalid("v1-udp", b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", b"UD"),
    invalid("v1-unknownx", b"PROXY UNKNOWNX\r\n", b"UNKNOWNX"),
    invalid("v1-lf-only", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", b"\n"),
    invalid("v1-cr-only", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rGET", b"\rG"),
    invalid("v1-unknown-lf-only", b"PROXY UNKNOWN\n", b"\n"),
    invalid("v1-unknown-lf-in-rest", b"PROXY UNKNOWN a\nb\r\n", b"\n"),
    invalid("v1-unknown-cr-in-rest", b"PROXY UNKNOWN a\rb\r\n", b"\rb"),
    invalid("v1-108-bytes", TOO_LONG, 106),
    invalid("v1-no-crlf", b"PROXY UNKNOWN " + b"a" * 300, 106),
    invalid("v1-tcp6-no-crlf", b"PROXY TCP6 ::1 ::1 1 2" + b" " * 200, b"2 "),
    invalid("v1-trailing-space", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", b"2 "),
    invalid("v1-extra-field", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", b"2 "),
    invalid("v1-missing-port", b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", b"1\r"),
    invalid("v1-empty-last-port", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n", b"1 \r"),
    invalid("v1-tcp4-no-addresses", b"PROXY TCP4\r\n", b"4\r"),
    invalid("v1-ipv4-leading-zero", b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", b"01"),
    invalid("v1-ipv4-leading-zero-last", b"PROXY TCP4 1.2.3.4 5.6.7.08 1 2\r\n", b"08"),
    invalid("v1-ipv4-octet-too-big", b"PROXY TCP4 256.1.1.1 5.6.7.8 1 2\r\n", b"256"),
    invalid("v1-ipv4-three-octets", b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", b"1.2.3 "),
    invalid("v1-ipv4-five-octets", b"PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", b"1.2.3.4."),
    invalid("v1-ipv4-empty-octet", b"PROXY TCP4 1..3.4 5.6.7.8 1 2\r\n", b"1.."),
    invalid("v1-ipv6-in-tcp4", b"PROXY TCP4 ::1 ::1 1 2\r\n", b"TCP4 :"),
    invalid("v1-ipv4-in-tcp6", b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", b"TCP6 1."),
    invalid("v1-ipv6-scope", b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", b"%"),
    invalid("v1-ipv6-triple-colon", b"PROXY TCP6 1:::2 ::1 1 2\r\n", b":::"),
    invalid("v1-ipv6-two-double-colons", b"PROXY TCP6 1::2::3 ::1 1 2\r\n", b"1::2::"),
    invalid("v1-ipv6-long-group", b"PROXY TCP6 12345::1 ::1 1 2\r\n", b"12345"),
    invalid("v1-ipv6-nine-groups", b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", b"7:8:"),
    invalid("v1-ipv6-seven-groups", b"PROXY TCP6 1:2:3:4:5:6:7 ::1 1 2\r\n", b"6:7 "),
    invalid("v1-ipv6-leading-single-colon", b"PROXY TCP6 :1::2 ::1 1 2\r\n", b" :1"),
    invalid("v1-ipv6-bad-digit", b"PROXY TCP6 2001:db8::g ::1 1 2\r\n", b"g"),
    invalid("v1-port-too-big", b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", b"65536"),
    invalid("v1-port-six-digits", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 100000\r\n", b"100000"),
    invalid("v1-port-leading-zero", b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", b"08"),
    invalid("v1-port-plus", b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 2\r\n", b"+"),
    invalid("v1-port-minus", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -2\r\n", b"-"),
    invalid("v1-port-hex", b"PROXY TCP4 1.2.3.4 5.6.7.8 0x50 2\r\n", b"0x"),
    invalid("v1-port-non-ascii-digit", "PROXY TCP4 1.2.3.4 5.6.7.8 1\u0662 2\r\n".encode(), b"1\xd9"),
    invalid("v1-tab", b"PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n", b"\t"),
    # v2 fixed part
    invalid("v2-bad-signature", SIG[:7] + b"q" + SIG[8:] + b"\x21\x11\x00\x00", 7),
    invalid("v2-signature-then-http", b"\r\nGET / HTTP/1.1\r\n", 2),
    invalid("v2-version-1", v2(1, 0x11, ADDR4, version=1), 12),
    invalid("v2-version-3", v2(1, 0x11, ADDR4, version=3), 12),
    invalid("v2-version-0", v2(1, 0x11, ADDR4, version=0), 12),
    invalid("v2-command-2", v2(2, 0x11, ADDR4), 12),
    invalid("v2-command-f", v2(0xF, 0x11, ADDR4), 12),
    invalid("v2-family-4", v2(1, 0x41, ADDR4), 13),
    invalid("v2-family-f", v2(1, 0xF1, ADDR4), 13),
    invalid("v2-transport-3", v2(1, 0x13, ADDR4), 13),
    invalid("v2-local-bad-family", v2(0, 0x51), 13),
    invalid("v2-tcp4-length-too-short", v2(1, 0x11, ADDR4[:11]), 15),
    invalid("v2-tcp6-length-too-short", v2(1, 0x21, ADDR6[:35]), 15),
    invalid("v2-unix-length-too-short", v2(1, 0x31, unix(b"/a", b"/b")[:215]), 15),
    invalid("v2-inet-unspec-transport-too-short", v2(1, 0x10, b"\0" * 4), 15),
    invalid("v2-one-byte-after-addresses", v2(1, 0x11, ADDR4 + b"\x04"), 15),
    invalid("v2-two-bytes-after-addresses", v2(1, 0x11, ADDR4 + b"\x04\x00"), 15),
    invalid("v2-local-unspec-two-bytes", v2(0, 0x00, b"\x04\x00"), 15),
    # v2 addresses
    invalid("v2-unix-source-not-nul-terminated", UNIX_NO_NUL_SRC, 16 + 108 - 1),
    invalid("v2-unix-destination-not-nul-terminated", UNIX_NO_NUL_DST, 16 + 216 - 1),
    # v2 TLVs
    invalid("v2-tlv-overruns", v2(1, 0x11, ADDR4 + struct.pack("!BH", 0xE0, 6) + b"12345"), 16 + 12 + 2),
    invalid("v2-tlv-leaves-two-bytes", v2(1, 0x11, ADDR4 + tlv(0xE0, b"1") + b"\x04\x00"), 16 + 12 + 2),
    invalid("v2-second-tlv-overruns", v2(1, 0x11, ADDR4 + tlv(0xE0, b"ab") + struct.pack("!BH", 0xE1, 9) + b"x"),
            16 + 12 + 5 + 2),
    invalid("v2-local-tlv-overruns", v2(0, 0x00, struct.pack("!BH", 0xE0, 1)), 15 + 3),
    invalid("v2-crc32c-mismatch", V2_CRC[:-1] + bytes([V2_CRC[-1] ^ 1]), len(V2_CRC) - 1),
    invalid("v2-crc32c-body-changed", V2_CRC[:-8] + b"y" + V2_CRC[-7:], len(V2_CRC) - 1),
    invalid("v2-crc32c-zero", V2_CRC[:-4] + b"\0\0\0\0", len(V2_CRC) - 1),
    invalid("v2-crc32c-short", v2(1, 0x11, ADDR4, [tlv(pp.PP2_TYPE_CRC32C, b"abc")]), 16 + 12 + 2),
    invalid("v2-crc32c-long", v2(1, 0x11, ADDR4, [tlv(pp.PP2_TYPE_CRC32C, b"abcde")]), 16 + 12 + 2),
    invalid("v2-crc32c-twice", v2(1, 0x11, ADDR4, [tlv(pp.PP2_TYPE_CRC32C, b"abcd"),
                                                   tlv(pp.PP2_TYPE_CRC32C, b"abcd")]), 16 + 12 + 7 + 2),
    invalid("v2-unique-id-too-long", v2(1, 0x11, ADDR4, [tlv(pp.PP2_TYPE_UNIQUE_ID, bytes(129))]), 16 + 12 + 2),
    invalid("v2-ssl-too-short", v2(1, 0x11, ADDR4, [tlv(pp.PP2_TYPE_SSL, b"\x01\0\0\0")]), 16 + 12 + 3 + 4 - 1),
    invalid("v2-ssl-sub-tlv-overruns", v2(1, 0x11, ADDR4, [tlv(pp.PP2_TYPE_SSL, ssl_value(1, 0) + b"\x21\x00\x09TLS")]),
            16 + 12 + 3 + 5 + 6 - 1),
    invalid("v2-ssl-sub-tlv-truncated", v2(1, 0x11, ADDR4, [tlv(pp.PP2_TYPE_SSL, ssl_value(1, 0) + b"\x21\x00")]),
            16 + 12 + 3 + 5 + 2 - 1),
]


@pytest.mark.parametrize("vector", INVALID, ids=[v.id for v in INVALID])
def test_invalid_header_fails_at_its_first_bad_byte(vector: Invalid) -> None:
    data, bad = vector.data, vector.bad_at
    assert bad < len(data)
    # byte by byte: None up to the bad byte, which raises
    parser = ProxyParser(vector.mode)
    for index in range(bad):
        assert parser.feed(data[index:index + 1]) is None, index
    with pytest.raises(ProxyHeaderError):
        parser.feed(data[bad:bad + 1])
    # whole, or in two pieces: the piece holding the bad byte raises
    with pytest.raises(ProxyHeaderError):
        ProxyParser(vector.mode).feed(data + APP)
    for cut in range(len(data) + 1):
        parser = ProxyParser(vector.mode)
        with pytest.raises(ProxyHeaderError):
            if parser.feed(data[:cut]) is not None:
                pytest.fail(f"a header returned for a prefix of {cut} bytes")
            assert cut <= bad, f"{cut} bytes, including the bad byte at {bad}, did not raise"
            parser.feed(data[cut:])


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def test_every_valid_prefix_of_an_address_is_accepted() -> None:
    # The prefix check must never reject the start of a valid address.
    rng = random.Random(1)
    addresses = ["1.2.3.4", "255.255.255.255", "0.0.0.0", "10.200.30.4"]
    addresses6 = ["::", "::1", "1::", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8",
                  "1:2:3:4:5:6:1.2.3.4", "::ffff:255.255.255.255", "1::5:6:7:8:9.9.9.9", "FFFF::abcd"]
    for _ in range(150):
        address = ipaddress.IPv6Address(rng.getrandbits(128) & rng.choice(
            [(1 << 128) - 1, (1 << 64) - 1, 0xFFFF_0000_0000_FFFF_0000_0000_0000_FFFF]))
        four = ipaddress.IPv4Address(rng.getrandbits(32))
        addresses6 += [str(address), address.exploded.upper(), f"{address.exploded[:29]}:{four}",
                       f"{str(address).rsplit(':', 2)[0]}::{four}".replace(":::", "::")]
        addresses.append(str(four))
    addresses6 = [text for text in addresses6 if _is_ipv6(text)]
    assert len(addresses6) > 400
    for protocol, short, texts in ((b"TCP4", b"0.0.0.0", addresses), (b"TCP6", b"::", addresses6)):
        for text in texts:
            for line in (b"PROXY %s %s %s 1 2\r\n" % (protocol, text.encode(), short),
                         b"PROXY %s %s %s 1 2\r\n" % (protocol, short, text.encode())):
                _byte_by_byte(Valid(text, line, ProxyParser().feed(line)))  # type: ignore[arg-type]


# ---------------------------------------------------------------- fuzzing

def _mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        choice = rng.randrange(7)
        where = rng.randrange(len(data) + 1)
        if choice == 0 and data:
            data[min(where, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif choice == 1 and data:
            data[min(where, len(data) - 1)] = rng.randrange(256)
        elif choice == 2:
            data[where:where] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        elif choice == 3:
            del data[where:where + rng.randint(1, 4)]
        elif choice == 4:
            del data[where:]
        elif choice == 5 and len(data) >= 16 and data[:12] == SIG:
            data[14:16] = struct.pack("!H", rng.choice([0, 1, 2, 3, 11, 12, 13, 36, 216, 0xFFFF,
                                                        rng.randrange(0x10000)]))
        else:
            data[where:where] = rng.choice([b" ", b"\r", b"\n", b"\r\n", b":", b".", b"0", b"\0"])
    return bytes(data)


def _outcome(data: bytes, mode: str, steps: Iterable[int]) -> tuple[object, ...]:
    """Feed ``data`` in chunks of the given sizes: ("error",), ("need more",) or ("header", header, length)."""
    parser = ProxyParser(mode)
    result: ProxyHeader | None = None
    pos = 0
    try:
        for step in steps:
            if pos >= len(data) or result is not None:
                break
            result = parser.feed(data[pos:pos + step])
            pos += step
            # bounded memory: never more than the longest header is buffered
            assert len(parser._buf) <= 16 + 0xFFFF
    except ProxyHeaderError:
        assert parser.needed == 0
        return ("error",)
    if result is None:
        assert parser.needed > 0
        assert parser.remainder == b""
        return ("need more",)
    assert result.version in (1, 2)
    assert data[:pos].endswith(parser.remainder)
    return ("header", result, min(pos, len(data)) - len(parser.remainder))


def test_fuzzed_headers_only_ever_parse_wait_or_raise_proxy_header_error() -> None:
    # Mutations of every vector, fed whole and in random chunks: the outcome is a
    # header, "need more" or ProxyHeaderError (any other exception fails the test),
    # it does not depend on the chunking, and the buffer stays bounded.
    rng = random.Random(20261203)
    seeds = [v.data for v in VALID] + [v.data for v in INVALID]
    deadline = time.monotonic() + 2.0
    counts = {"header": 0, "need more": 0, "error": 0}
    for iteration in range(12000):
        if time.monotonic() > deadline:
            break
        data = _mutate(rng, rng.choice(seeds)) + rng.randbytes(rng.choice([0, 10, 70000]))
        mode = rng.choice(["any", "any", "v1", "v2"])
        whole = _outcome(data, mode, [len(data)])
        chunks = iter(lambda: rng.choice([1, 2, 7, 64, 1000]), 0)  # endless, stops with the data
        assert _outcome(data, mode, chunks) == whole, data[:200]
        counts[str(whole[0])] += 1
    assert iteration > 500, "the fuzzer ran too few iterations to mean anything"
    assert all(counts.values()), counts


# ---------------------------------------------------------------- imports

def test_module_imports_only_small_stdlib_pieces() -> None:
    path = REPO_ROOT / "reactor" / "proxy_protocol.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "imports nothing relative (nothing from reactor)"
            imported.add(node.module or "")
    assert imported <= {"__future__", "dataclasses", "ipaddress", "re", "socket"}, imported


def test_module_loads_alone_without_the_package_or_ssl() -> None:
    result = run_python(
        """
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("proxy_protocol", sys.argv[1])
        module = importlib.util.module_from_spec(spec)
        sys.modules["proxy_protocol"] = module
        spec.loader.exec_module(module)
        header = module.ProxyParser().feed(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\\r\\n")
        assert header.source == ("1.2.3.4", 1), header
        loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("reactor", "ssl", "_ssl"))
        print(loaded)
        """,
        str(REPO_ROOT / "reactor" / "proxy_protocol.py"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

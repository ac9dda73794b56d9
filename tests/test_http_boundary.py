"""The HTTP/1.x request boundary (reactor.http_boundary): pure, no sockets.

Every vector is fed whole, in two pieces split at every byte boundary, byte by
byte, in random pieces, and followed by the next request (pipelining): a valid
request always ends at the same byte with the same lengths, a refused one always
raises the same status. The stdlib is the reference: for valid vectors, an
unmodified ``http.server.BaseHTTPRequestHandler`` reading an ``io.BytesIO``
consumes exactly the bytes the boundary gives the request (and ``http.client``
exactly its chunked body).
"""

from __future__ import annotations

import array
import http.client
import http.server
import io
import random
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from reactor import http_boundary
from reactor.http_boundary import HTTPLimits, HTTPRequestBoundary, RequestRefused

NEXT = b"GET /next HTTP/1.1\r\nHost: example\r\n\r\n"


@dataclass(frozen=True)
class Valid:
    """A whole request and what the boundary must say about it."""

    name: str
    data: bytes
    head_length: int
    body_length: int | None  # None: chunked
    expects_continue: bool = False
    limits: HTTPLimits = HTTPLimits()

    @property
    def chunked(self) -> bool:
        return self.body_length is None


@dataclass(frozen=True)
class Refused:
    """Bytes that must be refused with ``status``."""

    name: str
    data: bytes
    status: int
    limits: HTTPLimits = HTTPLimits()


def head(*lines: bytes) -> bytes:
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n"


GET = head(b"GET /index.html HTTP/1.1", b"Host: example", b"Accept: */*")
POST = head(b"POST /form HTTP/1.1", b"Host: example", b"Content-Length: 11") + b"hello world"
CHUNKED_HEAD = head(b"POST /up HTTP/1.1", b"Host: example", b"Transfer-Encoding: chunked")
CHUNKED_BODY = (b"5;name=value;flag\r\nhello\r\n"
                b"1A \t;ext=\"quoted; string\"\r\n" + b"x" * 26 + b"\r\n"
                b"0;last\r\nX-Checksum: abc\r\nX-Other: \xe9t\xe9\r\n\r\n")
SMALL = HTTPLimits(max_head=256, max_headers=4, max_line=64, max_body=100)

VALID = [
    Valid("get", GET, len(GET), 0),
    Valid("get-http10", head(b"GET / HTTP/1.0"), 18, 0),
    Valid("get-bare-lf", b"GET / HTTP/1.1\nHost: example\n\n", 30, 0),
    Valid("get-mixed-endings", b"GET / HTTP/1.1\r\nHost: example\n\r\n", 32, 0),
    Valid("get-tabs-in-request-line", b"GET\t/\tHTTP/1.1\r\n\r\n", 18, 0),  # str.split(), as http.server
    Valid("get-obs-text-value", head(b"GET / HTTP/1.1", b"X-Name: caf\xe9", b"Empty:"), 40, 0),
    Valid("get-version-with-zeros", head(b"GET / HTTP/01.01"), 20, 0),
    Valid("post", POST, len(POST) - 11, 11),
    Valid("post-zero-length", head(b"POST / HTTP/1.1", b"Content-Length: 0"), 38, 0),
    Valid("post-same-length-twice", head(b"POST / HTTP/1.1", b"Content-Length: 3", b"content-length:3")
          + b"abc", 56, 3),
    Valid("post-length-list", head(b"POST / HTTP/1.1", b"Content-Length: 3 , 3,003") + b"abc", 46, 3),
    Valid("post-expect", head(b"POST / HTTP/1.1", b"Expect: 100-Continue", b"Content-Length: 2") + b"ok",
          60, 2, expects_continue=True),
    Valid("post-expect-no-body", head(b"POST / HTTP/1.1", b"Expect: 100-continue", b"Content-Length: 0"),
          60, 0),
    Valid("post-expect-http10", head(b"POST / HTTP/1.0", b"Expect: 100-continue", b"Content-Length: 2") + b"ok",
          60, 2),
    Valid("chunked", CHUNKED_HEAD + CHUNKED_BODY, len(CHUNKED_HEAD), None),
    Valid("chunked-expect", head(b"POST / HTTP/1.1", b"Expect: 100-continue", b"Transfer-Encoding: chunked")
          + b"0\r\n\r\n", 69, None, expects_continue=True),
    Valid("chunked-bare-lf-lines", head(b"POST / HTTP/1.1", b"Transfer-Encoding: gzip, Chunked")
          + b"3\nabc\r\n00000000000000000000A\nabcdefghij\r\n0\nT: v\n\n", 53, None),
    Valid("chunked-two-fields", head(b"POST / HTTP/1.1", b"Transfer-Encoding: gzip", b"Transfer-Encoding: ,chunked,")
          + b"0\r\n\r\n", 74, None),
    # HTTP/0.9: parse_request reads header lines after "GET /" too, up to an empty line.
    Valid("http09", b"GET /\r\n\r\n", 9, 0),
    Valid("http09-with-fields", b"GET /\r\nHost: x\r\n\r\n", 18, 0),
    # Request lines http.server answers without reading headers.
    Valid("http09-post", b"POST /\r\n", 8, 0),
    Valid("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n", 12, 0),
    Valid("one-word", b"hello\r\n", 7, 0),
    Valid("four-words", b"GET / HTTP/1.1 x\r\n", 18, 0),
    Valid("not-http-version", b"GET / FTP/1.1\r\n", 15, 0),
    Valid("http2-version", b"GET / HTTP/2.0\r\n", 16, 0),
    Valid("empty-line", b"\r\n", 2, 0),
    Valid("empty-bare-lf", b"\n", 1, 0),
    Valid("spaces-only", b"   \r\n", 5, 0),
    # Limits: exactly at each one is fine.
    Valid("line-at-limit", head(b"GET /" + b"a" * 48 + b" HTTP/1.1"), 66, 0, limits=SMALL),
    Valid("fields-at-limit", head(b"GET / HTTP/1.1", b"A: 1", b"B: 2", b"C: 3", b"D: 4"), 42, 0, limits=SMALL),
    Valid("body-at-limit", head(b"POST / HTTP/1.1", b"Content-Length: 100") + b"b" * 100, 40, 100,
          limits=SMALL),
    Valid("chunks-at-limit", head(b"POST / HTTP/1.1", b"Transfer-Encoding: chunked")
          + b"32\r\n" + b"c" * 50 + b"\r\n32\r\n" + b"c" * 50 + b"\r\n0\r\n\r\n", 47, None, limits=SMALL),
    Valid("head-at-limit", head(b"GET / HTTP/1.1", b"X: " + b"v" * 57, b"Y: " + b"v" * 57, b"Z: " + b"v" * 57)
          + b"", 16 + 3 * 62 + 2, 0, limits=HTTPLimits(max_head=204, max_line=64)),
]

REFUSED = [
    # Body framing (RFC 9112 section 6).
    Refused("cl-and-te", head(b"POST / HTTP/1.1", b"Content-Length: 5", b"Transfer-Encoding: chunked"), 400),
    Refused("te-and-cl", head(b"POST / HTTP/1.1", b"Transfer-Encoding: chunked", b"Content-Length: 5"), 400),
    Refused("two-lengths", head(b"POST / HTTP/1.1", b"Content-Length: 5", b"Content-Length: 6"), 400),
    Refused("length-list", head(b"POST / HTTP/1.1", b"Content-Length: 5, 6"), 400),
    Refused("length-plus", head(b"POST / HTTP/1.1", b"Content-Length: +5"), 400),
    Refused("length-minus", head(b"POST / HTTP/1.1", b"Content-Length: -1"), 400),
    Refused("length-space-inside", head(b"POST / HTTP/1.1", b"Content-Length:  5 5"), 400),
    Refused("length-hex", head(b"POST / HTTP/1.1", b"Content-Length: 0x5"), 400),
    Refused("length-underscore", head(b"POST / HTTP/1.1", b"Content-Length: 1_0"), 400),
    Refused("length-empty", head(b"POST / HTTP/1.1", b"Content-Length:"), 400),
    Refused("length-empty-element", head(b"POST / HTTP/1.1", b"Content-Length: 5,,5"), 400),
    Refused("length-unicode-digit", head(b"POST / HTTP/1.1", b"Content-Length: \xb2"), 400),
    Refused("length-over-limit", head(b"POST / HTTP/1.1", b"Content-Length: 101"), 413, SMALL),
    Refused("length-over-default", head(b"POST / HTTP/1.1", b"Content-Length: 1073741825"), 413),
    Refused("length-beyond-int64", head(b"POST / HTTP/1.1", b"Content-Length: 9223372036854775808"), 413,
            HTTPLimits(max_body=None)),
    Refused("length-5000-digits", head(b"POST / HTTP/1.1", b"Content-Length: " + b"9" * 5000), 413,
            HTTPLimits(max_body=None)),
    Refused("te-gzip", head(b"POST / HTTP/1.1", b"Transfer-Encoding: gzip"), 501),
    Refused("te-identity", head(b"POST / HTTP/1.1", b"Transfer-Encoding: identity"), 501),
    Refused("te-chunked-not-last", head(b"POST / HTTP/1.1", b"Transfer-Encoding: chunked, gzip"), 400),
    Refused("te-chunked-twice", head(b"POST / HTTP/1.1", b"Transfer-Encoding: chunked, chunked"), 400),
    Refused("te-chunked-two-fields", head(b"POST / HTTP/1.1", b"Transfer-Encoding: chunked",
                                          b"Transfer-Encoding: chunked"), 400),
    Refused("te-chunked-parameter", head(b"POST / HTTP/1.1", b"Transfer-Encoding: chunked;q=1"), 400),
    Refused("te-empty", head(b"POST / HTTP/1.1", b"Transfer-Encoding: ,"), 400),
    Refused("te-not-a-token", head(b"POST / HTTP/1.1", b"Transfer-Encoding: chun ked"), 400),
    Refused("te-http10", head(b"POST / HTTP/1.0", b"Transfer-Encoding: chunked"), 400),
    Refused("te-gzip-http10", head(b"POST / HTTP/1.0", b"Transfer-Encoding: gzip"), 400),
    Refused("te-http09-version", head(b"POST / HTTP/0.9", b"Transfer-Encoding: chunked"), 400),
    # Chunked bodies.
    Refused("chunk-size-17-digits", CHUNKED_HEAD + b"10000000000000000\r\n", 413, HTTPLimits(max_body=None)),
    Refused("chunk-sum-over-limit", head(b"POST / HTTP/1.1", b"Transfer-Encoding: chunked")
            + b"32\r\n" + b"c" * 50 + b"\r\n33\r\n", 413, SMALL),
    Refused("chunk-over-default", CHUNKED_HEAD + b"40000001\r\n", 413),
    Refused("chunk-size-not-hex", CHUNKED_HEAD + b"xyz\r\n", 400),
    Refused("chunk-size-0x", CHUNKED_HEAD + b"0x5\r\nhello\r\n0\r\n\r\n", 400),
    Refused("chunk-size-plus", CHUNKED_HEAD + b"+5\r\nhello\r\n0\r\n\r\n", 400),
    Refused("chunk-size-leading-space", CHUNKED_HEAD + b" 5\r\nhello\r\n0\r\n\r\n", 400),
    Refused("chunk-size-empty", CHUNKED_HEAD + b"\r\n", 400),
    Refused("chunk-size-junk-after", CHUNKED_HEAD + b"5 x\r\nhello\r\n0\r\n\r\n", 400),
    Refused("chunk-size-bare-cr", CHUNKED_HEAD + b"5;a\rb\r\nhello\r\n0\r\n\r\n", 400),
    Refused("chunk-line-too-long", CHUNKED_HEAD + b"5;" + b"e" * 70 + b"\r\n", 413,
            HTTPLimits(max_line=64)),
    Refused("chunk-data-no-crlf", CHUNKED_HEAD + b"5\r\nhelloX\r\n0\r\n\r\n", 400),
    Refused("chunk-data-bare-lf", CHUNKED_HEAD + b"5\r\nhello\n0\r\n\r\n", 400),
    Refused("chunk-data-cr-only", CHUNKED_HEAD + b"5\r\nhello\r0\r\n\r\n", 400),
    Refused("trailer-no-colon", CHUNKED_HEAD + b"0\r\nnot a field\r\n\r\n", 400),
    Refused("trailer-obs-fold", CHUNKED_HEAD + b"0\r\nA: b\r\n c\r\n\r\n", 400),
    Refused("trailer-line-too-long", CHUNKED_HEAD + b"0\r\nT: " + b"t" * 70 + b"\r\n\r\n", 431,
            HTTPLimits(max_line=64)),
    Refused("trailers-too-many", head(b"POST / HTTP/1.1", b"Transfer-Encoding: chunked", b"A: 1", b"B: 2")
            + b"0\r\nC: 3\r\nD: 4\r\n\r\n", 431, SMALL),
    Refused("trailers-over-head", head(b"POST / HTTP/1.1", b"Transfer-Encoding: chunked")
            + b"0\r\nT: " + b"t" * 30 + b"\r\n\r\n", 431, HTTPLimits(max_head=80)),
    # Lines and heads over the limits.
    Refused("request-line-too-long", b"GET /" + b"a" * 50 + b" HTTP/1.1\r\n\r\n", 414, SMALL),
    Refused("request-line-too-long-default", b"GET /" + b"a" * 65536 + b" HTTP/1.1\r\n\r\n", 414),
    Refused("header-line-too-long", head(b"GET / HTTP/1.1", b"X: " + b"v" * 60), 431, SMALL),
    Refused("header-line-too-long-default", head(b"GET / HTTP/1.1", b"X: " + b"v" * 65534), 431),
    Refused("too-many-headers", head(b"GET / HTTP/1.1", b"A: 1", b"B: 2", b"C: 3", b"D: 4", b"E: 5"), 431, SMALL),
    Refused("too-many-headers-default", head(b"GET / HTTP/1.1", *[b"H%d: x" % i for i in range(101)]), 431),
    Refused("head-too-large", head(b"GET / HTTP/1.1", b"X: " + b"v" * 57, b"Y: " + b"v" * 57,
                                   b"Z: " + b"v" * 57), 431, HTTPLimits(max_head=203, max_line=64)),
    Refused("head-too-large-default", head(b"GET / HTTP/1.1", *[b"X: " + b"v" * 1000] * 66), 431),
    # Field lines a parser could read differently.
    Refused("obs-fold", head(b"GET / HTTP/1.1", b"X: a", b" b"), 400),
    Refused("obs-fold-tab", head(b"GET / HTTP/1.1", b"X: a", b"\tb"), 400),
    Refused("whitespace-before-first-field", head(b"GET / HTTP/1.1", b" X: a"), 400),
    Refused("space-before-colon", head(b"POST / HTTP/1.1", b"Content-Length : 5") + b"hello", 400),
    Refused("tab-before-colon", head(b"POST / HTTP/1.1", b"Transfer-Encoding\t: chunked"), 400),
    Refused("space-in-name", head(b"GET / HTTP/1.1", b"X Y: z"), 400),
    Refused("unix-from-line", head(b"GET / HTTP/1.1", b"From x: y"), 400),
    Refused("no-colon", head(b"GET / HTTP/1.1", b"NoColonHere"), 400),
    Refused("empty-name", head(b"GET / HTTP/1.1", b": value"), 400),
    Refused("non-token-name", head(b"GET / HTTP/1.1", b"X(y): z"), 400),
    Refused("obs-text-name", head(b"GET / HTTP/1.1", b"X\xe9: z"), 400),
    Refused("bare-cr-in-value", head(b"GET / HTTP/1.1", b"X: a\rContent-Length: 5") + b"hello", 400),
    Refused("cr-cr-lf", head(b"GET / HTTP/1.1", b"X: a\r"), 400),
    Refused("nul-in-value", head(b"GET / HTTP/1.1", b"X: a\x00b"), 400),
    Refused("vt-in-value", head(b"GET / HTTP/1.1", b"X: a\x0bb"), 400),
    Refused("bad-version-plus", head(b"GET / HTTP/+1.1"), 400),
    Refused("bad-version-11-digits", head(b"GET / HTTP/00000000001.1"), 400),
    Refused("bad-version-letters", head(b"GET / HTTP/a.b"), 400),
]


def ids(vectors: list[Valid] | list[Refused]) -> list[str]:
    return [vector.name for vector in vectors]


def test_vector_names_are_unique() -> None:
    assert len(set(ids(VALID))) == len(VALID)
    assert len(set(ids(REFUSED))) == len(REFUSED)


# ---------------------------------------------------------------- feeding helpers

def splits(data: bytes) -> Iterator[list[bytes]]:
    """Ways to cut ``data``: whole, in two at every byte, byte by byte, in random pieces."""
    yield [data]
    for cut in range(1, len(data)):
        yield [data[:cut], data[cut:]]
    yield [data[i:i + 1] for i in range(len(data))]
    rng = random.Random(len(data))
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 6)))) if len(data) > 1 else []
        edges = [0, *cuts, len(data)]
        yield [data[a:b] for a, b in zip(edges, edges[1:])]


def feed_pieces(boundary: HTTPRequestBoundary, pieces: list[bytes]) -> tuple[int, bytes]:
    """Feed pieces until the request completes; (bytes it took, the bytes left over)."""
    taken = 0
    for index, piece in enumerate(pieces):
        n = boundary.feed(piece)
        assert 0 <= n <= len(piece)
        taken += n
        assert boundary.received == taken
        if boundary.complete:
            return taken, piece[n:] + b"".join(pieces[index + 1:])
        assert n == len(piece), "fewer bytes taken although the request is not complete"
    return taken, b""


def check_valid(boundary: HTTPRequestBoundary, vector: Valid) -> None:
    assert boundary.complete and boundary.head_complete
    assert boundary.received == len(vector.data)
    assert boundary.head_length == vector.head_length
    assert boundary.body_length == vector.body_length
    assert boundary.chunked is vector.chunked
    assert boundary.expects_continue is vector.expects_continue
    if not vector.chunked:
        assert boundary.head_length + (boundary.body_length or 0) == boundary.received


# ---------------------------------------------------------------- valid requests

@pytest.mark.parametrize("vector", VALID, ids=ids(VALID))
def test_a_valid_request_ends_at_the_same_byte_however_it_is_split(vector: Valid) -> None:
    for pieces in splits(vector.data + NEXT):
        boundary = HTTPRequestBoundary(vector.limits)
        taken, rest = feed_pieces(boundary, pieces)
        assert taken == len(vector.data), pieces
        assert rest == NEXT
        check_valid(boundary, vector)
        assert boundary.feed(b"more") == 0 and boundary.received == len(vector.data)


@pytest.mark.parametrize("vector", VALID, ids=ids(VALID))
def test_a_valid_request_alone_is_complete_at_its_last_byte_and_not_before(vector: Valid) -> None:
    boundary = HTTPRequestBoundary(vector.limits)
    for index in range(len(vector.data)):
        assert not boundary.complete
        assert boundary.feed(vector.data[index:index + 1]) == 1
    check_valid(boundary, vector)


@pytest.mark.parametrize("vector", VALID, ids=ids(VALID))
def test_head_complete_comes_at_the_end_of_the_head(vector: Valid) -> None:
    boundary = HTTPRequestBoundary(vector.limits)
    assert boundary.body_length is None and boundary.head_length == 0
    assert boundary.feed(vector.data[:vector.head_length - 1]) == vector.head_length - 1
    assert not boundary.head_complete and boundary.body_length is None
    assert not boundary.expects_continue
    assert boundary.feed(vector.data[vector.head_length - 1:vector.head_length]) == 1
    assert boundary.head_complete and boundary.head_length == vector.head_length
    assert boundary.body_length == vector.body_length and boundary.chunked is vector.chunked
    assert boundary.expects_continue is vector.expects_continue


def test_pipelined_requests_are_told_apart_however_the_stream_is_cut() -> None:
    vectors = [vector for vector in VALID if vector.limits == HTTPLimits()]
    stream = b"".join(vector.data for vector in vectors)
    rng = random.Random(14)
    cuttings: list[list[bytes]] = [[stream], [stream[i:i + 1] for i in range(len(stream))]]
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 40)))
        edges = [0, *cuts, len(stream)]
        cuttings.append([stream[a:b] for a, b in zip(edges, edges[1:])])
    for pieces in cuttings:
        boundary = HTTPRequestBoundary()
        found: list[int] = []
        for piece in pieces:
            view = memoryview(piece)
            while view:
                n = boundary.feed(view)
                view = view[n:]
                if boundary.complete:
                    found.append(boundary.received)
                    boundary.reset()
        assert found == [len(vector.data) for vector in vectors]
        assert boundary.received == 0


def test_feed_takes_bytes_bytearrays_and_memoryviews_of_any_format() -> None:
    body = array.array("H", [0x4142] * 8)  # 16 bytes in 8 items
    data = head(b"POST / HTTP/1.1", b"Content-Length: 16")
    boundary = HTTPRequestBoundary()
    assert boundary.feed(bytearray(data)) == len(data)
    assert boundary.feed(memoryview(body)) == 16
    assert boundary.complete and boundary.received == len(data) + 16


def test_empty_feeds_change_nothing() -> None:
    boundary = HTTPRequestBoundary()
    assert boundary.feed(b"") == 0
    assert boundary.feed(b"GET / HTTP/1.1\r") == 15
    assert boundary.feed(b"") == 0 and boundary.received == 15
    assert boundary.feed(b"\n\r") == 2 and not boundary.head_complete
    assert boundary.feed(b"\n") == 1 and boundary.complete


def test_reset_starts_a_new_request_after_completion_and_midway() -> None:
    boundary = HTTPRequestBoundary()
    assert boundary.feed(POST + GET) == len(POST)
    boundary.reset()
    assert (boundary.complete, boundary.head_complete, boundary.received) == (False, False, 0)
    assert (boundary.head_length, boundary.body_length, boundary.chunked) == (0, None, False)
    assert boundary.feed(CHUNKED_HEAD + b"5\r\nhel") == len(CHUNKED_HEAD) + 6
    assert boundary.chunked and boundary.head_complete
    boundary.reset()  # midway: the partial chunk is forgotten
    assert not boundary.chunked
    assert boundary.feed(b"GET / HTTP/1.1\r\nX: partial li") == 29
    boundary.reset()  # inside a line: the partial line is forgotten
    assert boundary.feed(GET) == len(GET) and boundary.complete
    assert boundary.head_length == len(GET) and boundary.body_length == 0


def test_received_counts_partial_lines_and_body_bytes() -> None:
    boundary = HTTPRequestBoundary()
    assert boundary.feed(POST[:10]) == 10 and boundary.received == 10
    assert boundary.feed(POST[10:-4]) == len(POST) - 14 and boundary.received == len(POST) - 4
    assert boundary.head_complete and not boundary.complete and boundary.body_length == 11
    assert boundary.feed(POST[-4:]) == 4 and boundary.complete


def test_the_default_limits_are_the_stdlib_ones() -> None:
    limits = HTTPLimits()
    assert (limits.max_head, limits.max_headers, limits.max_line, limits.max_body) == (65536, 100, 65536, 1 << 30)
    assert limits.max_line == http.client._MAXLINE
    assert limits.max_headers == http.client._MAXHEADERS
    with pytest.raises(ValueError):
        HTTPLimits(max_line=0)
    with pytest.raises(ValueError):
        HTTPLimits(max_body=-1)
    # A line of 65536 bytes, terminator included, passes http.server and the boundary alike
    # (the head it starts is over the default max_head with its blank line).
    line = b"GET /" + b"a" * (65536 - 16) + b" HTTP/1.1\r\n"
    assert len(line) == 65536
    boundary = HTTPRequestBoundary(HTTPLimits(max_head=1 << 20))
    assert boundary.feed(line + b"\r\n") == 65538 and boundary.complete
    assert stdlib_consumes(line + b"\r\n" + NEXT) == (65538, 200)


def test_unlimited_bodies() -> None:
    boundary = HTTPRequestBoundary(HTTPLimits(max_body=None))
    data = head(b"POST / HTTP/1.1", b"Content-Length: 9223372036854775807")
    assert boundary.feed(data) == len(data) and boundary.body_length == (1 << 63) - 1
    boundary = HTTPRequestBoundary(HTTPLimits(max_body=None))
    assert boundary.feed(CHUNKED_HEAD + b"FFFFFFFFFFFFFFFF\r\n" * 1) == len(CHUNKED_HEAD) + 18


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("vector", REFUSED, ids=ids(REFUSED))
def test_a_refused_request_is_refused_with_its_status_however_it_is_split(vector: Refused) -> None:
    # The huge default-limit vectors are cut in fewer ways (byte by byte is quadratic here, not in the boundary).
    cuttings = splits(vector.data) if len(vector.data) < 1000 else iter(
        [[vector.data], [vector.data[:7], vector.data[7:]], [vector.data[i:i + 999] for i in range(0, len(vector.data), 999)]])
    for pieces in cuttings:
        boundary = HTTPRequestBoundary(vector.limits)
        with pytest.raises(RequestRefused) as raised:
            feed_pieces(boundary, pieces + [NEXT])
        assert raised.value.status == vector.status, (pieces, raised.value)
        assert raised.value.reason and str(raised.value).startswith(str(vector.status))
        assert not boundary.complete


def test_a_refusal_sticks_until_reset() -> None:
    boundary = HTTPRequestBoundary()
    with pytest.raises(RequestRefused) as first:
        boundary.feed(head(b"POST / HTTP/1.1", b"Content-Length: 1", b"Content-Length: 2"))
    with pytest.raises(RequestRefused) as again:
        boundary.feed(b"x")
    assert again.value is first.value
    boundary.reset()
    assert boundary.feed(GET) == len(GET) and boundary.complete


def test_a_refused_request_is_refused_as_soon_as_it_is_known() -> None:
    # Oversized lines and heads fail when the limit is crossed, not when the line ends.
    boundary = HTTPRequestBoundary(SMALL)
    with pytest.raises(RequestRefused) as raised:
        for _ in range(64):
            boundary.feed(b"a")
    assert raised.value.status == 414
    boundary = HTTPRequestBoundary(HTTPLimits(max_head=40))
    boundary.feed(b"GET / HTTP/1.1\r\nX: 0123456789")
    boundary.feed(b"0123456789")  # 39 bytes of head so far
    with pytest.raises(RequestRefused) as raised:
        boundary.feed(b"01")
    assert raised.value.status == 431
    # A body that is too large is refused at the end of the head, before any of it.
    boundary = HTTPRequestBoundary(SMALL)
    with pytest.raises(RequestRefused):
        boundary.feed(head(b"POST / HTTP/1.1", b"Content-Length: 101"))


@pytest.mark.parametrize("line", [
    b"X: a\rContent-Length: 5",   # email.parser splits at a bare CR: the handler would see a length
    b"NoColon",                   # ... takes this line for the body: fields after it vanish
    b"Content-Length : 0",        # ... and this one
    b"X\xe9: z",                  # ... and this one
])
def test_the_refused_field_lines_are_ones_the_stdlib_reads_differently(line: bytes) -> None:
    raw = b"X-First: 1\r\n" + line + b"\r\nContent-Length: 5\r\n\r\n"
    seen = http.client.parse_headers(io.BytesIO(raw)).get_all("Content-Length") or []
    assert seen != ["5"]
    boundary = HTTPRequestBoundary()
    with pytest.raises(RequestRefused) as raised:
        boundary.feed(b"POST / HTTP/1.1\r\n" + raw + b"hello")
    assert raised.value.status == 400


def test_refused_is_an_exception_with_status_and_reason() -> None:
    refusal = RequestRefused(431, "too many header fields")
    assert isinstance(refusal, Exception)
    assert (refusal.status, refusal.reason, str(refusal)) == (431, "too many header fields", "431 too many header fields")


# ---------------------------------------------------------------- bounded state, linear work

def held_bytes(boundary: HTTPRequestBoundary) -> int:
    """The largest bytes-like object the boundary holds (its whole state, slot by slot)."""
    largest = 0
    for cls in type(boundary).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            value = getattr(boundary, slot, None)
            if isinstance(value, (bytes, bytearray, memoryview)):
                largest = max(largest, len(value))
            else:
                assert isinstance(value, (int, bool, tuple, HTTPLimits, RequestRefused, type(None))), slot
    assert not hasattr(boundary, "__dict__")
    return largest


class CountingLF:
    """Stands in for the boundary's LF pattern, adding up the bytes each search looks at."""

    def __init__(self) -> None:
        self.scanned = 0

    def search(self, data: bytes | bytearray | memoryview, pos: int, endpos: int) -> object:
        match = re.compile(rb"\n").search(data, pos, endpos)
        self.scanned += (match.end() if match else endpos) - pos
        return match


def test_a_large_body_is_counted_in_big_slices_without_being_held(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = CountingLF()
    monkeypatch.setattr(http_boundary, "_LF", counter)
    limits = HTTPLimits(max_body=None)
    slice_ = memoryview(b"b" * (1 << 20))
    size = 64 << 20
    data = head(b"POST / HTTP/1.1", b"Content-Length: %d" % size)
    boundary = HTTPRequestBoundary(limits)
    assert boundary.feed(data) == len(data)
    for _ in range(size >> 20):
        assert boundary.feed(slice_) == len(slice_)
        assert held_bytes(boundary) <= limits.max_line
    assert boundary.complete and boundary.received == len(data) + size
    assert counter.scanned == len(data), "body bytes are counted, never searched"


def test_a_large_chunked_body_is_searched_once_and_never_held(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = CountingLF()
    monkeypatch.setattr(http_boundary, "_LF", counter)
    chunk = b"10000;ext=" + b"e" * 100 + b"\r\n" + b"c" * 0x10000 + b"\r\n"
    stream = CHUNKED_HEAD + chunk * 256 + b"0\r\n" + b"T: v\r\n" * 50 + b"\r\n"
    boundary = HTTPRequestBoundary()
    view = memoryview(stream)
    for start in range(0, len(stream), 100_003):
        assert boundary.feed(view[start:start + 100_003]) == len(view[start:start + 100_003])
        assert held_bytes(boundary) <= HTTPLimits().max_line
    assert boundary.complete and boundary.received == len(stream)
    lines = len(CHUNKED_HEAD) + 256 * 112 + 3 + 50 * 6 + 2
    assert counter.scanned == lines, "every line byte is searched once, no data byte is"


def test_a_long_line_fed_byte_by_byte_is_searched_once(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = CountingLF()
    monkeypatch.setattr(http_boundary, "_LF", counter)
    data = head(b"GET / HTTP/1.1", b"X: " + b"v" * 60000)
    boundary = HTTPRequestBoundary()
    for index in range(len(data)):
        boundary.feed(data[index:index + 1])
        assert held_bytes(boundary) <= HTTPLimits().max_line
    assert boundary.complete and counter.scanned == len(data)
    assert held_bytes(boundary) == 0


# ---------------------------------------------------------------- the stdlib agrees

class Handler(http.server.BaseHTTPRequestHandler):
    """An unmodified http.server handler that reads its body by Content-Length."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


def stdlib_consumes(raw: bytes) -> tuple[int, int | None]:
    """Run one handle_one_request over ``raw`` as http.server would: (bytes it read, status it sent).

    The status is 0 for a reply without a status line (HTTP/0.9 style, which http.server
    also uses for errors found before it knows the version), None for no reply at all.
    """
    handler = Handler.__new__(Handler)  # the pieces StreamRequestHandler.setup makes, without a socket
    handler.rfile = io.BytesIO(raw)
    handler.wfile = io.BytesIO()
    handler.client_address = ("192.0.2.1", 1234)
    handler.close_connection = True
    handler.handle_one_request()
    reply = handler.wfile.getvalue()
    status: int | None = 0 if reply else None
    for line in reply.split(b"\r\n"):
        if line.startswith(b"HTTP/"):
            status = int(line.split()[1])
            if status != 100:
                break
    return handler.rfile.tell(), status


CROSS_CHECKED = ["get", "get-http10", "get-bare-lf", "get-mixed-endings", "get-tabs-in-request-line",
                 "get-obs-text-value", "get-version-with-zeros", "post", "post-zero-length",
                 "post-same-length-twice", "post-expect", "post-expect-no-body", "post-expect-http10",
                 "http09-post", "one-word", "four-words", "not-http-version", "http2-version",
                 "empty-line", "empty-bare-lf", "spaces-only"]


@pytest.mark.parametrize("name", CROSS_CHECKED)
def test_http_server_consumes_what_the_boundary_says(name: str) -> None:
    vector = next(vector for vector in VALID if vector.name == name)
    boundary = HTTPRequestBoundary()
    assert boundary.feed(vector.data + NEXT) == len(vector.data)
    consumed, status = stdlib_consumes(vector.data + NEXT)
    assert consumed == len(vector.data), status
    # Given exactly the request's bytes, the handler reads them all and answers without waiting.
    consumed, status = stdlib_consumes(vector.data)
    assert consumed == len(vector.data)
    assert status is not None or not vector.data.strip()  # an empty line is closed on without a reply


def test_http_server_reads_headers_after_an_http09_line() -> None:
    # http.server calls parse_headers even after a two-word "GET /", so the boundary
    # reads them too: a request ending at the line would leave the handler waiting on
    # the client for header lines (a slowloris that holds a worker).
    assert stdlib_consumes(b"GET /\r\n" + NEXT)[0] > 7
    assert stdlib_consumes(b"GET /\r\nHost: x\r\n\r\n" + NEXT)[0] == 18


@pytest.mark.parametrize("name", ["chunked", "chunked-expect", "chunked-bare-lf-lines", "chunked-two-fields",
                                  "chunks-at-limit"])
def test_http_client_consumes_the_chunked_body_the_boundary_says(name: str) -> None:
    vector = next(vector for vector in VALID if vector.name == name)
    body = vector.data[vector.head_length:]
    response_head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"

    class Unclosable(io.BytesIO):
        def close(self) -> None:
            pass

    stream = Unclosable(response_head + body + NEXT)

    class Sock:
        def makefile(self, mode: str) -> io.BytesIO:
            return stream

    response = http.client.HTTPResponse(Sock())  # type: ignore[arg-type]
    response.begin()
    response.read()
    assert stream.tell() - len(response_head) == len(body)


def test_http_server_refuses_the_limits_it_shares_with_the_boundary() -> None:
    # The boundary refuses where the stdlib would (414 and 431 over 65536-byte lines).
    line = b"GET /" + b"a" * 65536 + b" HTTP/1.1\r\n\r\n"
    assert stdlib_consumes(line)[1] == 414
    fields = head(b"GET / HTTP/1.1", b"X: " + b"v" * 65534)
    assert stdlib_consumes(fields)[1] == 431
    assert stdlib_consumes(head(b"GET / HTTP/1.1", *[b"H%d: x" % i for i in range(101)]))[1] == 431


def test_sizes_of_python_objects_stay_small() -> None:
    boundary = HTTPRequestBoundary()
    boundary.feed(b"GET / HTTP/1.1\r\nX: " + b"v" * 30000)
    assert held_bytes(boundary) == len(b"X: ") + 30000
    assert sys.getsizeof(boundary) < 512


SIMPLE_HEADS = [
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET /a?b=c HTTP/1.0\r\nHost: x\r\n\r\n",
    b"DELETE /x HTTP/1.1\r\nHost: x\r\nX-Tab:\tv\r\nX-Obs: caf\xe9\r\nAccept: */*\r\n\r\n",
    b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
    # Not simple: each must take the line-by-line path and come out the same.
    b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    b"GET / HTTP/1.1\r\nhost: x\nA: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nEXPECT: 100-continue\r\n\r\n",
]


@pytest.mark.parametrize("data", SIMPLE_HEADS)
@pytest.mark.parametrize("limits", [HTTPLimits(), HTTPLimits(max_headers=2), HTTPLimits(max_head=30),
                                    HTTPLimits(max_line=25)])
def test_a_whole_simple_head_reads_as_it_does_line_by_line(data: bytes, limits: HTTPLimits) -> None:
    """The whole-head shortcut and the byte-by-byte path agree on every outcome and property."""
    def outcome(chunks: list[bytes]) -> tuple[object, ...]:
        boundary = HTTPRequestBoundary(limits)
        try:
            consumed = sum(boundary.feed(chunk) for chunk in chunks)
        except RequestRefused as exc:
            return ("refused", exc.status)
        return (consumed, boundary.complete, boundary.head_complete, boundary.head_length,
                boundary.body_length, boundary.received, boundary.expects_continue)

    assert outcome([data + b"GET /next HTTP/1.1\r\n"]) == \
        outcome([data[i:i + 1] for i in range(len(data))] + [b"GET /next HTTP/1.1\r\n"])

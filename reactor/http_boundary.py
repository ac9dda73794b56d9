"""A sans-IO finder of where one HTTP/1.x request ends in a byte stream, and what it must not be.

The reactor's loop reads a whole request before a worker thread runs an
unmodified ``http.server.BaseHTTPRequestHandler`` on it (issue 14). The loop
feeds the bytes it reads to an :class:`HTTPRequestBoundary`; ``feed`` answers
how many of them belong to the current request, and :attr:`~HTTPRequestBoundary.complete`
says when the request (head, body by ``Content-Length`` or chunked, trailers)
is whole. A request that must not reach the handler raises :class:`RequestRefused`
with the status to answer before closing. It does no I/O, keeps no clock and holds
no request bytes beyond one partial line: the caller owns the socket, the bytes,
the deadlines and the spooling.

Theory of operation
-------------------

1. **The handler is the reference.** Where ``http.server`` would read a line,
   so does the boundary: lines end at LF (CRLF or bare LF, as ``readline``), the
   request line is split into words exactly as ``parse_request`` splits it, and
   headers follow it only when ``parse_request`` would read them. A request line
   the handler answers by itself (empty, garbage, a bad version, HTTP/2+) is a
   whole request ending with that line; a two-word HTTP/0.9 ``GET /`` is
   followed by headers up to an empty line, because ``parse_request`` reads them.
2. **Refuse what would make the boundary and a parser disagree.** A header line
   that ``email.parser`` (behind ``http.client.parse_headers``) would split
   differently or take for the start of the body -- a bare CR, a control byte, no
   colon, whitespace or a non-token byte in the field name, obs-fold -- is a 400,
   as are the body framing shapes RFC 9112 section 6 calls unreliable (both
   ``Content-Length`` and ``Transfer-Encoding``, differing lengths, chunked not
   last or twice, a malformed chunk size or a chunk not followed by CRLF).
3. **Limits are the stdlib's**, checked as soon as they are crossed: a line of
   more than ``max_line`` bytes (terminator included) is a 414 for the request
   line and a 431 for a header or trailer line, as ``http.server`` says; more than
   ``max_headers`` fields or ``max_head`` bytes of head is a 431; a body over
   ``max_body`` is a 413, known from ``Content-Length`` before a body byte comes,
   and from each chunk size before its data.
4. **O(n), O(max_line).** Only a line still missing its LF is kept between feeds
   (at most ``max_line`` bytes); each byte is searched once, from where the last
   search stopped, and body bytes are only counted.

Interpretations, where the brief or the RFC leaves room:

* ``body_length`` is ``None`` until the head is complete and for chunked
  requests; otherwise it is the declared ``Content-Length``, or 0 when the request
  has no body (no ``Content-Length`` and no ``Transfer-Encoding``, or a request
  line alone), so that ``head_length + body_length == received`` once complete.
* A three-word request line whose last word starts with ``HTTP/`` but is not
  ``HTTP/`` 1-10 ASCII digits ``.`` 1-10 ASCII digits is refused (400): Python
  3.10 reads headers after ``HTTP/+1.1`` or ``HTTP/00000000001.1`` and 3.12 does
  not, so the boundary refuses rather than guess which one hosts the handler.
* A ``Content-Length`` of 2**63 or more is a 413 even with ``max_body=None``
  (other HTTP stacks overflow there); a chunk size counts its significant hex
  digits (leading zeros aside) against the limit of 16.
* A chunk-size line over ``max_line`` is a 413 (it is part of the content); BWS
  may follow the hex digits; extensions are not parsed beyond having no control
  bytes. The trailer section (field lines, not the final empty line) counts
  toward ``max_head`` and its fields toward ``max_headers``, and trailer lines
  obey the rules of header lines.
* ``Transfer-Encoding``: empty list elements are ignored; ``chunked`` with
  parameters, ``chunked`` twice or not last, or a list with no coding is a 400;
  a final coding other than ``chunked`` is a 501 (RFC 9112 section 6.1: an
  unknown coding), since an HTTP/1.0 request with any ``Transfer-Encoding`` is
  already a 400.
* ``Expect: 100-continue`` (whole value, case-insensitive, surrounding
  whitespace ignored) counts on an HTTP/1.1-or-later request whose body is chunked
  or has a positive ``Content-Length``.
* After a refusal the boundary raises the same refusal on every feed until
  :meth:`~HTTPRequestBoundary.reset`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["RequestRefused", "HTTPLimits", "HTTPRequestBoundary"]

_LF = re.compile(rb"\n")
# Bytes no field line, chunk-size line or extension may hold: CTLs but HT
# (RFC 9110 section 5.5). A bare CR is among them: email.parser splits on it.
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 9110 section 5.6.2: token = 1*tchar.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_DIGITS = re.compile(rb"[0-9]+")
_HEXDIGITS = re.compile(rb"[0-9A-Fa-f]+")
# What http.server reads headers after: "HTTP/" and two dot-separated numbers of at most
# 10 digits (the bound Python 3.12 enforces), ASCII digits only.
_STRICT_VERSION = re.compile(r"HTTP/([0-9]{1,10})\.([0-9]{1,10})", re.ASCII)
_OWS = b" \t"

# A whole head that needs no line-by-line look (most requests): "METHOD SP target SP
# HTTP/1.x", field lines "token:value" without CTLs but HT, CRLF endings. Any head it
# matches, the line-by-line path accepts with the same result; anything else goes there.
_SIMPLE_HEAD = re.compile(
    rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [!-~]+ HTTP/1\.([01])\r\n"
    rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*\r\n")
# Fields that decide the body's framing (the simple path leaves those heads to the other).
_FRAMING_FIELD = re.compile(rb"\n(?:content-length|transfer-encoding|expect):", re.IGNORECASE)

_MAX_CHUNK_DIGITS = 16
# Lengths of 2**63 and more overflow the off_t of other stacks: a smuggling shape.
_MAX_CONTENT_LENGTH = (1 << 63) - 1

# States: reading the request line, header lines, counting Content-Length body bytes,
# a chunk-size line, chunk data, the CR and the LF after it, trailer lines; done.
_REQUEST_LINE, _HEADERS, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CR, _CHUNK_LF, _TRAILERS, _DONE = range(9)
_LINE_STATES = frozenset((_REQUEST_LINE, _HEADERS, _CHUNK_SIZE, _TRAILERS))


class RequestRefused(Exception):
    """The request must not reach the handler: answer ``status`` and close.

    Attributes:
        status: 400, 413, 414, 431 or 501.
        reason: a short human phrase for the log and the response body.
    """

    status: int
    reason: str

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


@dataclass(frozen=True)
class HTTPLimits:
    """What one request may hold before it is refused.

    Attributes:
        max_head: bytes from the request line through the blank line (and, for a
            chunked request, the trailer fields); beyond: 431.
        max_headers: header fields (trailer fields included); beyond: 431.
            ``http.client``'s own limit counts the blank line too, so a handler
            refuses 100 fields itself.
        max_line: bytes of one request, header, trailer or chunk-size line, its
            terminator included (``http.server`` reads 65537 and refuses beyond
            65536); beyond: 414 for the request line, 431 for a field, 413 for a
            chunk-size line.
        max_body: declared or received body bytes (``Content-Length``, or the sum
            of the chunk sizes); beyond: 413. ``None``: unlimited.
    """

    max_head: int = 65536
    max_headers: int = 100
    max_line: int = 65536
    max_body: int | None = 1 << 30

    def __post_init__(self) -> None:
        for name in ("max_head", "max_headers", "max_line"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_body is not None and self.max_body < 0:
            raise ValueError("max_body must be None or at least 0")


def _field(line: bytes) -> tuple[bytes, bytes]:
    """The lowercased name and OWS-stripped value of one field line (terminator removed).

    Raises RequestRefused (400) for a line the stdlib's email parser would read
    differently from RFC 9112, or not as a field at all.
    """
    if line[:1] in (b" ", b"\t"):
        # obs-fold (or whitespace before the first field): email.parser glues it to the
        # previous field, other parsers do not.
        raise RequestRefused(400, "obsolete line folding")
    if _CTL.search(line):
        raise RequestRefused(400, "control character in a field line")
    colon = line.find(b":")
    if colon < 0:
        # email.parser would take this line for the start of the body, hiding every
        # field after it from the handler.
        raise RequestRefused(400, "field line without a colon")
    name = line[:colon]
    if not name:
        raise RequestRefused(400, "empty field name")
    if name[-1:] in (b" ", b"\t"):
        raise RequestRefused(400, "whitespace before the colon")  # RFC 9112 section 5.1
    if not _TOKEN.fullmatch(name):
        raise RequestRefused(400, "invalid field name")
    return name.lower(), line[colon + 1:].strip(_OWS)


def _request_line_version(line: bytes) -> tuple[int, int] | None:
    """The HTTP version after which http.server reads headers, or None when it reads none.

    ``line`` is the raw request line, terminator included.
    """
    # Exactly what BaseHTTPRequestHandler.parse_request does, so both agree on
    # whether headers follow (str.split also splits on \x1c-\x1f, \x85, \xa0).
    words = str(line, "iso-8859-1").rstrip("\r\n").split()
    if len(words) == 2 and words[0] == "GET":
        # HTTP/0.9 says no headers follow, but parse_request reads them anyway: a
        # request ending at this line would leave the handler waiting on the client.
        return (0, 9)
    if len(words) != 3 or not words[-1].startswith("HTTP/"):
        return None  # the handler answers by itself (or serves HTTP/0.9) without reading on
    match = _STRICT_VERSION.fullmatch(words[-1])
    if match is None:
        if len(words[-1].split(".")) == 2:
            # Python 3.10 and 3.11 read headers after what int() accepts ("HTTP/+1.1",
            # "HTTP/1_0.1", eleven digits); 3.12 answers 400. Refuse instead of guessing.
            raise RequestRefused(400, "bad HTTP version")
        return None
    version = int(match[1]), int(match[2])
    return version if version < (2, 0) else None  # the handler answers 505 itself


class HTTPRequestBoundary:
    """Finds where one HTTP/1.x request ends in a byte stream, without holding the bytes.

    Args:
        limits: what a request may hold before it is refused.

    Thread-safety: none; one boundary belongs to one connection's reading side.
    """

    __slots__ = (
        "_limits", "_state", "_refused", "_received", "_partial",
        # the head: bytes of its complete lines, its length once complete, the version
        # when headers follow, the fields counted (trailers too), trailer bytes
        "_head_bytes", "_head_length", "_version", "_fields", "_trailer_bytes",
        # framing seen in the head: Content-Length (None: absent), Transfer-Encoding
        # present, its codings counted, its last coding, "chunked" seen, Expect
        "_content_length", "_te", "_te_codings", "_te_last", "_te_chunked", "_expect",
        # the body: length (see body_length), chunked, bytes still due in this
        # Content-Length body or chunk, sum of the chunk sizes
        "_body_length", "_chunked", "_remaining", "_chunk_sum",
    )

    def __init__(self, limits: HTTPLimits = HTTPLimits()) -> None:
        self._limits = limits
        self._partial = bytearray()
        self.reset()

    def reset(self) -> None:
        """Start on the next request (after complete, or to reuse)."""
        self._state = _REQUEST_LINE
        self._refused: RequestRefused | None = None
        self._received = 0
        # A fresh buffer: clear() could keep a large allocation alive.
        if self._partial:
            self._partial = bytearray()
        self._head_bytes = 0
        self._head_length = 0
        self._version: tuple[int, int] | None = None
        self._fields = 0
        self._trailer_bytes = 0
        self._content_length: int | None = None
        self._te = False
        self._te_codings = 0
        self._te_last = b""
        self._te_chunked = 0
        self._expect = False
        self._body_length: int | None = None
        self._chunked = False
        self._remaining = 0
        self._chunk_sum = 0

    # ------------------------------------------------------------ what is known

    @property
    def limits(self) -> HTTPLimits:
        """The limits given."""
        return self._limits

    @property
    def head_complete(self) -> bool:
        """The blank line after the headers has been seen (or the request line stands alone)."""
        return self._state not in (_REQUEST_LINE, _HEADERS)

    @property
    def complete(self) -> bool:
        """Head and whole body (and chunked trailers) seen."""
        return self._state == _DONE

    @property
    def head_length(self) -> int:
        """Bytes of request line + headers + blank line; 0 until :attr:`head_complete`."""
        return self._head_length

    @property
    def body_length(self) -> int | None:
        """Content-Length when declared, 0 when there is no body; None for chunked or before the head is complete."""
        return self._body_length

    @property
    def chunked(self) -> bool:
        """The body is chunked (known once :attr:`head_complete`)."""
        return self._chunked

    @property
    def expects_continue(self) -> bool:
        """An HTTP/1.1 request with ``Expect: 100-continue`` and a body to come."""
        return self._expect and self.head_complete and (self._chunked or bool(self._body_length))

    @property
    def received(self) -> int:
        """Bytes of this request consumed so far."""
        return self._received

    # ------------------------------------------------------------ feeding

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """Consume the bytes of the current request from the start of ``data``; return how many belong to it.

        Fewer than ``len(data)`` only when the request completed inside ``data``: the
        rest is the start of the next request. Calling feed after completion returns 0.

        Raises:
            RequestRefused: the request must not reach the handler; raised again by
                every later feed until :meth:`reset`.
        """
        if self._refused is not None:
            raise self._refused
        if not isinstance(data, (bytes, bytearray)):
            data = memoryview(data).cast("B")  # counts in bytes whatever the format
        if self._state == _REQUEST_LINE and not self._partial:
            simple = self._simple_head(data)
            if simple:
                return simple
        end = len(data)
        pos = 0
        try:
            while pos < end and self._state != _DONE:
                state = self._state
                if state in _LINE_STATES:
                    pos = self._feed_line(data, pos, end)
                elif state == _BODY or state == _CHUNK_DATA:
                    # Body bytes are counted, never looked at.
                    take = min(self._remaining, end - pos)
                    pos += take
                    self._remaining -= take
                    if not self._remaining:
                        self._state = _DONE if state == _BODY else _CHUNK_CR
                elif state == _CHUNK_CR:
                    if data[pos] != 0x0D:
                        raise RequestRefused(400, "chunk data not followed by CRLF")
                    pos += 1
                    self._state = _CHUNK_LF
                else:  # _CHUNK_LF
                    if data[pos] != 0x0A:
                        raise RequestRefused(400, "chunk data not followed by CRLF")
                    pos += 1
                    self._state = _CHUNK_SIZE
        except RequestRefused as refusal:
            self._refused = refusal
            raise
        self._received += pos
        return pos

    def _simple_head(self, data: bytes | bytearray | memoryview) -> int:
        """The length of a whole, simple, bodiless head at the start of ``data`` (the
        request is then complete), or 0 to read it line by line."""
        match = _SIMPLE_HEAD.match(data)
        if match is None:
            return 0
        length = match.end()
        limits = self._limits
        if length > limits.max_head or length > limits.max_line:
            return 0
        head = data[:length]
        fields = bytes(head).count(b"\n") - 2
        if fields > limits.max_headers or _FRAMING_FIELD.search(head):
            return 0
        self._version = (1, int(match[1]))
        self._head_bytes = self._head_length = self._received = length
        self._fields = fields
        self._body_length = 0
        self._state = _DONE
        return length

    def _feed_line(self, data: bytes | bytearray | memoryview, pos: int, end: int) -> int:
        """Take bytes up to the end of the current line (or of ``data``); return the new position."""
        partial = self._partial
        # The LF must fall within max_line bytes of the line's start: look no further.
        room = self._limits.max_line - len(partial)
        match = _LF.search(data, pos, min(end, pos + room))
        if match is None:
            if end - pos >= room:
                self._line_too_long()
            partial += data[pos:end]
            if self._state in (_REQUEST_LINE, _HEADERS) and self._head_bytes + len(partial) > self._limits.max_head:
                raise RequestRefused(431, "request head too large")
            return end
        stop = match.end()
        if partial:
            partial += data[pos:stop]
            line = bytes(partial)
            self._partial = bytearray()
        else:
            line = bytes(data[pos:stop])
        self._line(line)
        return stop

    def _line_too_long(self) -> None:
        if self._state == _REQUEST_LINE:
            raise RequestRefused(414, "request line too long")
        if self._state == _CHUNK_SIZE:
            raise RequestRefused(413, "chunk-size line too long")
        raise RequestRefused(431, "header line too long")

    def _line(self, line: bytes) -> None:
        """One whole line, terminator included, in a line state."""
        state = self._state
        # The terminator is LF, with the CR before it if any (http.server's readline).
        content = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        if state == _REQUEST_LINE:
            self._head_bytes = len(line)
            if self._head_bytes > self._limits.max_head:
                raise RequestRefused(431, "request head too large")
            self._version = _request_line_version(line)
            if self._version is None:
                self._end_of_head()
            else:
                self._state = _HEADERS
        elif state == _HEADERS:
            self._head_bytes += len(line)
            if self._head_bytes > self._limits.max_head:
                raise RequestRefused(431, "request head too large")
            if content:
                self._header(*self._count(content))
            else:
                self._end_of_head()
        elif state == _CHUNK_SIZE:
            self._chunk_size(content)
        elif content:  # _TRAILERS: a field line
            self._trailer_bytes += len(line)
            if self._head_length + self._trailer_bytes > self._limits.max_head:
                raise RequestRefused(431, "request head too large")
            self._count(content)
        else:
            self._state = _DONE

    def _count(self, content: bytes) -> tuple[bytes, bytes]:
        """Check and count one header or trailer field line; its name and value."""
        self._fields += 1
        if self._fields > self._limits.max_headers:
            raise RequestRefused(431, "too many header fields")
        return _field(content)

    # ------------------------------------------------------------ the head

    def _header(self, name: bytes, value: bytes) -> None:
        """Note what a header field says about the body's framing."""
        if name == b"content-length":
            lengths = {_content_length(element) for element in value.split(b",")}
            if len(lengths) > 1 or (self._content_length is not None and self._content_length not in lengths):
                raise RequestRefused(400, "conflicting Content-Length values")
            self._content_length = lengths.pop()
        elif name == b"transfer-encoding":
            self._te = True
            for element in value.split(b","):
                coding = element.strip(_OWS)
                if not coding:
                    continue  # RFC 9110 section 5.6.1: empty list elements are ignored
                coding_name = coding.split(b";", 1)[0].rstrip(_OWS)
                if not _TOKEN.fullmatch(coding_name):
                    raise RequestRefused(400, "malformed Transfer-Encoding")
                self._te_codings += 1
                self._te_last = coding.lower()
                if coding_name.lower() == b"chunked":
                    if self._te_last != b"chunked":
                        raise RequestRefused(400, "chunked with parameters")
                    self._te_chunked += 1
        elif name == b"expect":
            if value.lower() == b"100-continue":
                self._expect = True

    def _end_of_head(self) -> None:
        """The head is whole: decide the body's framing (RFC 9112 section 6)."""
        self._head_length = self._head_bytes
        version = self._version
        if self._te:
            if self._content_length is not None:
                raise RequestRefused(400, "both Content-Length and Transfer-Encoding")
            if version is None or version < (1, 1):
                raise RequestRefused(400, "Transfer-Encoding in an HTTP/1.0 request")
            if not self._te_codings:
                raise RequestRefused(400, "empty Transfer-Encoding")
            if self._te_chunked > 1 or (self._te_chunked and self._te_last != b"chunked"):
                raise RequestRefused(400, "chunked is not the final transfer coding")
            if self._te_last != b"chunked":
                raise RequestRefused(501, "unsupported transfer coding")
            self._chunked = True
            self._state = _CHUNK_SIZE
            self._expect = self._expect and version >= (1, 1)
            return
        length = self._content_length or 0
        max_body = self._limits.max_body
        if length > _MAX_CONTENT_LENGTH or (max_body is not None and length > max_body):
            raise RequestRefused(413, "request body too large")
        self._body_length = length
        self._remaining = length
        self._expect = self._expect and version is not None and version >= (1, 1)
        self._state = _BODY if length else _DONE

    # ------------------------------------------------------------ chunked

    def _chunk_size(self, content: bytes) -> None:
        """One chunk-size line (terminator removed): chunk-size [ BWS ";" chunk-ext ]."""
        match = _HEXDIGITS.match(content)
        if match is None or _CTL.search(content):
            raise RequestRefused(400, "malformed chunk size")
        rest = content[match.end():].lstrip(_OWS)
        if rest and rest[:1] != b";":
            raise RequestRefused(400, "malformed chunk size")
        digits = match[0].lstrip(b"0")
        if len(digits) > _MAX_CHUNK_DIGITS:
            raise RequestRefused(413, "chunk size too large")
        size = int(digits, 16) if digits else 0
        self._chunk_sum += size
        max_body = self._limits.max_body
        if max_body is not None and self._chunk_sum > max_body:
            raise RequestRefused(413, "request body too large")
        if size:
            self._remaining = size
            self._state = _CHUNK_DATA
        else:
            self._state = _TRAILERS


def _content_length(element: bytes) -> int:
    """One element of a Content-Length value: 1*DIGIT between optional whitespace."""
    digits = element.strip(_OWS)
    if not _DIGITS.fullmatch(digits):
        raise RequestRefused(400, "malformed Content-Length")
    digits = digits.lstrip(b"0")
    if len(digits) > 19:
        # Beyond any limit (and int() refuses more than 4300 digits).
        raise RequestRefused(413, "request body too large")
    return int(digits) if digits else 0

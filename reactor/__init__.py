"""reactor: socketserver's model, one event loop for many servers, and a choice of dispatch.

* ``from reactor import socketserver`` is a drop-in for ``import socketserver``.
* :class:`Reactor` hosts many servers of any family in one thread, and can be
  driven by another ``select``/``poll`` or asyncio loop.
* A dispatch strategy, chosen per server, decides where requests run.
* :class:`Protocol` and :class:`DatagramProtocol` (``Reactor.create_server``)
  serve connections with event callbacks, thousands per thread.
* Framed message handlers (``socketserver.LineRequestHandler``,
  ``LengthPrefixedRequestHandler``, ``MessageRequestHandler``) are served a
  message at a time by the loop, under any dispatch strategy.
"""

from __future__ import annotations

from . import socketserver
from .accept import HostingOptions
from .admission import AdmissionOptions, RequestInfo, request_info
from .dispatch import Dispatch, Inline, ThreadPool
from .hosting import Reactor, Topology
from .loop import EventLoop
from .keepalive import RequestLoop
from .prefork import Prefork, PreforkError, WorkerBootError
from .protocol import (
    BaseProtocol, DatagramProtocol, DatagramServer, DatagramTransport, Protocol, StreamServer, Transport,
)

__all__ = [
    "AdmissionOptions", "BaseProtocol", "DatagramProtocol", "DatagramServer", "DatagramTransport", "Dispatch",
    "EventLoop", "HostingOptions", "Inline", "Prefork", "PreforkError", "Protocol", "Reactor", "RequestInfo",
    "RequestLoop", "StreamServer", "ThreadPool", "Topology", "Transport", "WorkerBootError", "request_info",
    "socketserver",
]
__version__ = "0.1.0"

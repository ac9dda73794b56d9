"""reactor: socketserver's model, one event loop for many servers, and a choice of dispatch.

* ``from reactor import socketserver`` is a drop-in for ``import socketserver``.
* :class:`Reactor` hosts many servers of any family in one thread, and can be
  driven by another ``select``/``poll`` or asyncio loop.
* A dispatch strategy, chosen per server, decides where requests run.
"""

from __future__ import annotations

from . import socketserver
from .accept import HostingOptions
from .admission import AdmissionOptions, RequestInfo, request_info
from .dispatch import Dispatch, Inline, ThreadPool
from .hosting import Reactor, Topology
from .loop import EventLoop
from .prefork import Prefork, PreforkError, WorkerBootError

__all__ = [
    "AdmissionOptions", "Dispatch", "EventLoop", "HostingOptions", "Inline", "Prefork", "PreforkError", "Reactor",
    "RequestInfo", "ThreadPool", "Topology", "WorkerBootError", "request_info", "socketserver",
]
__version__ = "0.1.0"

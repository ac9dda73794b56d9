"""reactor: socketserver's model, one event loop for many servers, and a choice of dispatch.

* ``from reactor import socketserver`` is a drop-in for ``import socketserver``.
* :class:`Reactor` hosts many servers of any family in one thread, and can be
  driven by another ``select``/``poll`` or asyncio loop.
* A dispatch strategy, chosen per server, decides where requests run.
"""

from __future__ import annotations

from . import socketserver
from .dispatch import Dispatch, Inline, ThreadPool
from .loop import Reactor
from .prefork import Prefork, PreforkError, WorkerBootError

__all__ = [
    "Dispatch", "Inline", "Prefork", "PreforkError", "Reactor", "ThreadPool", "WorkerBootError",
    "socketserver",
]
__version__ = "0.1.0"

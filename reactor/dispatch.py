"""Dispatch strategies: where a hosted server's requests run.

Pass one per server: ``reactor.add_server(server, dispatch=ThreadPool(8))``,
or ``socketserver.TCPServer(address, Handler, dispatch=ThreadPool(8))`` for
standalone use. The reactor thread only waits and takes requests; the
strategy decides where each request's hooks (``verify_request``,
``process_request`` and so the handler, ``shutdown_request``) run.

* :class:`Inline` runs them in the reactor's thread.
* :class:`ThreadPool` runs them on a fixed set of reused worker threads with a
  bounded queue, and applies backpressure: when every worker is busy and the
  queue is full, the server's socket leaves the selector, so new clients wait
  in the kernel backlog (or, for datagrams, the socket buffer) rather than in
  this process's memory.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Callable

from .accept import Dispatch, HostedServer, Inline, Job, PauseReason, process_request_safely

__all__ = ["Dispatch", "Inline", "ThreadPool"]

logger = logging.getLogger(__name__)

#: How long unbind() waits for a drained pool's threads to finish exiting.
_EXIT_JOIN_TIMEOUT = 1.0

_worker_of = threading.local()

#: The client address queued with a Job (the job is the request).
_JOB = object()


class ThreadPool(Dispatch):
    """Run requests on at most ``max_workers`` reused threads, with a bounded queue.

    Args:
        max_workers: the most worker threads; they start as load needs them
            and live until the server is removed (never a thread per request).
        max_pending: requests taken from the socket and waiting for a worker;
            default ``max_workers``. When ``max_workers + max_pending``
            requests are in flight (running, or new ones waiting), the server
            stops reading its socket until a worker frees. Jobs (a parked
            keep-alive connection's next request, a framed message) wait in
            the same FIFO without counting toward that: there is at most one
            per open connection, and counting them would keep the listener
            paused under steady keep-alive load, starving new clients.
        drain_timeout: on removal, how long in-flight and queued requests may
            take to finish; queued requests left after it are closed unserved,
            and handlers still running are abandoned (their threads are daemon
            threads, logged by name).
        name: prefix of the worker threads' names (default: the server's).

    One ThreadPool serves one server at a time. Handler semantics are the
    same as inline: setup/handle/finish, ``handle_error`` on exceptions, and
    ``shutdown_request`` always.
    """

    runs_in_loop_thread = False

    def __init__(self, max_workers: int = 8, max_pending: int | None = None, *,
                 drain_timeout: float = 30.0, name: str | None = None) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, not {max_workers}")
        if max_pending is None:
            max_pending = max_workers
        if max_pending < 0:
            raise ValueError(f"max_pending must not be negative, not {max_pending}")
        self.max_workers = max_workers
        self.max_pending = max_pending
        self.drain_timeout = drain_timeout
        self.name = name
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        self._on_drained: Callable[[], None] | None = None
        self._queue: collections.deque[tuple[Any, Any]] = collections.deque()
        self._workers: list[threading.Thread] = []
        self._idle = 0
        self._running = 0
        self._queued_jobs = 0
        self._closing = False
        self._paused = False
        self._hosted: HostedServer | None = None
        self.requests_done = 0

    def __repr__(self) -> str:
        return f"ThreadPool(max_workers={self.max_workers}, max_pending={self.max_pending})"

    @property
    def capacity(self) -> int:
        """Most requests in flight (running plus queued) before the socket is paused."""
        return self.max_workers + self.max_pending

    def stats(self) -> dict[str, int]:
        """A snapshot: threads, idle threads, running and queued requests, requests done."""
        with self._lock:
            return {"threads": len(self._workers), "idle": self._idle, "running": self._running,
                    "queued": len(self._queue), "done": self.requests_done}

    def owns_current_thread(self) -> bool:
        """True when called from one of this pool's worker threads."""
        return getattr(_worker_of, "pool", None) is self

    # -- Dispatch ------------------------------------------------------------

    def bind(self, hosted: HostedServer) -> None:
        """Attach to ``hosted``; a pool serves one server at a time."""
        with self._lock:
            if self._hosted is not None:
                raise ValueError(f"{self!r} already serves {self._hosted.name}")
            self._hosted = hosted
            self._closing = False
            self._paused = False
            self._on_drained = None

    def submit(self, hosted: HostedServer, request: Any, client_address: Any) -> None:
        """Queue one request for a worker; pause the server's socket when the pool is full."""
        self._enqueue(hosted, request, client_address)

    def submit_job(self, hosted: HostedServer, job: Job) -> None:
        """Queue a job (a parked connection's next request, a framed message) for any free
        worker, in the same FIFO as new requests (see ``max_pending``)."""
        self._enqueue(hosted, job, _JOB)

    def _enqueue(self, hosted: HostedServer, request: Any, client_address: Any) -> None:
        with self._lock:
            self._queue.append((request, client_address))
            spawn = False
            if self._idle:
                # Claim the idle worker now, so a burst wakes one worker per
                # request instead of counting the same sleeper twice.
                self._idle -= 1
                self._work_ready.notify()
            elif len(self._workers) < self.max_workers:
                spawn = True
            if client_address is _JOB:
                self._queued_jobs += 1
            saturate = not self._paused and self._load_locked() >= self.capacity
            if saturate:
                self._paused = True
            if spawn:
                self._spawn_worker_locked(hosted)
        if saturate:
            hosted.pause(PauseReason.SATURATED)

    def begin_drain(self, hosted: HostedServer, on_drained: Callable[[], None]) -> float:
        """Let queued and running requests finish; ``on_drained()`` runs in the loop once none is left.

        Returns:
            ``drain_timeout``.
        """
        with self._lock:
            self._closing = True
            self._idle = 0
            self._work_ready.notify_all()
            if self._queue or self._running:
                self._on_drained = on_drained
                return self.drain_timeout
        on_drained()
        return self.drain_timeout

    def abort(self, hosted: HostedServer) -> None:
        """Close queued requests unserved; handlers still running are abandoned (logged by ``unbind``)."""
        with self._lock:
            self._closing = True
            self._on_drained = None
            unserved = list(self._queue)
            self._queue.clear()
            self._queued_jobs = 0
        if unserved:
            logger.warning("%s: closing %d queued requests unserved (drain aborted or past drain_timeout=%ss)",
                           hosted.name, len(unserved), self.drain_timeout)
            for request, client_address in unserved:
                if client_address is _JOB:
                    request.cancel()
                else:
                    hosted.server.shutdown_request(request)

    def unbind(self, hosted: HostedServer) -> None:
        """Stop the workers: they exit once drained; any still running a handler are abandoned."""
        with self._lock:
            self._closing = True
            self._idle = 0
            self._work_ready.notify_all()
            workers, self._workers = self._workers, []
            running = self._running
            self._hosted = None
            self._on_drained = None
        me = threading.current_thread()
        if not running:
            for worker in workers:
                if worker is not me:
                    worker.join(_EXIT_JOIN_TIMEOUT)
        stuck = [worker.name for worker in workers if worker.is_alive() and worker is not me]
        if running and stuck:
            logger.warning("%s: abandoning handlers still running after drain_timeout=%ss: %s",
                           hosted.name, self.drain_timeout, ", ".join(stuck))

    # -- workers -------------------------------------------------------------

    def _spawn_worker_locked(self, hosted: HostedServer) -> None:
        prefix = self.name or hosted.name
        worker = threading.Thread(target=self._work, args=(hosted,),
                                  name=f"{prefix}-worker-{len(self._workers) + 1}", daemon=True)
        self._workers.append(worker)
        worker.start()

    def _work(self, hosted: HostedServer) -> None:
        _worker_of.pool = self
        server = hosted.server
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._idle += 1
                    self._work_ready.wait()  # whoever notifies takes us off the idle count
                if not self._queue:
                    return
                request, client_address = self._queue.popleft()
                if client_address is _JOB:
                    self._queued_jobs -= 1
                self._running += 1
            try:
                if client_address is _JOB:
                    request.run()
                else:
                    process_request_safely(server, request, client_address, hosted)
            except BaseException:
                # SystemExit or KeyboardInterrupt raised by a handler: the
                # request is already shut down; a worker is no place to exit.
                logger.exception("%s: handler raised a BaseException in a worker thread", hosted.name)
            finally:
                self._finished(hosted)

    def _load_locked(self) -> int:
        """What counts toward ``capacity``: running handlers and new requests waiting."""
        return len(self._queue) - self._queued_jobs + self._running

    def _finished(self, hosted: HostedServer) -> None:
        with self._lock:
            self._running -= 1
            self.requests_done += 1
            resume = self._paused and self._load_locked() < self.capacity
            if resume:
                self._paused = False
            on_drained = None
            if self._closing and not self._queue and not self._running:
                on_drained, self._on_drained = self._on_drained, None
        try:
            if resume:
                hosted.reactor.call_soon_threadsafe(hosted.resume, PauseReason.SATURATED)
            if on_drained is not None:
                hosted.reactor.call_soon_threadsafe(on_drained)
        except RuntimeError:
            pass  # the reactor closed meanwhile: nothing left to resume or report

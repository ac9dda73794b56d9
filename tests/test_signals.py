"""Signal handling: the C handler writes into the waker, the callback runs in the loop.

Signal handlers must never be installed in pytest's own process, so every test
runs its reactor in a fresh interpreter (``run_python`` / ``spawn_python``);
the child prints lines that the test checks.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading

import pytest

from reactor._platform import available_selectors
from support import run_python, spawn_python, wait_for

SELECTOR_NAMES = [cls.__name__ for cls in available_selectors()]

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")


# ---------------------------------------------------------------- helpers

def run_checked(code: str, *args: str) -> list[str]:
    """Run ``code`` in a fresh interpreter, require exit status 0, return its stdout lines."""
    result = run_python(code, *args, timeout=30)
    assert result.returncode == 0, f"child failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout.splitlines()


def read_line(proc: subprocess.Popen[str], timeout: float = 15) -> str:
    """``proc.stdout.readline()``, bounded: the child is killed if it says nothing in time."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        proc.kill()
        reader.join(5)
        pytest.fail(f"child printed nothing within {timeout}s")
    return lines[0]


def finish(proc: subprocess.Popen[str], timeout: float = 15) -> tuple[int, str, str]:
    """Wait for the child (killing it after ``timeout``); return (status, stdout, stderr)."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    return proc.returncode, proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        stat = fh.read()
    return stat[stat.rfind(")") + 2:].split()[0]


def wait_until_asleep(proc: subprocess.Popen[str]) -> None:
    """Wait until the child sleeps in the kernel (its reactor is blocked in select)."""
    wait_for(lambda: process_state(proc.pid) == "S", message="child never went to sleep")


# A child that serves until a signal's callback stops it. The "ready" line is
# printed from the first tick of serve_forever(), so once the child sleeps it
# is blocked in the selector. A fallback timer bounds the child's life.
SERVE_UNTIL_SIGNAL = """
import selectors, signal, sys
from reactor import Reactor

reactor = Reactor(selector=getattr(selectors, sys.argv[1])())
signum = getattr(signal, sys.argv[2])

def on_signal(label):
    print("callback", label, signal.Signals(signum).name)
    reactor.stop()

def fallback():
    print("fallback: no signal arrived")
    reactor.stop()

reactor.add_signal_handler(signum, on_signal, "arg")
reactor.call_later(20, fallback)
reactor.call_soon(print, "ready")
reactor.serve_forever()
reactor.close()
print("stopped")
"""


# ---------------------------------------------------------------- delivery

@pytest.mark.parametrize("selector_name", SELECTOR_NAMES)
def test_signal_callback_runs_in_the_loop_not_in_the_handler(selector_name: str) -> None:
    lines = run_checked(
        """
        import os, selectors, signal, sys, threading
        from reactor import Reactor

        reactor = Reactor(selector=getattr(selectors, sys.argv[1])())
        state = {"in_run_once": False}
        calls = []

        def on_usr1(*args):
            calls.append(args)
            print("callback", args, "in_run_once=%s" % state["in_run_once"],
                  "main_thread=%s" % (threading.current_thread() is threading.main_thread()))

        reactor.add_signal_handler(signal.SIGUSR1, on_usr1, "a", 1)
        os.kill(os.getpid(), signal.SIGUSR1)
        print("after kill, calls=%d" % len(calls))
        for _ in range(50):
            state["in_run_once"] = True
            reactor.run_once(0.1)
            state["in_run_once"] = False
            if calls:
                break
        reactor.close()
        print("calls=%d" % len(calls))
        """,
        selector_name,
    )
    assert lines == [
        "after kill, calls=0",
        "callback ('a', 1) in_run_once=True main_thread=True",
        "calls=1",
    ]


@pytest.mark.parametrize("selector_name", SELECTOR_NAMES)
def test_signal_from_another_process_wakes_a_blocked_serve_forever(selector_name: str) -> None:
    with spawn_python(SERVE_UNTIL_SIGNAL, selector_name, "SIGUSR1") as proc:
        assert read_line(proc) == "ready\n"
        wait_until_asleep(proc)
        os.kill(proc.pid, signal.SIGUSR1)
        status, out, err = finish(proc)
    assert status == 0, err
    assert out.splitlines() == ["callback arg SIGUSR1", "stopped"]


@pytest.mark.parametrize("selector_name", SELECTOR_NAMES)
def test_sigterm_handler_stops_the_reactor_and_the_process_exits_cleanly(selector_name: str) -> None:
    code = """
        import selectors, signal, sys
        from reactor import Reactor, socketserver

        class Hello(socketserver.BaseRequestHandler):
            def handle(self):
                self.request.sendall(b"hello")

        reactor = Reactor(selector=getattr(selectors, sys.argv[1])())
        server = socketserver.TCPServer(("127.0.0.1", 0), Hello)
        reactor.add_server(server)
        reactor.add_signal_handler(signal.SIGTERM, reactor.stop)
        reactor.call_later(20, sys.exit, 3)  # fallback: no SIGTERM came
        print(server.server_address[1])
        reactor.serve_forever()
        reactor.close()
        print("closed", server.socket.fileno())
    """
    with spawn_python(code, selector_name) as proc:
        port = int(read_line(proc))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            assert client.recv(16) == b"hello"
        wait_until_asleep(proc)
        proc.send_signal(signal.SIGTERM)
        status, out, err = finish(proc)
    assert status == 0, err
    assert out.splitlines() == ["closed -1"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_signal_reaches_a_reactor_running_in_a_worker_thread() -> None:
    code = """
        import os, signal, threading
        from reactor import Reactor

        reactor = Reactor()
        ran_in = []

        def on_usr1():
            ran_in.append(threading.current_thread().name)
            reactor.stop()

        reactor.add_signal_handler(signal.SIGUSR1, on_usr1)  # main thread only
        reactor.call_later(20, reactor.stop)
        worker = threading.Thread(target=reactor.serve_forever, name="loop")
        worker.start()
        reactor.call_soon_threadsafe(print, "ready")
        worker.join(30)
        print("alive=%s ran_in=%s" % (worker.is_alive(), ran_in))
        reactor.close()
    """
    with spawn_python(code) as proc:
        assert read_line(proc) == "ready\n"
        wait_until_asleep(proc)
        os.kill(proc.pid, signal.SIGUSR1)
        status, out, err = finish(proc)
    assert status == 0, err
    assert out.splitlines() == ["alive=False ran_in=['loop']"]


def test_one_callback_per_tick_for_a_burst_of_the_same_signal() -> None:
    lines = run_checked(
        """
        import os, signal
        from reactor import Reactor

        reactor = Reactor()
        calls = []
        reactor.add_signal_handler(signal.SIGUSR1, calls.append, "usr1")
        reactor.add_signal_handler(signal.SIGUSR2, calls.append, "usr2")
        for _ in range(5):
            os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR2)
        for _ in range(50):
            reactor.run_once(0.1)
            if len(calls) >= 2:
                break
        reactor.run_once(0)
        reactor.close()
        print(sorted(calls))
        """
    )
    assert lines == ["['usr1', 'usr2']"]


# ---------------------------------------------------------------- restoring state

@pytest.mark.parametrize("previous", ["python-function", "SIG_IGN", "SIG_DFL", "default_int_handler"])
def test_remove_signal_handler_restores_the_previous_handler_and_wakeup_fd(previous: str) -> None:
    lines = run_checked(
        """
        import signal, sys
        from reactor import Reactor

        def custom(signum, frame):
            pass

        kind = sys.argv[1]
        signum = signal.SIGINT if kind == "default_int_handler" else signal.SIGUSR1
        before = {"python-function": custom, "SIG_IGN": signal.SIG_IGN, "SIG_DFL": signal.SIG_DFL,
                  "default_int_handler": signal.default_int_handler}[kind]
        signal.signal(signum, before)

        reactor = Reactor()
        reactor.add_signal_handler(signum, print)
        print("replaced", signal.getsignal(signum) is not before)
        owner = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(owner, warn_on_full_buffer=False)
        print("wakeup fd set", owner != -1)
        print("removed", reactor.remove_signal_handler(signum))
        print("restored", signal.getsignal(signum) is before)
        print("wakeup fd", signal.set_wakeup_fd(-1))
        print("removed again", reactor.remove_signal_handler(signum))
        reactor.close()
        """,
        previous,
    )
    assert lines == [
        "replaced True",
        "wakeup fd set True",
        "removed True",
        "restored True",
        "wakeup fd -1",
        "removed again False",
    ]


def test_wakeup_fd_stays_until_the_last_signal_handler_is_removed() -> None:
    lines = run_checked(
        """
        import os, signal
        from reactor import Reactor

        reactor = Reactor()
        calls = []
        reactor.add_signal_handler(signal.SIGUSR1, calls.append, "usr1")
        reactor.add_signal_handler(signal.SIGUSR2, calls.append, "usr2")
        reactor.remove_signal_handler(signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR2)
        for _ in range(50):
            reactor.run_once(0.1)
            if calls:
                break
        print(calls)
        reactor.remove_signal_handler(signal.SIGUSR2)
        print("wakeup fd", signal.set_wakeup_fd(-1))
        reactor.close()
        """
    )
    assert lines == ["['usr2']", "wakeup fd -1"]


def test_close_restores_signal_handlers_and_wakeup_fd() -> None:
    lines = run_checked(
        """
        import signal
        from reactor import Reactor

        def custom(signum, frame):
            pass

        signal.signal(signal.SIGUSR1, custom)
        reactor = Reactor()
        reactor.add_signal_handler(signal.SIGUSR1, print)
        reactor.add_signal_handler(signal.SIGTERM, print)
        reactor.add_signal_handler(signal.SIGINT, print)
        reactor.close()
        print(signal.getsignal(signal.SIGUSR1) is custom,
              signal.getsignal(signal.SIGTERM) is signal.SIG_DFL,
              signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        print("wakeup fd", signal.set_wakeup_fd(-1))
        """
    )
    assert lines == ["True True True", "wakeup fd -1"]


# ---------------------------------------------------------------- refusals

def test_add_signal_handler_from_a_non_main_thread_raises_runtime_error() -> None:
    lines = run_checked(
        """
        import signal, threading
        from reactor import Reactor

        reactor = Reactor()
        errors = []

        def attempt():
            try:
                reactor.add_signal_handler(signal.SIGUSR1, print)
            except Exception as exc:
                errors.append(exc)

        thread = threading.Thread(target=attempt)
        thread.start()
        thread.join(10)
        print([type(exc).__name__ for exc in errors])
        print("untouched", signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL, signal.set_wakeup_fd(-1))
        reactor.close()
        """
    )
    assert lines == ["['RuntimeError']", "untouched True -1"]


@pytest.mark.parametrize("signum", ["SIGKILL", "SIGSTOP", "0", "100000"])
def test_add_signal_handler_for_an_uncatchable_or_invalid_signal_raises_value_error(signum: str) -> None:
    lines = run_checked(
        """
        import signal, sys
        from reactor import Reactor

        name = sys.argv[1]
        signum = getattr(signal, name) if name.startswith("SIG") else int(name)
        reactor = Reactor()
        try:
            reactor.add_signal_handler(signum, print)
        except Exception as exc:
            print(type(exc).__name__)
        else:
            print("accepted")
        print("wakeup fd", signal.set_wakeup_fd(-1))
        reactor.close()
        """,
        signum,
    )
    assert lines == ["ValueError", "wakeup fd -1"]


@pytest.mark.parametrize("owner", ["reactor", "user-wakeup-fd"])
def test_second_owner_of_the_wakeup_fd_is_refused_with_a_clear_message(owner: str) -> None:
    lines = run_checked(
        """
        import os, signal, socket, sys
        from reactor import Reactor

        first_calls = []
        if sys.argv[1] == "reactor":
            first = Reactor()
            first.add_signal_handler(signal.SIGUSR1, first_calls.append, "first")
        else:
            first = None
            r, w = socket.socketpair()
            w.setblocking(False)
            signal.set_wakeup_fd(w.fileno())
        owner = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(owner, warn_on_full_buffer=False)

        second = Reactor()
        try:
            second.add_signal_handler(signal.SIGUSR2, print)
        except RuntimeError as exc:
            print("RuntimeError:", exc)
        else:
            print("accepted")
        print("handler untouched", signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL)
        now = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(now, warn_on_full_buffer=False)
        print("wakeup fd unchanged", now == owner)
        if first is not None:
            os.kill(os.getpid(), signal.SIGUSR1)
            for _ in range(50):
                first.run_once(0.1)
                if first_calls:
                    break
            print("first still receives", first_calls)
            first.close()
        else:
            print("first still receives", ["first"])
        second.close()
        """,
        owner,
    )
    assert len(lines) == 4, lines
    assert lines[0].startswith("RuntimeError:")
    assert "set_wakeup_fd" in lines[0]
    assert lines[1:] == ["handler untouched True", "wakeup fd unchanged True", "first still receives ['first']"]


def test_a_signal_arriving_while_the_waker_is_full_is_not_lost() -> None:
    # The loop is busy in a callback while another thread floods
    # call_soon_threadsafe(), filling the waker's socket buffer, and then a
    # signal arrives. The C handler cannot write the signal number into the
    # full waker; the signal must still reach its callback.
    lines = run_checked(
        """
        import os, signal, threading
        from reactor import Reactor

        reactor = Reactor()
        calls = []
        reactor.add_signal_handler(signal.SIGUSR1, calls.append, "usr1")

        def flood_then_signal():
            for _ in range(10000):  # far more wakeups than the socket buffer holds
                reactor.call_soon_threadsafe(int)
            os.kill(os.getpid(), signal.SIGUSR1)

        def busy_callback():
            worker = threading.Thread(target=flood_then_signal)
            worker.start()
            worker.join(20)

        reactor.call_soon(busy_callback)
        for _ in range(50):
            reactor.run_once(0.1)
            if calls:
                break
        reactor.close()
        print(calls)
        """
    )
    assert lines == ["['usr1']"]


@pytest.mark.parametrize("refused_second_reactor", [False, True], ids=["alone", "after-refusal"])
def test_a_full_waker_never_makes_signals_print_warnings(refused_second_reactor: bool) -> None:
    # The reactor installs its wakeup fd with warn_on_full_buffer=False: a full
    # waker already means "wake up", so a signal arriving then is not an error
    # worth a traceback on stderr. A refused second reactor must leave that
    # setting as it found it.
    result = run_python(
        """
        import os, signal, sys
        from reactor import Reactor

        first = Reactor()
        first.add_signal_handler(signal.SIGUSR1, int)
        if sys.argv[1] == "True":
            second = Reactor()
            try:
                second.add_signal_handler(signal.SIGUSR2, print)
            except RuntimeError:
                print("refused")
            second.close()
        for _ in range(10000):  # far more wakeups than the socket buffer holds
            first.call_soon_threadsafe(int)
        os.kill(os.getpid(), signal.SIGUSR1)
        first.run_once(0)
        first.close()
        print("done")
        """,
        str(refused_second_reactor),
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == (["refused", "done"] if refused_second_reactor else ["done"])
    assert "wakeup fd" not in result.stderr, result.stderr


# A plain Python signal handler (signal.signal, no add_signal_handler) runs in
# the loop thread while its select() is interrupted, and PEP 475 then retries
# the select: stop() / shutdown() / call_soon_threadsafe() from there must
# still wake the loop.
PLAIN_HANDLER_STOPS = """
    import selectors, signal, sys
    from reactor import Reactor, socketserver

    class Quiet(socketserver.BaseRequestHandler):
        def handle(self):
            pass

    how = sys.argv[2]
    server = socketserver.TCPServer(("127.0.0.1", 0), Quiet)
    if how == "shutdown":
        signal.signal(signal.SIGTERM, lambda signum, frame: server.shutdown())
        print("ready", flush=True)
        server.serve_forever()
    else:
        reactor = Reactor(selector=getattr(selectors, sys.argv[1])())
        reactor.add_server(server)
        if how == "stop":
            signal.signal(signal.SIGTERM, lambda signum, frame: reactor.stop())
        else:
            signal.signal(signal.SIGTERM,
                          lambda signum, frame: reactor.call_soon_threadsafe(reactor.stop))
        print("ready", flush=True)
        reactor.serve_forever()
        reactor.remove_server(server)
        reactor.close()
    server.server_close()
    print("stopped", flush=True)
"""


@pytest.mark.parametrize("how", ["shutdown", "stop", "call_soon_threadsafe"])
@pytest.mark.parametrize("selector_name", SELECTOR_NAMES)
def test_plain_signal_handler_in_the_loop_thread_wakes_the_loop(selector_name: str, how: str) -> None:
    with spawn_python(PLAIN_HANDLER_STOPS, selector_name, how) as proc:
        assert read_line(proc) == "ready\n"
        wait_until_asleep(proc)
        os.kill(proc.pid, signal.SIGTERM)
        status, out, err = finish(proc)
    assert status == 0, err
    assert out.splitlines() == ["stopped"]

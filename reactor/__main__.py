"""``python -m reactor``: the ``reactor`` command (see ``reactor.cli``)."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m embedserve`` is the ``embedserve`` command."""

from embedserve.cli import main

raise SystemExit(main())

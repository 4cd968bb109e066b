"""``python -m aevb`` is the ``aevb`` command."""

from .cli import main

raise SystemExit(main())

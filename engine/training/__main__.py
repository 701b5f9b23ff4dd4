"""``python -m engine.training``: train without the page (see :mod:`engine.training.cli`)."""

from engine.training.cli import main

raise SystemExit(main())

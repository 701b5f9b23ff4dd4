"""``python -m engine.builtin``: retrain or evaluate the built-in models (see :mod:`engine.builtin.recipes`)."""

from engine.builtin.recipes import main

raise SystemExit(main())

"""``python -m llm_router``: the same as the ``llm-router`` command."""

from .cli import main

raise SystemExit(main())

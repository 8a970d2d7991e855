"""``type: mock``: answers in-process from the fake upstream's generators."""

"""Who may spend what, and what was spent: limits, usage counters, accounting, the journal."""

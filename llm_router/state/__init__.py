"""The one state seam: where limits, spend, counters and cooldowns are shared (memory or Redis)."""

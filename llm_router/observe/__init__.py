"""What the router shows of itself: metrics, tracing, logs, label bounds, traffic, redaction."""

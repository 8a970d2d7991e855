"""One request's way through the router: proxy (the attempt loop), relay, routing, key health,
affinity, deadlines, the request record and the process-wide state."""

"""The HTTP server: the aiohttp app, its routes and lifecycle, connections, workers, reload,
usage snapshots and the status page."""

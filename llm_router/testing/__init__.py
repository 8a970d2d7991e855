"""Fake upstreams: deterministic model servers speaking each wire format, written from the wire."""

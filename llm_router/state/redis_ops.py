"""The writes the Redis store queues (ops of :data:`~.redis_keys.APPLY`), how a batch of
them is merged before it is sent, and commands packed in RESP."""

from __future__ import annotations

from typing import Any

__all__ = ["Op", "merge", "pack"]

Op = tuple[Any, ...]  # one write of redis_keys.APPLY, queued until it is sent


def merge(ops: list[Op]) -> list[Op]:
    """``ops`` with what one batch can do once done once: the spend ('P') of each account
    and model summed, the additions ('A') to one key summed (the tpm corrections of many
    requests), and a slot recorded ('W') then released ('Z') within the batch removed in
    one ZREM. Under load many requests settle within a batch, and Redis does the work
    once; every counter ends where the ops one by one would leave it."""
    spend: dict[tuple[Any, ...], list[Any]] = {}
    adds: dict[tuple[Any, ...], int] = {}  # (key, ttl) -> its index in out
    recorded: dict[tuple[Any, ...], int] = {}  # (zset, new member) of a 'W' -> its index
    out: list[Op | None] = []
    for op in ops:
        kind = op[0]
        if kind == "P":
            ident = op[:8]  # P, four period hashes, accounts set, account, model
            acc = spend.get(ident)
            if acc is None:
                spend[ident] = list(op)
            else:
                for i in range(8, 12):  # requests, prompt, completion, cost
                    acc[i] += op[i]
            continue
        if kind == "A":
            at = adds.get((op[1], op[3]))
            if at is not None:
                prev = out[at]
                assert prev is not None
                out[at] = ("A", op[1], prev[2] + op[2], op[3])
                continue
            adds[(op[1], op[3])] = len(out)
        elif kind == "W":
            recorded[(op[1], op[3])] = len(out)
        elif kind == "Z":
            at = recorded.pop((op[1], op[2]), None)
            if at is not None:
                prev = out[at]
                assert prev is not None
                out[at] = ("Z", op[1], prev[2])  # the slot under its first name
                continue
        out.append(op)
    merged = [op for op in out if op is not None and not (op[0] == "A" and op[2] == 0)]
    merged += [(*op[:11], repr(float(op[11])), *op[12:]) for op in spend.values()]
    return merged


def pack(*args: Any) -> bytes:
    """A command in RESP: ``*N``, then ``$len`` and the bytes of each argument."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)

"""The writes the Redis store queues (ops of :data:`~.redis_keys.APPLY`), how a batch of
them is merged before it is sent, and commands packed in RESP."""

from __future__ import annotations

from typing import Any

from ..ledger.limits import PERIODS
from .redis_keys import key_of

__all__ = ["Op", "bulk", "keys_of", "merge", "pack"]

Op = tuple[Any, ...]  # one write of redis_keys.APPLY, queued until it is sent


def merge(ops: list[Op]) -> list[Op]:
    """``ops`` with what one batch can do once done once: the spend ('Q') of each pair of
    accounts and model summed, the additions to one counter ('A', 'T') summed (the tpm
    corrections of many requests), and a slot recorded ('V') then released ('Y') within
    the batch removed in one ZREM. Under load many requests settle within a batch, and
    Redis does the work once; every counter ends where the ops one by one would leave
    it."""
    spend: dict[tuple[Any, ...], list[Any]] = {}
    adds: dict[tuple[Any, ...], int] = {}  # what an 'A' or 'T' adds to -> its index in out
    recorded: dict[tuple[Any, ...], int] = {}  # (accounts, new member) of a 'V' -> its index
    out: list[Op | None] = []
    for op in ops:
        kind = op[0]
        if kind == "Q":
            ident = op[:5]  # Q, period ids, both accounts, model
            acc = spend.get(ident)
            if acc is None:
                spend[ident] = list(op)
            else:
                for i in range(5, 9):  # requests, prompt, completion, cost
                    acc[i] += op[i]
            continue
        if kind == "A" or kind == "T":
            what = (op[1], op[3]) if kind == "A" else op[:4]
            at = adds.get(what)
            if at is not None:
                prev = out[at]
                assert prev is not None
                out[at] = (*op[:2], prev[2] + op[2], op[3]) if kind == "A" else (
                    *op[:4], prev[4] + op[4])
                continue
            adds[what] = len(out)
        elif kind == "V":
            recorded[(op[1], op[2], op[4])] = len(out)
        elif kind == "Y":
            at = recorded.pop(op[1:4], None)
            if at is not None:
                prev = out[at]
                assert prev is not None
                out[at] = ("Y", op[1], op[2], prev[3])  # the slot under its first name
                continue
        out.append(op)
    merged = [op for op in out if op is not None and not (
        (op[0] == "A" and op[2] == 0) or (op[0] == "T" and op[4] == 0))]
    merged += [(*op[:8], repr(float(op[8]))) for op in spend.values()]
    return merged


def keys_of(prefix: str, op: Op) -> list[str]:
    """The keys ``op`` writes (a failed batch's suspects, for the probe)."""
    kind = op[0]
    if kind == "Q":
        ids = [*op[1].split(), "total"]
        return [key_of(prefix, "spend", acct, period, pid) for acct in op[2:4]
                for period, pid in zip(PERIODS, ids, strict=True)]
    if kind == "T":
        return [key_of(prefix, "w", acct, "tpm", op[1]) for acct in op[2:4]]
    if kind == "V" or kind == "Y":
        return [key_of(prefix, "slots", acct) for acct in op[1:3]]
    return [op[1]]


def pack(*args: Any) -> bytes:
    """A command in RESP: ``*N``, then ``$len`` and the bytes of each argument."""
    return b"*%d\r\n%s" % (len(args), bulk(args))


def bulk(args: Any) -> bytes:
    """Each of ``args`` as a RESP bulk string, ``$len`` then its bytes: a part of a
    command whose ``*N`` head counts them (a part sent often is packed once)."""
    parts = []
    for arg in args:
        data = arg if type(arg) is bytes else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)

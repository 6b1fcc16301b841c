"""Attempts of one job at one checkpoint location: each claims a number no earlier attempt used
(fencing: a stale attempt sees a newer number and stops writing), and records how it ended, for
the run's preemption accounting."""

from __future__ import annotations

import json
import os
import time

from entrypoint.io import storage

ATTEMPTS = "_attempts/"


def claim_generation(store: storage.Store, label: str) -> int:
    """A number no earlier attempt of this job used. A newer number at the store means this
    attempt is stale (a zombie still running after a restart) and must stop writing."""
    taken = [int(k[len(ATTEMPTS) :]) for k in store.list(ATTEMPTS) if k[len(ATTEMPTS) :].isdigit()]
    generation = max(taken, default=0) + 1
    payload = json.dumps({"label": label, "pid": os.getpid(), "started_unix": time.time()}).encode()
    while not store.write_bytes(f"{ATTEMPTS}{generation:06d}", payload, if_absent=True):
        generation += 1
    return generation


def newest_generation(store: storage.Store) -> int:
    return max((int(k[len(ATTEMPTS) :]) for k in store.list(ATTEMPTS) if k[len(ATTEMPTS) :].isdigit()), default=0)


def record_attempt_end(store: storage.Store, generation: int, outcome: str, figures: dict) -> None:
    """Note how an attempt ended next to its claim, for the run's preemption accounting."""
    payload = json.dumps({"outcome": outcome, **figures}).encode()
    store.write_bytes(f"{ATTEMPTS}{generation:06d}.end.json", payload)


def attempt_history(store: storage.Store) -> list[dict]:
    """The recorded endings of earlier attempts (killed attempts record nothing)."""
    out = []
    for key in sorted(store.list(ATTEMPTS)):
        if key.endswith(".end.json"):
            raw = store.read_bytes(key)
            try:
                out.append(json.loads(raw) if raw else {})
            except ValueError:
                continue
    return out

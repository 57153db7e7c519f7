"""A training function for torchrun groups in the test cluster: every rank connects to rank 0 at
MASTER_ADDR:MASTER_PORT and says its rank and world size; rank 0 checks that every rank arrived
with the right world size, then fits a small model (so the stage has something to register).
Plain sockets: torch is not installed here."""

from __future__ import annotations

import os
import socket
import time


def say(line: str) -> None:
    """One line in one write: two ranks of a pod share its stdout, and print() writes the text and
    its newline separately, so lines printed at the same moment could interleave mid-line."""
    os.write(1, (line + "\n").encode())


def gather(timeout: float = 120) -> dict[int, int]:
    """On rank 0: {rank: the world size it reported}, for every rank; on the others: {}."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    deadline = time.monotonic() + timeout
    if rank == 0:
        seen = {0: world}
        with socket.create_server((host, port)) as server:
            server.settimeout(timeout)
            while len(seen) < world:
                conn, _ = server.accept()
                with conn:
                    other, size = conn.makefile().readline().split()
                    seen[int(other)] = int(size)
                    conn.sendall(b"ok\n")
        return seen
    while True:
        try:
            with socket.create_connection((host, port), timeout=5) as conn:
                conn.sendall(f"{rank} {world}\n".encode())
                assert conn.makefile().readline().strip() == "ok"
                say(f"rank {rank}: reached rank 0 with world size {world}")
                return {}
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def train(train, test, target, features, params):
    """The YAML train stage's callable: the rendezvous check, then a logistic regression."""
    from sklearn.linear_model import LogisticRegression

    seen = gather()
    world = int(os.environ["WORLD_SIZE"])
    if int(os.environ["RANK"]) != 0:
        return None
    assert sorted(seen) == list(range(world)), seen
    assert set(seen.values()) == {world}, seen
    say(f"rank 0: ranks {sorted(seen)} all reached rank 0 with world size {world}")
    model = LogisticRegression(max_iter=300).fit(train[features], train[target])
    return model, {"accuracy": float(model.score(test[features], test[target])), "world_size": world,
                   "ranks_reached": len(seen)}


def entrypoint(params, checkpoint_dir):
    """GpuTrainOperator's entrypoint: the rendezvous check, then a constant model; first
    ``params["sleep"]`` seconds (default 0) on every rank, for a test that kills the worker."""
    import pandas as pd
    from sklearn.dummy import DummyClassifier

    time.sleep(float((params or {}).get("sleep", 0)))
    seen = gather()
    if int(os.environ["RANK"]) != 0:
        return None
    world = int(os.environ["WORLD_SIZE"])
    assert sorted(seen) == list(range(world)) and set(seen.values()) == {world}, seen
    say(f"rank 0: ranks {sorted(seen)} all reached rank 0 with world size {world}")
    example = pd.DataFrame({"x": [0.0, 1.0]})
    return {"model": DummyClassifier().fit(example, [0, 1]), "metrics": {"world_size": world},
            "input_example": example}

"""A stand-in for ``torchrun`` in the test cluster's pods (torch is not installed here): what the
launcher does for the program it runs, with plain sockets.

    torchrun --nnodes N --node-rank R --nproc-per-node P --rdzv-backend c10d \
        --rdzv-endpoint HOST:PORT [--rdzv-id ID] [--rdzv-conf join_timeout=S] [--max-restarts 0] \
        -m module args...

* the agents meet at the rendezvous endpoint: the one whose node rank is 0 listens on PORT, the
  others connect (retrying until the join timeout) and say how many processes they bring; each
  learns the world size. Cluster DNS names (``*.svc``, ``*.cluster.local``) resolve to 127.0.0.1:
  the stand-in kubelet runs every pod on the host's network and there is no cluster DNS here;
* each agent starts its P processes as ``python -m module args`` with torchrun's environment:
  RANK, LOCAL_RANK, GROUP_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT (PORT + 1,
  where the rank-0 process may listen), TORCHELASTIC_RUN_ID;
* it exits with the first non-zero exit code of its processes, else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time


def resolve(host: str) -> str:
    if host.endswith((".svc", ".cluster.local")):
        return "127.0.0.1"
    return socket.gethostbyname(host)


def rendezvous(host: str, port: int, node_rank: int, nnodes: int, nproc: int, timeout: float) -> int:
    """The world size, once every node's agent has joined."""
    deadline = time.monotonic() + timeout
    if node_rank == 0:
        counts = {0: nproc}
        peers = []
        with socket.create_server((host, port), reuse_port=False) as server:
            server.settimeout(max(1.0, deadline - time.monotonic()))
            while len(counts) < nnodes:
                conn, _ = server.accept()
                joined = json.loads(conn.makefile().readline())
                counts[joined["node_rank"]] = joined["nproc"]
                peers.append(conn)
            world = sum(counts.values())
            for conn in peers:
                conn.sendall(json.dumps({"world_size": world}).encode() + b"\n")
                conn.close()
        return world
    while True:
        try:
            with socket.create_connection((host, port), timeout=5) as conn:
                conn.sendall(json.dumps({"node_rank": node_rank, "nproc": nproc}).encode() + b"\n")
                conn.settimeout(max(1.0, deadline - time.monotonic()))
                return json.loads(conn.makefile().readline())["world_size"]
        except (ConnectionRefusedError, socket.timeout, OSError):
            if time.monotonic() > deadline:
                raise SystemExit(f"torchrun stand-in: node {node_rank} could not join {host}:{port} in {timeout}s")
            time.sleep(0.3)


def main() -> int:
    parser = argparse.ArgumentParser()
    for name in ("nnodes", "node-rank", "nproc-per-node", "max-restarts"):
        parser.add_argument(f"--{name}", type=int, default=0)
    for name in ("rdzv-backend", "rdzv-endpoint", "rdzv-id", "rdzv-conf"):
        parser.add_argument(f"--{name}", default="")
    parser.add_argument("-m", dest="module", required=True)
    args, rest = parser.parse_known_args()
    host_name, port = args.rdzv_endpoint.rsplit(":", 1)
    conf = dict(item.split("=", 1) for item in args.rdzv_conf.split(",") if "=" in item)
    host = resolve(host_name)
    world = rendezvous(host, int(port), args.node_rank, args.nnodes, args.nproc_per_node,
                       float(conf.get("join_timeout", 120)))
    print(f"torchrun stand-in: node {args.node_rank} joined {host_name}:{port} (world size {world})", flush=True)
    processes = []
    for local in range(args.nproc_per_node):
        env = {**os.environ, "RANK": str(args.node_rank * args.nproc_per_node + local), "LOCAL_RANK": str(local),
               "GROUP_RANK": str(args.node_rank), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(args.nproc_per_node), "MASTER_ADDR": host, "MASTER_PORT": str(int(port) + 1),
               "TORCHELASTIC_RUN_ID": args.rdzv_id}
        processes.append(subprocess.Popen([sys.executable, "-u", "-m", args.module, *rest], env=env))
    codes = [p.wait() for p in processes]
    return next((c for c in codes if c), 0)


if __name__ == "__main__":
    sys.exit(main())

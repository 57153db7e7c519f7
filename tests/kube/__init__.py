"""Kubernetes test harness: a real control plane on 127.0.0.1 and a stand-in kubelet (see cluster.py)."""

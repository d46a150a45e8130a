"""Federated averaging of the student with Flower (docs/federated.md): non-IID client shards
(shards.py), a client's local training (local.py), the Flower apps (apps.py) and the server's
rounds, baseline and report (run.py). Needs the `federated` extra (flwr with Ray)."""

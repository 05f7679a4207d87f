"""Offline tools, never imported by the serving path: click logs, the bulk loader, evaluation,
baselines, tuning, a private redis-server and state checks."""

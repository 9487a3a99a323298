"""What operators see of a running bot: Prometheus metrics, health checks and JSON logs.

The lowest layer: every other package may record into it, and it imports none of them.
"""

"""Self-hosted Cog servers of the model as a backend: a pool with fail-over and overflow."""

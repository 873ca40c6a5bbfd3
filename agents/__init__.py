"""Use-case agents. Each module defines ``register(wal)``; the worker discovers them all."""

"""Orbital Raft: a Raft consensus library (pure core + asyncio runtime)."""

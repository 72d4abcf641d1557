"""What one benchmark run does: how long, how often, at which connection counts, how large."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    seconds: int = 5  # one wrk run (and one WebSocket echo run)
    rounds: int = 3  # alternating rounds per case
    connections: tuple[int, ...] = (1, 64)  # every static case and the proxied small JSON
    json_extra_connections: tuple[int, ...] = ()  # small JSON only, on top of `connections`
    upload_connections: tuple[int, ...] = (8, 1)  # 10 MB bodies: 64 at once would be 640 MB
    fanout_clients: int = 1000
    tree_files: int = 10_000
    settle_seconds: float = 2.0  # offload builds br/gzip variants in the background at start

    @classmethod
    def smoke(cls) -> Options:
        """Every path once, end to end, in about a minute: no numbers to quote."""
        return cls(
            seconds=1,
            rounds=1,
            connections=(64,),
            json_extra_connections=(1,),
            upload_connections=(8,),
            fanout_clients=100,
            tree_files=1000,
            settle_seconds=0.5,
        )

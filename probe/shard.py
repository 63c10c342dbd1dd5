"""Which targets this replica probes: `PROBE_SHARD=INDEX/COUNT`, rendezvous hashing of names.

COUNT replicas of `probe run` with the same config split its targets with no coordination: a
target belongs to the shard whose hash of (shard index, target name) is highest (rendezvous,
or highest-random-weight, hashing). Every replica computes the same answer from the name alone,
and when COUNT changes only the targets whose highest score moves to an added (or from a
removed) shard change owner: ~1/COUNT of them, the fewest any scheme can move. The hash is
BLAKE2b from hashlib, never Python's hash(), which is salted per process and would give each
replica a different split.

`ordinal/COUNT` takes INDEX from the trailing number of the pod's name ($HOSTNAME, as a
StatefulSet names its pods `stageprobe-0`, `stageprobe-1`, ...), so one manifest serves every
pod. `PROBE_SHARD_REPLICAS=R` puts each target on its R highest-scoring shards (R <= COUNT): the
gate (`probe gate --prometheus`) then counts a target ready only if every fresh replica of it
says so, and a target survives R-1 lost shards.

The filter is applied in ONE place, `owned()`, which the daemon calls on the config it starts
with and on every reloaded one: readiness, metrics, /readyz and /status then only ever see the
targets this shard owns. `probe check` is never sharded.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from probe.config import Config, ConfigError

SHARD_ENV = "PROBE_SHARD"
REPLICAS_ENV = "PROBE_SHARD_REPLICAS"
MAX_COUNT = 1024  # bounds the per-target hashing (COUNT hashes per target at load time)
_VALUE = re.compile(r"\s*(\d+|ordinal)\s*/\s*(\d+)\s*")
_ORDINAL = re.compile(r"-(\d+)$")


@dataclass(frozen=True)
class Shard:
    """This replica's place in the fleet: shard `index` of `count`, each target on `replicas`."""

    index: int = 0
    count: int = 1
    replicas: int = 1

    @property
    def label(self) -> str:
        """`INDEX/COUNT`, as PROBE_SHARD is written and as metrics and the gate show it."""
        return f"{self.index}/{self.count}"

    def owns(self, name: str) -> bool:
        return self.count == 1 or self.index in owners(name, self.count, self.replicas)


def score(index: int, name: str) -> int:
    """The rendezvous weight of target `name` on shard `index` (stable across processes)."""
    digest = hashlib.blake2b(f"{index}\x00{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owners(name: str, count: int, replicas: int = 1) -> list[int]:
    """The shards that probe target `name`, best first: its `replicas` highest scores."""
    ranked = sorted(range(count), key=lambda i: score(i, name), reverse=True)
    return ranked[:replicas]


def split(names: Iterable[str], count: int, replicas: int = 1) -> dict[int, list[str]]:
    """Every shard's targets (what each of `count` replicas probes), for tests and the gate."""
    out: dict[int, list[str]] = {i: [] for i in range(count)}
    for name in names:
        for i in owners(name, count, replicas):
            out[i].append(name)
    return out


def parse(value: str, replicas: str | None = None, hostname: str | None = None) -> Shard:
    """A PROBE_SHARD value (and PROBE_SHARD_REPLICAS) -> Shard; ValueError names what is wrong."""
    m = _VALUE.fullmatch(value)
    if not m:
        raise ValueError(f"{SHARD_ENV} must be INDEX/COUNT or ordinal/COUNT (e.g. 0/3), "
                         f"got {value!r}")
    count = int(m.group(2))
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"{SHARD_ENV}: COUNT must be 1..{MAX_COUNT}, got {count}")
    if m.group(1) == "ordinal":
        ordinal = _ORDINAL.search(hostname or "")
        if ordinal is None:
            raise ValueError(f"{SHARD_ENV}=ordinal/{count} needs a pod name ending in -N in "
                             f"$HOSTNAME (a StatefulSet pod), got {hostname or '(unset)'!r}")
        index = int(ordinal.group(1))
    else:
        index = int(m.group(1))
    if index >= count:
        raise ValueError(f"{SHARD_ENV}: INDEX must be below COUNT ({count}), got {index}")
    r = 1
    if replicas is not None and replicas.strip():
        if not replicas.strip().isdigit():
            raise ValueError(f"{REPLICAS_ENV} must be a whole number, got {replicas!r}")
        r = int(replicas)
        if not 1 <= r <= count:
            raise ValueError(f"{REPLICAS_ENV} must be 1..COUNT ({count}), got {r}")
    return Shard(index, count, r)


def from_environ(environ: Mapping[str, str] | None = None) -> Shard:
    """This process's shard from $PROBE_SHARD (unset: the only shard, 0/1, which owns all).

    A bad value is a ConfigError of the environment, so `probe run` exits 2 naming it."""
    env = os.environ if environ is None else environ
    value = env.get(SHARD_ENV, "").strip()
    if not value:
        if env.get(REPLICAS_ENV, "").strip():
            raise ConfigError("environment", [f"{REPLICAS_ENV} needs {SHARD_ENV} as well"])
        return Shard()
    try:
        return parse(value, env.get(REPLICAS_ENV), env.get("HOSTNAME"))
    except ValueError as exc:
        raise ConfigError("environment", [str(exc)]) from None


def owned(config: Config, shard: Shard) -> Config:
    """`config` with only the targets `shard` probes (the same object when it owns them all).

    The result may have no targets at all (more shards than targets): that shard probes
    nothing and its gate is vacuously ready, which the fleet's gate does not rely on."""
    if shard.count == 1:
        return config
    mine = [t for t in config.targets if shard.owns(t.name)]
    return config.model_copy(update={"targets": mine})

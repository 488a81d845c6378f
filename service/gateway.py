"""The Redis clients of the service, built from one URL: a single node or a Redis Cluster.

`connect(url, cluster, connect_timeout)` gives a `Gateway`; `RedisStore` (service/cache.py) is its
only user and runs every call through it, within a request's budget and behind the breaker.

- `redis://[[user]:password@]host[:port][/db]`, `unix://path[?db=N&password=...]`: one Redis.
- `rediss://...`: the same over TLS. The TLS settings are the URL's query parameters, handed to
  redis-py as they are: `ssl_ca_certs` (CA bundle file), `ssl_certfile` and `ssl_keyfile` (client
  certificate), `ssl_cert_reqs` (`none`, `optional`, `required`: the default), `ssl_check_hostname`
  (`true`/`false`), `ssl_min_version`.
- `cluster=True` (`MAILREC_REDIS_CLUSTER=1`): a Redis Cluster; the URL names any one of its nodes
  (the others are discovered), `redis://` or `rediss://` as above, no database number.

A call is a list of commands, sent as one non-transactional pipeline (one round trip). On a
cluster the pipeline's commands go to the nodes that own their keys, the nodes' parts in
parallel (redis-py's `ClusterPipeline`), and `MOVED`/`ASK` redirections are followed; a command
with several keys (the click script) must have them in one slot, which the keys' `{user}` hash
tag ensures. redis-py's own retries are off: `RedisStore` makes a call once more itself when its
connection was lost, within what is left of the request's budget.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.backoff import NoBackoff
from redis.retry import Retry

Reply = Any  # bytes | int | bool | list | None: what redis-py makes of a reply
Command = tuple[bytes | str | int, ...]


class Gateway:
    """One client (single node or cluster) and how a call goes out; see the module docstring."""

    def __init__(self, client: Redis | RedisCluster) -> None:
        self.client = client
        self.cluster = isinstance(client, RedisCluster)

    async def call(self, commands: list[Command]) -> list[Reply]:
        """The replies to `commands`, in order; a RESP error reply raises (`ResponseError`)."""
        if len(commands) == 1:
            return [await self.client.execute_command(*commands[0])]
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        replies: list[Reply] = await pipe.execute(raise_on_error=True)
        return replies

    async def aclose(self) -> None:
        await self.client.aclose()


def connect(url: str, cluster: bool, connect_timeout: float) -> Gateway:
    """A gateway to the Redis (or Redis Cluster) at `url`; nothing connects before the first call."""
    options: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    if cluster:
        # MOVED/ASK are followed whatever the retries; a lost node makes the next call re-read the
        # slot map (after a failover: the replica that took over)
        client: Redis | RedisCluster = RedisCluster.from_url(url, **options)
    else:
        client = Redis.from_url(url, **options)
    return Gateway(client)

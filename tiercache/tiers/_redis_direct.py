"""Batches of single-key commands sent straight to the cluster nodes that own their keys.

Why: redis-py's asyncio cluster pipeline (what ``mget_nonatomic`` and ``pipeline()`` use)
routes every command through its generic dispatch -- key extraction by the command parser,
command policies, per-command bookkeeping -- which costs ~32 us of client CPU per GET and
~67 per SET here, more than the bytes on the wire. The tier's batches are plain GETs and
SETs whose key it knows: grouped by the slot owner from the client's own slot map and sent
as one pipeline per node (``ClusterNode.execute_pipeline``, the same call the cluster
pipeline ends in), they cost a fraction of that.

Whatever that dispatch is for still goes through it: a command answered with an error
(MOVED/ASK after a resharding, TRYAGAIN, CLUSTERDOWN), every command of a node whose
connection failed, and every command when the slot map is empty are sent again through the
client's own path, which follows redirections and refreshes the slot map, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)

__all__ = ["node_command", "node_command_at", "node_pipeline", "through_dispatch"]


def through_dispatch(exc: BaseException) -> None:
    """The one rule for a call sent straight to a node that failed: re-raise a server's
    answer other than a redirect (WRONGTYPE, a script error, NOSCRIPT for the caller to
    handle); return for anything else (MOVED/ASK, TRYAGAIN, CLUSTERDOWN, a dead connection),
    which the caller sends again through redis-py's cluster dispatch."""
    if isinstance(exc, ResponseError) and not isinstance(
            exc, AskError | TryAgainError | ClusterDownError):  # MOVED is an AskError
        raise exc


async def node_command_at(client: RedisCluster, slot: int, *args: Any) -> Any:
    """One command acting on ``slot`` only, sent to the node owning it (the dispatch for a
    redirect, a dead connection or an empty slot map; another error reply raises)."""
    owners = client.nodes_manager.slots_cache.get(slot)
    if owners:
        try:
            return await owners[0].execute_command(*args)
        except (RedisError, RedisClusterException, OSError) as exc:
            through_dispatch(exc)
    return await client.execute_command(*args)


def node_command(client: RedisCluster, key: str, *args: Any) -> Any:
    """:func:`node_command_at` for the slot of ``key``."""
    return node_command_at(client, key_slot(key.encode()), *args)


async def node_pipeline(client: RedisCluster, commands: Sequence[tuple[Any, ...]],
                        keys: Sequence[str]) -> list[Any]:
    """The replies of ``commands`` (``commands[i]`` acts on ``keys[i]`` only), in order;
    an error reply is raised, like a pipeline's ``execute()``."""
    if not client.nodes_manager.slots_cache:
        await client.initialize()  # the first call on this client: load the slot map
    slots = client.nodes_manager.slots_cache
    groups: dict[ClusterNode, list[PipelineCommand]] = {}
    again: list[int] = []
    for i, key in enumerate(keys):
        owners = slots.get(key_slot(key.encode()))
        if not owners:
            again.append(i)
            continue
        groups.setdefault(owners[0], []).append(PipelineCommand(i, *commands[i]))
    results: list[Any] = [None] * len(commands)
    if groups:
        sent = await asyncio.gather(*(node.execute_pipeline(cmds) for node, cmds in
                                      groups.items()), return_exceptions=True)
        for outcome, cmds in zip(sent, groups.values(), strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, RedisError | RedisClusterException | OSError):
                    raise outcome  # cancelled, or a bug: not the server's answer
                again.extend(cmd.position for cmd in cmds)  # a dead connection: the dispatch
                continue
            for cmd in cmds:
                if isinstance(cmd.result, Exception):
                    again.append(cmd.position)
                else:
                    results[cmd.position] = cmd.result
    if again:
        replies = await asyncio.gather(*(client.execute_command(*commands[i]) for i in again))
        for i, reply in zip(again, replies, strict=True):
            results[i] = reply
    return results

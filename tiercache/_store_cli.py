"""``tiercache store dead-letters``: inspect a write-behind store's dead letters, or replay them.

Works without the service's writer: listing reads the list in Redis; ``--replay`` moves
each dead letter back into the store's journal stream as undelivered entries (one atomic
script per letter, so two operators replaying at once never duplicate one), and any live
flusher of that store picks them up within ``claim_after / 3`` seconds and writes them.

The signing key (when the service's RedisTier signs) is read from the environment variable
named by ``--signing-key-env``, never from the command line; without it, signed entries are
shown unverified. Passwords in ``--redis`` never appear in the output.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from typing import Any

__all__ = ["add_parser", "main_args"]


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``store`` on a ``tiercache`` subparsers object."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "store", help="write-behind stores: list or replay dead letters",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="store_command", required=True)
    dead = actions.add_parser("dead-letters", help="list (default) or --replay dead letters")
    dead.add_argument("--redis", required=True, metavar="URL", help="the cache's Redis URL")
    dead.add_argument("--namespace", required=True, help="the TierCache namespace")
    dead.add_argument("--store", required=True, help="the store's name")
    dead.add_argument("--replay", action="store_true",
                      help="move the dead letters back into the journal for the flushers")
    dead.add_argument("--limit", type=int, default=100, help="letters to list (default 100)")
    dead.add_argument("--json", action="store_true", help="one JSON document")
    dead.add_argument("--signing-key-env", metavar="VAR",
                      help="environment variable holding the RedisTier's signing key")
    return parser


def _journal(args: argparse.Namespace) -> Any:
    from tiercache._journal import Journal
    from tiercache.codec import signer_from
    from tiercache.tiers.redis import RedisTier

    key = os.environ.get(args.signing_key_env) if args.signing_key_env else None
    if args.signing_key_env and not key:
        raise SystemExit(f"tiercache store: ${args.signing_key_env} is not set")
    tier = RedisTier(args.redis, socket_timeout=5.0, connect_timeout=5.0)
    return Journal(tier, args.namespace, args.store, None, signer_from(key))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.hex() if len(value) <= 64 else f"<{len(value)} bytes>"
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def main_args(args: argparse.Namespace) -> int:
    from tiercache._deadletters import describe

    journal = _journal(args)
    try:
        raws = journal.run_sync(journal.letters_plan(args.limit if not args.replay else 100_000))
        if args.replay:
            moved = writes = 0
            for raw in raws:
                try:
                    letter = journal.read_letter(raw)
                except Exception as exc:
                    print(f"skipped an unreadable dead letter: {exc}", file=sys.stderr)
                    continue
                n = journal.run_sync(journal.requeue_plan(raw, letter["entries"]))
                if n:
                    moved += 1
                    writes += n
            print(json.dumps({"replayed_letters": moved, "writes": writes}) if args.json else
                  f"moved {moved} dead letter(s) ({writes} writes) back into the journal of "
                  f"store {args.store!r}; its flushers write them shortly")
            return 0
        letters = [describe(journal, raw) for raw in raws]
        for letter in letters:
            letter.pop("raw", None)
        if args.json:
            print(json.dumps(_plain(letters)))
            return 0
        if not letters:
            print(f"store {args.store!r}: no dead letters")
        for i, letter in enumerate(letters, 1):
            at = letter.get("at")
            when = (dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="seconds")
                    if isinstance(at, float) else "?")
            print(f"#{i} {when} attempts={letter.get('attempts')} "
                  f"writes={len(letter['writes'])} error={letter['error']}")
            for write in letter["writes"][:20]:
                print(f"    {write.get('op')} {write.get('key')!r} = "
                      f"{_plain(write.get('value'))!r:.200}")
        return 0
    except Exception as exc:
        print(f"tiercache store: {journal.redact(exc)}", file=sys.stderr)
        return 1
    finally:
        journal.close()
        journal.tier.close_sync()

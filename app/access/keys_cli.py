"""``cxr-keys``: manage the API key file (CXR_API_KEYS_FILE).

    cxr-keys add NAME --scopes predict,feedback --file PATH   # prints the new key once, as the last line
    cxr-keys list --file PATH                                 # names, scopes, creation times (never keys)
    cxr-keys revoke NAME --file PATH                          # the running service refuses it at once

Only a SHA-256 of each key is written; a lost key is revoked and replaced, never recovered.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from app.access.caller import SCOPES, parse_scopes
from app.access.keyfile import add_key, read_entries, revoke_key


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr-keys", description="Manage cxr-serve's API key file (names, "
                                     "scopes and SHA-256 hashes; never the keys).")
    default = os.environ.get("CXR_API_KEYS_FILE")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="create a key; it is printed once, as the last line")
    add.add_argument("name", help="who holds it, e.g. ris-gateway (letters, digits, . _ @ -)")
    add.add_argument("--scopes", required=True, help=f"comma-separated, any of {','.join(SCOPES)}")
    listing = commands.add_parser("list", help="names, scopes and creation times")
    revoke = commands.add_parser("revoke", help="remove a key: the service refuses it from its next request")
    revoke.add_argument("name")
    for command in (add, listing, revoke):
        command.add_argument("--file", type=Path, default=Path(default) if default else None, required=not default,
                             help="the key file (default: $CXR_API_KEYS_FILE)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    path: Path = args.file
    try:
        if args.command == "add":
            key = add_key(path, args.name, parse_scopes(args.scopes))
            print(f"key {args.name!r} added to {path} with scopes {args.scopes}; it is shown only now:",
                  file=sys.stderr)
            print(key)  # the last line of output, alone, so scripts can take it with tail -n 1
        elif args.command == "list":
            for entry in read_entries(path) if path.exists() else []:
                print(f"{entry.name}\t{','.join(sorted(entry.scopes))}\t{entry.created_at}")
        elif not revoke_key(path, args.name):
            print(f"cxr-keys: no key named {args.name!r} in {path}", file=sys.stderr)
            return 1
        else:
            print(f"key {args.name!r} revoked", file=sys.stderr)
    except (ValueError, OSError) as exc:
        print(f"cxr-keys: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

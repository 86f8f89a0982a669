"""``python -m backend serve|migrate|user create|keys create``."""

from __future__ import annotations

import argparse
import getpass
import sys

from backend import cli
from backend.settings import SettingsError

_DATABASE_HELP = (
    "SQLite path or postgresql:// URL (default: $AGENTKAVACH_DATABASE_URL, else "
    "./agentkavach.sqlite)"
)


def main(argv: list[str] | None = None, prog: str = "python -m backend") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--database-url", help=_DATABASE_HELP)
    # Each command takes it too, so it reads naturally after the command's name.
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument("--database-url", default=argparse.SUPPRESS, help=_DATABASE_HELP)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", parents=[database], help="migrate, then serve the backend and dashboard"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (%(default)s)")

    commands.add_parser("migrate", parents=[database], help="run the database migrations")

    user = commands.add_parser("user", help="manage users").add_subparsers(
        dest="action", required=True
    )
    create_user = user.add_parser("create", parents=[database], help="create a user")
    create_user.add_argument("--email", required=True)
    create_user.add_argument("--org", required=True, help="organization name")
    create_user.add_argument("--password", help="prompted for when omitted")
    create_user.add_argument("--role", choices=["owner", "admin", "viewer"])

    keys = commands.add_parser("keys", help="manage SDK keys").add_subparsers(
        dest="action", required=True
    )
    create_key = keys.add_parser(
        "create", parents=[database], help="create an SDK key and print it once"
    )
    create_key.add_argument("--org", required=True, help="organization name or id, or an e-mail")
    create_key.add_argument("--name", default="default")
    create_key.add_argument("--test", action="store_true", help="an ak_test_ key")

    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            cli.serve(args.host, args.port, args.database_url)
        elif args.command == "migrate":
            cli.migrate(args.database_url)
            print("migrations complete")
        elif args.command == "user":
            password = args.password or getpass.getpass("password: ")
            created = cli.create_user(
                args.email, password, args.org, args.database_url, role=args.role
            )
            print(f"created {created['email']} ({created['role']} of org {created['org_id']})")
        elif args.command == "keys":
            print(cli.create_key(args.org, args.name, args.test, args.database_url))
    except (SettingsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

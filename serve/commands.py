"""The app's ``vsr`` subcommands, registered through the ``vsr.commands`` entry points (pyproject.toml):

    vsr serve ...     = python -m serve ...         (serve/__main__.py)
    vsr client ...    = python serve/client.py ...  (serve/client.py)

Each takes the same flags as its script, from the same definition. Importing this module starts
nothing and does not import Ray.
"""
from __future__ import annotations

import argparse


def add_serve_command(subparsers) -> None:
    from serve import __main__ as server

    parser = subparsers.add_parser("serve", help="serve a checkpoint over HTTP with Ray Serve (the web page, the API)",
                                   description=server.DESCRIPTION)
    server.add_arguments(parser)
    parser.set_defaults(func=server.run)


def add_client_command(subparsers) -> None:
    from serve import client

    parser = subparsers.add_parser("client", help="use a running app: a window, a video job, a stream, its model",
                                   description=client.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    client.add_arguments(parser)
    parser.set_defaults(func=client.run)

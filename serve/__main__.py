"""``python -m serve --checkpoint PATH`` (= ``vsr serve``): start Ray (or join a cluster), deploy the app, wait.

Ctrl-C and SIGTERM (what systemd, Docker and Kubernetes send) both shut Serve and Ray down,
so no Ray process is left behind.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from serve.settings import API_KEY_ENV
from vsr_core.checkpoint import resolve_checkpoint_path
from vsr_core.storage import is_uri

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DESCRIPTION = "Serve VSR+++ v2 over HTTP on a local Ray instance or a cluster."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serve", description=DESCRIPTION)
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's flags (``python -m serve`` and ``vsr serve``)."""
    parser.add_argument("--checkpoint", help="checkpoint .pth, training run folder, or best/ folder (default with "
                        "--experiments: the first experiment's best/)")
    parser.add_argument("--experiments", nargs="+", metavar="DIR",
                        help="Tune experiment folders (or a sweep's --storage-path holding them; paths or storage "
                        "URIs): their trials on the page, to compare and promote (PUT /v1/model)")
    parser.add_argument("--models-dir", help="where the promoted model's record is kept (default ~/.cache/vsr/models)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="HTTP host (default 127.0.0.1; 0.0.0.0 exposes it: set an API key then)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--allowed-hosts", nargs="+", metavar="NAME",
                        help="host names the app answers to (the Host header); default: loopback names, or any "
                        "name when the server has an API key. A keyless server on --host 0.0.0.0 needs this "
                        "(DNS rebinding guard; '*' allows any)")
    parser.add_argument("--api-key-file", help=f"file holding the API keys clients must send as "
                        f"'Authorization: Bearer <key>', one per line (default: ${API_KEY_ENV}; neither: none)")
    parser.add_argument("--jobs-dir", help="where video jobs keep uploads and results (default ~/.cache/vsr/jobs)")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per replica (= torch threads)")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per replica")
    parser.add_argument("--num-replicas", type=int, default=1)
    parser.add_argument("--address", default=None, help="join a running Ray cluster instead of starting one")


def served_checkpoint(args: argparse.Namespace) -> Path:
    """--checkpoint, else the best/ export of the first local --experiments folder."""
    if args.checkpoint:
        return Path(args.checkpoint).expanduser()
    local = [Path(e).expanduser() for e in args.experiments or [] if not is_uri(e)]
    if not local:
        raise SystemExit("error: give --checkpoint (or --experiments with a local sweep folder holding best/)")
    return local[0]


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM; then shut Serve down, and Ray if it started a local one."""
    import ray
    from ray import serve as ray_serve

    from serve.app import build_app
    from vsr_core.ray_connect import connect_ray

    if args.host not in LOOPBACK_HOSTS and not (args.api_key_file or os.environ.get(API_KEY_ENV)):
        print(f"warning: serving on {args.host} without an API key: anyone who can reach this port can use it. "
              f"Set {API_KEY_ENV} or --api-key-file.", file=sys.stderr)
        if not args.allowed_hosts:
            print("note: without an API key the app answers only to loopback host names; other machines get 403 "
                  "host_not_allowed until --allowed-hosts names this machine", file=sys.stderr)
    checkpoint = resolve_checkpoint_path(served_checkpoint(args)).resolve()  # fail fast, absolute
    started_ray = False
    try:
        context = connect_ray(args.address)
        started_ray = context is not None and not args.address
        # After ray.init, which installs a SIGTERM handler of its own: stop like Ctrl-C does.
        signal.signal(signal.SIGTERM, _raise_interrupt)
        ray_serve.start(http_options={"host": args.host, "port": args.port})
        app_args = {"checkpoint": str(checkpoint), "num_cpus": args.num_cpus, "num_gpus": args.num_gpus,
                    "num_replicas": args.num_replicas}
        if args.api_key_file:
            app_args["api_key_file"] = str(Path(args.api_key_file).expanduser().resolve())
        if args.allowed_hosts:
            app_args["allowed_hosts"] = list(args.allowed_hosts)
        if args.jobs_dir:
            app_args["jobs_dir"] = str(Path(args.jobs_dir).expanduser().resolve())
        if args.experiments:
            app_args["experiments"] = [location if is_uri(location) else str(Path(location).expanduser().resolve())
                                       for location in args.experiments]
        if args.models_dir:
            app_args["models_dir"] = str(Path(args.models_dir).expanduser().resolve())
        ray_serve.run(build_app(app_args), name="vsr", route_prefix="/")
        base = f"http://{args.host}:{args.port}"
        print(f"serving {checkpoint}")
        print(f"  page {base}/")
        print(f"  POST {base}/v1/upscale        5 frames -> 3x center frame (PNG)")
        print(f"  POST {base}/v1/jobs           a video of any length -> a job on the cluster")
        print(f"  GET  {base}/v1/model")
        if args.experiments:
            print(f"  GET  {base}/v1/experiments   the trials of {len(args.experiments)} experiment folder(s)")
        print(f"  docs {base}/docs")
        if getattr(context, "dashboard_url", None):
            print(f"  Ray dashboard http://{context.dashboard_url}")
        print("Ctrl-C to stop.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("shutting down ...", flush=True)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if ray.is_initialized():
            ray_serve.shutdown()
            if started_ray:
                ray.shutdown()
    return 0


if __name__ == "__main__":
    main()

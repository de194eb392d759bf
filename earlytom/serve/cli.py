"""`earlytom serve`: the argument parser and handler. Imports no server library until the command runs, so
`earlytom` works without the [serve] extra.

    earlytom serve --model tiny --port 8000
    earlytom serve --engine engines/llava-ov-0.5b --allowed-local-media-path ~/videos --api-key KEY
    earlytom serve --engine engines/llava-ov-0.5b --require-signature builder.pub
    earlytom serve --model tiny --ray --replicas 2
"""

import argparse
import errno
import os
import socket
from pathlib import Path

from earlytom.command_line import add_debug_arg
from earlytom.runtime.backends.base import METHODS

DEFAULT_MAX_VIDEO_BYTES = 64 * 2**20
DEFAULT_MAX_QUEUE = 16
LISTEN_FIXES = {
    errno.EADDRINUSE: "choose another --port, or stop the program listening on it",
    errno.EACCES: "choose a --port above 1023 (lower ones need privileges)",
    errno.EADDRNOTAVAIL: "give --host an address of this machine (127.0.0.1, or 0.0.0.0 for all)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model")
    model.add_argument("--engine", type=Path, default=None, help="an engine directory written by build_engine")
    model.add_argument(
        "--model",
        default=None,
        help="the eager backend of this model (with --engine: the model the directory must hold)",
    )
    model.add_argument("--random-init", action="store_true", help="random weights (eager backend; latency work)")
    model.add_argument(
        "--require-signature",
        type=Path,
        default=None,
        metavar="PUB",
        help="--engine: refuse to start on a directory not signed (build_engine --sign) by this ed25519 public key",
    )
    model.add_argument("--frames", type=int, default=None, help="frames sampled per video (default: the pipeline's)")
    model.add_argument("--method", choices=METHODS, default="earlytom")
    model.add_argument("--retain-ratio", type=float, default=None, help="r in (0, 1] (default: the pipeline's)")
    http = parser.add_argument_group("server")
    http.add_argument("--host", default="127.0.0.1")
    http.add_argument("--port", type=int, default=8000)
    http.add_argument(
        "--served-model-name",
        default=None,
        help="the `model` clients send (default: --model, or the engine directory's name)",
    )
    http.add_argument(
        "--allowed-local-media-path",
        type=Path,
        default=None,
        help="the only directory file:// video URLs may point into (default: file:// refused)",
    )
    http.add_argument(
        "--max-video-bytes",
        type=int,
        default=DEFAULT_MAX_VIDEO_BYTES,
        help=f"largest video accepted (default {DEFAULT_MAX_VIDEO_BYTES})",
    )
    http.add_argument(
        "--api-key", default=None, help="require Authorization: Bearer KEY on every path but /health and /metrics"
    )
    http.add_argument(
        "--max-queue",
        type=int,
        default=DEFAULT_MAX_QUEUE,
        help=f"requests that may wait for the model before 503 (default {DEFAULT_MAX_QUEUE})",
    )
    ray = parser.add_argument_group("ray serve")
    ray.add_argument("--ray", action="store_true", help="serve replicas on Ray Serve (the [ray] extra)")
    ray.add_argument("--replicas", type=int, default=None, help="replicas with --ray (default 1)")
    ray.add_argument("--cpus-per-replica", type=float, default=None, help="CPUs Ray reserves per replica (default 1)")
    add_debug_arg(parser)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `serve` (with its handler as `func`) on the `earlytom` command's subparsers."""
    parser = subparsers.add_parser("serve", help="an OpenAI-compatible video chat server")
    add_arguments(parser)
    parser.set_defaults(func=serve)
    return parser


def require(extra: str, module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ValueError(
            f"earlytom serve{' --ray' if extra == 'ray' else ''} needs the [{extra}] extra "
            f"({error.name} is missing): pip install 'earlytom[{extra}]'"
        ) from error


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on host:port, or a ValueError naming them and the fix (a port in use, a foreign host)."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        return socket.create_server(address, family=family)
    except OSError as error:  # create_server's message repeats the address; a failed lookup has a negative errno
        reason = os.strerror(error.errno) if error.errno and error.errno > 0 else error.strerror
        fix = LISTEN_FIXES.get(error.errno, "check --host and --port")
        raise ValueError(f"cannot listen on --host {host} --port {port}: {reason}; {fix}") from error


def check_signature(engine: Path | None, key: Path) -> None:
    """EngineDirError (a ValueError) unless the engine directory is signed by the ed25519 public key in `key`."""
    if engine is None:
        raise ValueError("--require-signature applies to an --engine directory; the eager model has nothing signed")
    from earlytom.engine.signing import public_key, verify_signature

    verify_signature(engine, public_key(key))


def serve(args: argparse.Namespace) -> int:
    """Check the engine's signature (--require-signature), listen, load the model, then serve until interrupted
    (user errors are ValueErrors, as for every command). The port is taken first: one in use fails at once, not
    after the model has loaded."""
    if not args.ray and (args.replicas is not None or args.cpus_per_replica is not None):
        raise ValueError("--replicas and --cpus-per-replica need --ray")
    if args.require_signature is not None:
        check_signature(args.engine, args.require_signature)
    uvicorn = require("serve", "uvicorn")
    app_module = require("serve", "earlytom.serve.app")
    model_module = require("serve", "earlytom.serve.model")
    spec = model_module.ModelSpec(
        engine=args.engine,
        model=args.model,
        random_init=args.random_init,
        frames=args.frames,
        method=args.method,
        retain_ratio=args.retain_ratio,
        trusted_key=args.require_signature,  # checked again where each replica loads the directory
    )
    settings = app_module.Settings(
        served_model_name=args.served_model_name if args.served_model_name is not None else spec.default_name,
        allowed_local_media_path=args.allowed_local_media_path,
        max_video_bytes=args.max_video_bytes,
        api_key=args.api_key,
        max_queue=args.max_queue,
    )
    if args.ray:
        require("ray", "ray.serve")
        from earlytom.serve import ray_app

        ray_app.run(
            spec,
            settings,
            host=args.host,
            port=args.port,
            replicas=1 if args.replicas is None else args.replicas,
            cpus_per_replica=1.0 if args.cpus_per_replica is None else args.cpus_per_replica,
        )
        return 0
    with listen(args.host, args.port) as server_socket:
        app = app_module.create_app(spec.load(), settings)
        uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[server_socket])
    return 0

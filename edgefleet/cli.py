"""`edgefleet` command line: one click group, each area registers its own commands.

Each area's `register(app)` must stay cheap: heavy imports (onnxruntime, torch, grpc) happen
inside the command functions, so `edgefleet --help` starts fast and never imports torch.
"""

from __future__ import annotations

import importlib

import click

from common.cli import CONTEXT, OrderedGroup
from edgefleet.errors import ExitCode, missing_extra

# Modules exposing `register(app: click.Group) -> None`, in help order.
COMMAND_MODULES = (
    "edgefleet.serve",  # serve (the server, its planner and the fleet agent)
    "server.hardware.cli",  # probe
    "client.cli",  # stream
    "fleet.cli",  # controller
    "edgefleet.export.cli",  # export
    "edgefleet.model_cli",  # model init, model check
    "edgefleet.demo",  # demo
)


def build_app() -> click.Group:
    app = OrderedGroup(
        name="edgefleet",
        help="Neural-network inference on fleets of edge devices.",
        no_args_is_help=True,
        context_settings=CONTEXT,
    )
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # An area still being built is simply absent; a broken import inside it is not.
            if exc.name != module_name and not module_name.startswith(f"{exc.name}."):
                raise
            continue
        module.register(app)
    return app


def main() -> None:
    app = build_app()
    try:
        app()
    except ModuleNotFoundError as exc:
        # The device install has no OpenCV, torch or psycopg: a command that needs one says
        # which extra brings it, in one line, instead of a traceback.
        line = missing_extra(exc)
        if line is None:
            raise
        click.echo(f"edgefleet: {line}", err=True)
        raise SystemExit(int(ExitCode.USAGE)) from None


if __name__ == "__main__":
    main()

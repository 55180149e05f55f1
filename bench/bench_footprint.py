"""Footprint of each install role: size on disk, server RSS and time to ready, memory under load.

For each role a fresh virtualenv gets `pip install <checkout>[extra]`, as a new user would
(the roles that pull torch get the CPU wheel first: a loose torch is a 5 GB CUDA build). Then,
for the roles that serve, `edgefleet serve` runs from that venv in an empty working directory
with an empty planner cache (so the first start converts what the planner wants converted):
RSS and time to ready with one model and with the default repository, the child processes it
ran at once while starting, the files it left in its working directory, and its RSS during and
after 20 refused 30 MB and 64 MB KServe requests (`bench/footprint_probe.py`).

`--before PATH` measures another checkout the same way in the same run (the old main:
`git worktree add /tmp/before c149615`), side by side. Writes the `<!-- bench:footprint -->`
section of docs/benchmarks.md.

    .venv/bin/python -m bench.bench_footprint --before /tmp/before [--roles device,dev]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.footprint_probe import MB, PROBE_MODEL, SeriesResult, ServeProcess, request_series
from bench.machine import describe, write_section

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = ROOT / "models"
TORCH_PIN = "torch==2.13.0"

# role -> (extras, whether it pulls torch). "device" is the plain `pip install edgefleet`.
ROLES: dict[str, tuple[str, bool]] = {
    "device": ("", False),
    "torchscript": ("torchscript", True),
    "int8": ("int8", False),
    "ocr": ("ocr", False),
    "camera": ("camera", False),
    "controller": ("controller", False),
    "export": ("export", True),
    "dev": ("dev", True),
}
SERVING_ROLES = ("device", "dev")


@dataclass
class Install:
    label: str
    venv: Path
    command: str
    seconds: float = 0.0
    # distribution -> bytes on disk (files, their compiled bytecode and bundled libraries)
    sizes: dict[str, int] = field(default_factory=dict)
    # what a fresh venv already holds before the install (pip, setuptools)
    baseline: int = 0

    @property
    def site_packages(self) -> Path:
        return next((self.venv / "lib").glob("python3*/site-packages"))

    @property
    def added(self) -> int:
        return sum(self.sizes.values()) - self.baseline


@dataclass
class Conversions:
    label: str
    ready_s: float
    children: int  # conversion children alive at once, at most
    leftovers: list[str]
    precisions: str


@dataclass
class Serving:
    label: str
    one_model: tuple[float, int]  # (seconds to ready, RSS bytes)
    repository: tuple[float, int]
    startup_children: int
    leftovers: list[str]
    loaded: str
    series: list[SeriesResult]


def du(path: Path) -> int:
    """Bytes on disk (blocks, as `du` counts them)."""
    if path.is_symlink():
        return 0
    if path.is_file():
        return path.stat().st_blocks * 512
    return sum(du(child) for child in path.iterdir())


def sizes_by_distribution(site_packages: Path) -> dict[str, int]:
    """Bytes on disk per installed distribution: every top-level entry its RECORD names
    (packages, `*.libs` folders of bundled libraries, the dist-info itself)."""
    owners: dict[str, str] = {}
    for record in site_packages.glob("*.dist-info/RECORD"):
        name = record.parent.name.split("-")[0].lower().replace("_", "-")
        for line in record.read_text(errors="replace").splitlines():
            top = line.split(",")[0].split("/")[0]
            if top and not top.startswith(".."):
                owners.setdefault(top, name)
    sizes: dict[str, int] = {}
    for entry in site_packages.iterdir():
        owner = owners.get(entry.name, entry.name)
        sizes[owner] = sizes.get(owner, 0) + du(entry)
    return sizes


def install(
    label: str, venv: Path, checkout: Path, extras: str, torch: bool, reuse: bool = False
) -> Install:
    """A fresh venv with the role installed (`reuse`: the venv an earlier run left, as is)."""
    import time

    target = f"{checkout}[{extras}]" if extras else str(checkout)
    steps = [f"pip install {TORCH_PIN}"] if torch else []
    steps.append(
        f"pip install {'.' if checkout == ROOT else checkout}{f'[{extras}]' if extras else ''}"
    )
    result = Install(label, venv, " && ".join(steps))
    if reuse and (venv / "bin" / "edgefleet").exists():
        result.sizes = sizes_by_distribution(result.site_packages)
        result.baseline = sum(
            size for name, size in result.sizes.items() if name in ("pip", "setuptools")
        )
        return result
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    result.baseline = sum(sizes_by_distribution(result.site_packages).values())
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    started = time.perf_counter()
    if torch:
        subprocess.run([*pip, TORCH_PIN], check=True, stderr=subprocess.DEVNULL)
    subprocess.run([*pip, target], check=True, stderr=subprocess.DEVNULL)
    result.seconds = time.perf_counter() - started
    result.sizes = sizes_by_distribution(result.site_packages)
    return result


def ensure_protos(checkout: Path) -> None:
    """An old checkout builds a wheel only with its protobuf modules generated in place."""
    sources = sorted(str(path.relative_to(checkout)) for path in checkout.glob("protos/**/*.proto"))
    if (checkout / "setup.py").is_file() or not sources:
        return
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--pyi_out=.",
         "--grpc_python_out=.", *sources],
        cwd=checkout, check=True,
    )  # fmt: skip


def serve(label: str, venv: Path) -> Serving:
    command = [str(venv / "bin" / "edgefleet")]
    with tempfile.TemporaryDirectory(prefix="edgefleet-cache-") as cache:
        env = {**os.environ, "XDG_CACHE_HOME": cache}
        env.pop("PYTHONPATH", None)  # the venv's own install, never this checkout
        with ServeProcess(command, REPOSITORY, "--model", PROBE_MODEL, env=env) as one:
            one_model = (one.ready_s, one.ready_rss)
    with tempfile.TemporaryDirectory(prefix="edgefleet-cache-") as cache:
        env = {**os.environ, "XDG_CACHE_HOME": cache}
        env.pop("PYTHONPATH", None)
        with ServeProcess(command, REPOSITORY, env=env) as server:
            series = [request_series(server, size, reference=server.ready_rss) for size in (30, 64)]
            loaded = next(
                (line.split("loaded: ", 1)[1] for line in server.log().splitlines()
                 if "model(s) loaded: " in line),
                "?",
            )  # fmt: skip
            return Serving(
                label=label,
                one_model=one_model,
                repository=(server.ready_s, server.ready_rss),
                startup_children=server.startup_children,
                leftovers=server.leftovers(),
                loaded=loaded,
                series=series,
            )


def convert_at_start(label: str, venv: Path, models: list[str]) -> Conversions:
    """Start with `--precision int8` pinned for `models`: every conversion runs before the
    server is ready (the path a CPU without int8 instructions takes too)."""
    command = [str(venv / "bin" / "edgefleet")]
    # "all": the default repository, where a model the guard rejects is skipped, not fatal.
    arguments = [item for model in models if model != "all" for item in ("--model", model)]
    with tempfile.TemporaryDirectory(prefix="edgefleet-cache-") as cache:
        env = {**os.environ, "XDG_CACHE_HOME": cache}
        env.pop("PYTHONPATH", None)
        with ServeProcess(
            command, REPOSITORY, *arguments, "--precision", "int8", "--log-level", "INFO",
            env=env, timeout_s=1800,
        ) as server:  # fmt: skip
            plans = [
                line.split("plan ", 1)[1].split(",")[0]
                for line in server.log().splitlines()
                if " plan " in line and ": onnx " in line
            ]
            return Conversions(
                label, server.ready_s, server.startup_children, server.leftovers(),
                "; ".join(plans) or "?",
            )  # fmt: skip


def conversion_rows(items: list[Conversions], models: list[str]) -> list[str]:
    named = "" if models == ["all"] else f" --model {' --model '.join(models)}"
    rows = [
        f"Start with `--precision int8{named}` on the default repository (conversions and the "
        "accuracy guard run before the server is ready; a model whose int8 copy the guard "
        "rejects is skipped):",
        "",
        "| install | ready | conversion children at once | left in the working directory |",
        "|---|---:|---:|---|",
    ]
    rows += [
        f"| {item.label} | {item.ready_s:.0f} s | {item.children} | "
        f"{', '.join(item.leftovers) or 'nothing'} |"
        for item in items
    ]
    return rows


def size_rows(installs: list[Install]) -> list[str]:
    rows = [
        "| role | command | site-packages on disk | added to a fresh venv | install time | largest packages (MB) |",
        "|---|---|---:|---:|---:|---|",
    ]
    for item in installs:
        ignored = {"pip", "setuptools"}
        biggest = sorted(
            ((name, size) for name, size in item.sizes.items() if name not in ignored),
            key=lambda pair: -pair[1],
        )[:8]
        largest = ", ".join(f"{name} {size / MB:.0f}" for name, size in biggest)
        rows.append(
            f"| {item.label} | `{item.command}` | {sum(item.sizes.values()) / MB:.0f} MB | "
            f"{item.added / MB:.0f} MB | {f'{item.seconds:.0f} s' if item.seconds else 'earlier run'} "
            f"| {largest} |"
        )
    return rows


def serving_rows(servings: list[Serving]) -> list[str]:
    rows = [
        "| install | one model: ready, RSS | default repository: ready, RSS | child processes at once while starting | left in the working directory |",
        "|---|---:|---:|---:|---|",
    ]
    for item in servings:
        rows.append(
            f"| {item.label} | {item.one_model[0]:.1f} s, {item.one_model[1] / MB:.0f} MB | "
            f"{item.repository[0]:.1f} s, {item.repository[1] / MB:.0f} MB | "
            f"{item.startup_children} | {', '.join(item.leftovers) or 'nothing'} |"
        )
    rows += [
        "",
        "| install | series | answered | RSS when ready | before the series | peak (over ready) | 10 s after (over ready) | back within ready + 30 MB |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for item in servings:
        ready = item.repository[1]
        for series in item.series:
            settled = (
                f"{series.settled_s:.1f} s" if series.settled_s != float("inf") else "not in 10 s"
            )
            rows.append(
                f"| {item.label} | {series.count} x {series.size_mb} MB | {', '.join(series.codes)} | "
                f"{ready / MB:.0f} MB | {series.before_rss / MB:.0f} MB | {series.peak_rss / MB:.0f} MB "
                f"({(series.peak_rss - ready) / MB:+.0f}) | {series.after_rss / MB:.0f} MB "
                f"({(series.after_rss - ready) / MB:+.0f}) | {settled} |"
            )
    rows += ["", "Models loaded from the default repository:", ""]
    rows += [f"- {item.label}: {item.loaded}" for item in servings]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", type=Path, help="another checkout to measure side by side")
    parser.add_argument("--roles", default=",".join(ROLES), help="comma-separated roles")
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "edgefleet-footprint"
    )
    parser.add_argument("--no-serve", action="store_true", help="sizes only")
    parser.add_argument(
        "--int8-models",
        default="",
        help="comma-separated, or 'all' for the default repository: also start with int8 pinned",
    )
    parser.add_argument(
        "--reuse", action="store_true", help="keep the venvs of an earlier run (no install)"
    )
    args = parser.parse_args()
    int8_models = [model for model in args.int8_models.split(",") if model]
    conversions: list[Conversions] = []
    machine = describe()
    roles = [role for role in args.roles.split(",") if role]
    installs: list[Install] = []
    servings: list[Serving] = []
    if args.before is not None:
        ensure_protos(args.before)
        before = install(
            "before: full install", args.workdir / "before", args.before, "", True, args.reuse
        )
        before.command = f"pip install {TORCH_PIN} && pip install ."
        installs.append(before)
        print(size_rows([before])[-1], flush=True)
        if not args.no_serve:
            servings.append(serve("before (everything installed)", before.venv))
            print(serving_rows(servings[-1:])[2], flush=True)
        if int8_models:
            conversions.append(convert_at_start("before", before.venv, int8_models))
            print(conversion_rows(conversions[-1:], int8_models)[-1], flush=True)
    for role in roles:
        extras, torch = ROLES[role]
        item = install(role, args.workdir / role, ROOT, extras, torch, args.reuse)
        installs.append(item)
        print(size_rows([item])[-1], flush=True)
        if role in SERVING_ROLES and not args.no_serve:
            servings.append(serve(f"{role}", item.venv))
            print(serving_rows(servings[-1:])[2], flush=True)
        if role == "dev" and int8_models:
            conversions.append(convert_at_start(role, item.venv, int8_models))
            print(conversion_rows(conversions[-1:], int8_models)[-1], flush=True)
    body = "\n".join(
        [
            "## Footprint of each install role (`bench/bench_footprint.py`)",
            "",
            f"Machine: {machine}.",
            "Each role is installed into a fresh virtualenv as a new user would (`pip install`, "
            "bytecode compiled; torch's CPU wheel first where the role pulls torch). Sizes are "
            "blocks on disk (`du`) of site-packages, per distribution with its bundled "
            'libraries; "added" leaves out what a fresh venv already holds (pip, setuptools). '
            "Servers run from that venv (`edgefleet serve`, the hardware planner, an empty "
            "planner cache, an empty working directory): time from exec to the port file and "
            "RSS then; the series are 20 KServe `ModelInfer` requests sent one after the other "
            f"to `{PROBE_MODEL}`, each refused (30 MB: under the 32 MB message limit, the wrong "
            "size for the input; 64 MB: over the limit), RSS sampled every 20 ms.",
            "",
            *size_rows(installs),
            "",
            *serving_rows(servings),
            "",
            *(conversion_rows(conversions, int8_models) + [""] if conversions else []),
            "Reproduce: `git worktree add /tmp/before c149615 && .venv/bin/python -m "
            "bench.bench_footprint --before /tmp/before`.",
        ]
    )
    write_section("footprint", body)
    print(body)


if __name__ == "__main__":
    main()

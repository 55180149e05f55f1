"""Real external services for tests and benchmarks: nginx (a bundle origin and its mirrors),
PostgreSQL (the replicated controller's store), headless Chromium, an RTSP camera
(GStreamer's RTSP server) and an MQTT broker (mosquitto), from Debian's packages.

Each is installed with apt-get when missing (CI is a fresh root machine), started on a free port
in a temporary directory, and stopped afterwards. A test that needs one is skipped, with the
reason, only when the package cannot be installed here. The pytest fixtures that start them are
in tests/fleet/conftest.py.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from testkit.processes import Spawned, free_port, listening, spawn

APT_TIMEOUT_S = 900
_apt_updated = False


def _apt_install(package: str) -> str | None:
    """Install a Debian package; None on success, else why it could not be installed."""
    global _apt_updated
    if shutil.which("apt-get") is None:
        return "apt-get is not available (not a Debian system)"
    if os.geteuid() != 0:
        return f"{package} is not installed and installing it needs root"
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    try:
        if not _apt_updated:
            subprocess.run(
                ["apt-get", "update", "-q", *lock],
                check=True,
                capture_output=True,
                timeout=APT_TIMEOUT_S,
                env=environment,
            )
            _apt_updated = True
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *lock, package],
            check=True,
            capture_output=True,
            timeout=APT_TIMEOUT_S,
            env=environment,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        output = getattr(error, "stderr", b"") or b""
        return f"apt-get install {package} failed: {output.decode(errors='replace')[-300:]}"
    return None


def _wait_listening(port: int, process: Spawned, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.running:
            return False
        if listening(port):
            return True
        time.sleep(0.05)
    return False


# nginx


def nginx_binary() -> str:
    """The nginx executable, installed from Debian if missing; skips the test if impossible."""
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found:
        return found
    reason = _apt_install("nginx")
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    if reason or not Path(found).exists():
        pytest.skip(reason or "nginx was installed but its binary is missing")
    return found


@dataclass
class Nginx:
    """A running nginx serving `roots[name]` at `http://127.0.0.1:PORT/name/`."""

    port: int
    prefix: Path
    process: Spawned
    roots: dict[str, Path] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def access_log(self) -> list[str]:
        """`path status range` per request, oldest first."""
        path = self.prefix / "access.log"
        return path.read_text().splitlines() if path.exists() else []

    def stop(self) -> None:
        self.process.stop(grace_s=10)


def start_nginx(prefix: Path, roots: dict[str, Path]) -> Nginx:
    """Start nginx (no daemon) serving each directory of `roots` under `/<name>/`."""
    binary = nginx_binary()
    prefix.mkdir(parents=True, exist_ok=True)
    locations = "\n".join(
        f"      location /{name}/ {{ alias {root.resolve()}/; }}" for name, root in roots.items()
    )
    # As root, workers would drop to `nobody`, who cannot read pytest's 0700 temp directories.
    user = "user root;" if os.geteuid() == 0 else ""
    for _ in range(5):
        port = free_port()
        temp = {name: prefix / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
        (prefix / "nginx.conf").write_text(
            f"""
{user}
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    types {{ application/octet-stream efb; }}
    default_type application/octet-stream;
    log_format ranges '$uri $status "$http_range"';
    access_log {prefix}/access.log ranges;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    sendfile on;
    server {{
      listen 127.0.0.1:{port};
{locations}
    }}
}}
"""
        )
        # Errors go to error.log (-e); the console log catches what nginx says before that.
        process = spawn(
            [binary, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", "nginx.conf"],
            prefix / "console.log",
        )
        if _wait_listening(port, process, 10):
            return Nginx(port, prefix, process, dict(roots))
        process.kill()
    errors = (prefix / "error.log").read_text() if (prefix / "error.log").exists() else ""
    raise RuntimeError(f"nginx did not start: {errors[-500:]}")


# An RTSP camera

SYSTEM_PYTHON = "/usr/bin/python3"
# PyGObject and GStreamer's RTSP server, and the elements the camera's pipeline uses:
# videotestsrc (base), rtph264pay (good), x264enc (ugly).
RTSP_PACKAGES = (
    "python3-gi",
    "gir1.2-gstreamer-1.0",
    "gir1.2-gst-rtsp-server-1.0",
    "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good",
    "gstreamer1.0-plugins-ugly",
)
_RTSP_CHECK = (
    "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
    "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
    "missing = [e for e in ('videotestsrc', 'x264enc', 'rtph264pay')"
    " if Gst.ElementFactory.find(e) is None]; assert not missing, missing"
)
RTSP_PROGRAM = Path(__file__).parent / "programs" / "rtsp_camera.py"


def _rtsp_server_missing() -> str | None:
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} is missing"
    checked = subprocess.run(
        [SYSTEM_PYTHON, "-c", _RTSP_CHECK], capture_output=True, text=True, timeout=60
    )
    return None if checked.returncode == 0 else (checked.stderr.strip()[-300:] or "failed")


def rtsp_server_available() -> None:
    """GStreamer's RTSP server for Debian's python3, installed when missing; skips the test
    (with the reason) only when it cannot be installed here."""
    if _rtsp_server_missing() is None:
        return
    for package in RTSP_PACKAGES:
        reason = _apt_install(package)
        if reason:
            pytest.skip(reason)
    still = _rtsp_server_missing()
    if still:
        pytest.skip(f"GStreamer's RTSP server is installed but does not work: {still}")


@dataclass
class RtspCamera:
    """A live H.264 test pattern at `url`; `kill()` and `start()` again on the same port."""

    port: int
    directory: Path
    size: tuple[int, int] = (320, 240)
    fps: int = 15
    process: Spawned | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/camera"

    def start(self, timeout_s: float = 30.0) -> None:
        self.starts += 1
        width, height = self.size
        process = spawn(
            [SYSTEM_PYTHON, str(RTSP_PROGRAM), str(self.port), str(width), str(height),
             str(self.fps)],
            self.directory / f"rtsp-{self.starts}.log",
        )  # fmt: skip
        if not _wait_listening(self.port, process, timeout_s):
            process.kill()
            raise RuntimeError(f"RTSP camera did not listen on {self.port}:\n{process.log_tail()}")
        self.process = process

    def kill(self) -> None:
        """SIGKILL: the camera vanishes mid-stream, as a power cut does."""
        if self.process is not None:
            self.process.kill()
            self.process = None


def rtsp_camera(directory: Path, *, started: bool = True) -> RtspCamera:
    """An RTSP camera on a free port (started unless `started` is false: a camera down at start
    that the test brings up later)."""
    rtsp_server_available()
    directory.mkdir(parents=True, exist_ok=True)
    camera = RtspCamera(free_port(), directory)
    if started:
        camera.start()
    return camera


# PostgreSQL


def _postgres_bindir() -> Path | None:
    # Debian keeps initdb and pg_ctl off PATH, under /usr/lib/postgresql/<major>/bin.
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major, reverse=True)
    return Path(candidates[0]).parent if candidates else None


def _major(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


@dataclass
class Postgres:
    """A private PostgreSQL cluster; `dsn(db)` connects with password authentication."""

    host: str
    port: int
    user: str
    password: str
    directory: Path
    bindir: Path
    run_as: list[str]

    def dsn(self, database: str = "postgres", with_password: bool = True) -> str:
        secret = f":{self.password}" if with_password else ""
        return f"postgresql://{self.user}{secret}@{self.host}:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-d", self.dsn(database), "-c", sql],
            check=True, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return result.stdout.strip()

    def create_database(self) -> str:
        """A fresh, empty database for one test; its name."""
        name = "t_" + secrets.token_hex(6)
        self.psql(f"CREATE DATABASE {name}")
        return name

    def pg_ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.directory / "data"), *args],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip

    def start(self) -> None:
        options = f"-p {self.port} -h {self.host} -k {self.directory}"
        self.pg_ctl("-w", "-t", "60", "-l", str(self.directory / "server.log"), "-o", options,
                    "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-w", "-m", mode, "stop")

    def remove(self, mode: str = "immediate") -> None:
        """Stop it if it still runs (a test may have stopped it already) and delete its files."""
        with contextlib.suppress(subprocess.SubprocessError):
            self.stop(mode)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_postgres() -> Postgres:
    """initdb and start a cluster in a new temporary directory, as an unprivileged user."""
    bindir = _postgres_bindir()
    if bindir is None:
        reason = _apt_install("postgresql")
        bindir = _postgres_bindir()
        if reason or bindir is None:
            pytest.skip(reason or "postgresql was installed but initdb is missing")
    directory = Path(tempfile.mkdtemp(prefix="edgefleet-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root: the Debian package's `postgres` user runs it.
        run_as = ["runuser", "-u", "postgres", "--"]
        shutil.chown(directory, "postgres", "postgres")
    user, password = "edgefleet", secrets.token_urlsafe(16)
    password_file = directory / "password"
    password_file.write_text(password + "\n")
    if run_as:
        shutil.chown(password_file, "postgres", "postgres")
    subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(directory / "data"), "-U", user,
         f"--pwfile={password_file}", "--auth-local=trust", "--auth-host=scram-sha-256",
         "-E", "UTF8", "--locale=C.UTF-8"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    password_file.unlink()
    with (directory / "data" / "postgresql.conf").open("a") as conf:
        # A test cluster: durability is not what is tested, start-up and speed are.
        conf.write("fsync = off\nfull_page_writes = off\n")
        conf.write("max_connections = 200\nshared_buffers = 64MB\n")
    for _ in range(5):
        server = Postgres("127.0.0.1", free_port(), user, password, directory, bindir, run_as)
        try:
            server.start()
            return server
        except subprocess.CalledProcessError:
            continue
    log = (directory / "server.log").read_text() if (directory / "server.log").exists() else ""
    raise RuntimeError(f"PostgreSQL did not start: {log[-500:]}")


# Chromium


def chromium_binary() -> str:
    """Debian's headless-capable Chromium, installed if missing; skips the test if impossible."""
    found = shutil.which("chromium")
    if found:
        return found
    reason = _apt_install("chromium")
    found = shutil.which("chromium")
    if reason or not found:
        pytest.skip(reason or "chromium was installed but its binary is missing")
    return found


def chromium(url: str, profile: Path, *options: str, budget_ms: int = 10_000) -> str:
    """Load `url` in headless Chromium, let its scripts run for `budget_ms` of virtual time, and
    return stdout (the DOM with --dump-dom). Certificate errors are ignored: the test servers
    use the controller's private CA."""
    command = [
        chromium_binary(), "--headless", "--disable-gpu", "--no-first-run",
        "--ignore-certificate-errors", f"--user-data-dir={profile}",
        f"--virtual-time-budget={budget_ms}", *options, url,
    ]  # fmt: skip
    if os.geteuid() == 0:
        command.insert(1, "--no-sandbox")  # Chromium's sandbox refuses to run as root
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"chromium failed ({result.returncode}): {result.stderr[-800:]}")
    return result.stdout


# An MQTT broker


def mosquitto_binary() -> str:
    """The mosquitto broker, installed from Debian if missing; skips the test if impossible."""
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found:
        return found
    reason = _apt_install("mosquitto")
    found = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if reason or not Path(found).exists():
        pytest.skip(reason or "mosquitto was installed but its binary is missing")
    return found


@dataclass
class Mosquitto:
    """A running mosquitto broker on 127.0.0.1:`port` (anonymous, no persistence)."""

    port: int
    directory: Path
    process: Spawned

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.stop(grace_s=10)

    def start_again(self, timeout_s: float = 10.0) -> None:
        """Start it again on the same port (after `stop`)."""
        self.process = _spawn_mosquitto(self.directory, self.port)
        if not _wait_listening(self.port, self.process, timeout_s):
            raise RuntimeError(f"mosquitto did not start again: {self.process.log_tail()}")


def _spawn_mosquitto(directory: Path, port: int) -> Spawned:
    # As root, mosquitto would drop to its own user, who cannot read pytest's temp directories.
    user = "user root\n" if os.geteuid() == 0 else ""
    config = directory / "mosquitto.conf"
    config.write_text(
        f"{user}listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n"
    )
    return spawn([mosquitto_binary(), "-c", str(config)], directory / "mosquitto.log")


def start_mosquitto(directory: Path) -> Mosquitto:
    """Start mosquitto (no daemon) on a free loopback port; `stop()` ends it."""
    directory.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        port = free_port()
        process = _spawn_mosquitto(directory, port)
        if _wait_listening(port, process, 10):
            return Mosquitto(port, directory, process)
        process.kill()
    raise RuntimeError(f"mosquitto did not start: {process.log_tail()}")

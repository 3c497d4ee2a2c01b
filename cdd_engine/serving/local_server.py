"""Start and stop the ``tritonserver`` binary that the ``nvidia-pytriton`` wheel ships, on
localhost, for a model repository written by :func:`~cdd_engine.serving.export_triton`.

    with LocalTritonServer("model_repository") as server:   # free 127.0.0.1 ports
        server.wait_ready(models=["cdd_engine"])
        ... tritonclient.http.InferenceServerClient(server.http_url) ...

The wheel keeps the Python backend's stubs per Python version; as PyTriton does at start, the
stub for this interpreter is copied next to ``libtriton_python.so`` in a private backends
folder (the installed package is never modified). The stub embeds the system libpython and
takes its packages from the ``python`` first on PATH, so the server is started with this
interpreter's ``bin/`` first on PATH (cdd_engine and torch must import there), and with the
wheel's bundled libraries on LD_LIBRARY_PATH. HTTP, gRPC and metrics listen on 127.0.0.1 only.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

PY_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


class ServerUnavailable(RuntimeError):
    """tritonserver is not installed here, or cannot start on this machine."""


@dataclass(frozen=True)
class TritonInstall:
    root: Path          # .../pytriton/tritonserver
    binary: Path        # bin/tritonserver
    python_backend: Path
    stub: Path          # python_backend_stubs/<py>/triton_python_backend_stub
    libs: Path          # nvidia_pytriton.libs (bundled shared libraries)


def find_tritonserver() -> TritonInstall:
    """The server shipped by ``nvidia-pytriton`` (found without importing pytriton)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerUnavailable("nvidia-pytriton is not installed (pip install --no-deps -r requirements/tritonserver.txt installs it)")
    pkg = Path(list(spec.submodule_search_locations)[0])
    root = pkg / "tritonserver"
    inst = TritonInstall(root=root, binary=root / "bin" / "tritonserver",
                         python_backend=root / "backends" / "python",
                         stub=root / "python_backend_stubs" / PY_VERSION / "triton_python_backend_stub",
                         libs=pkg.parent / "nvidia_pytriton.libs")
    for p in (inst.binary, inst.python_backend, inst.stub):
        if not p.exists():
            raise ServerUnavailable(f"nvidia-pytriton's server is incomplete: {p} is missing "
                                    f"(no Python backend stub for Python {PY_VERSION}?)")
    return inst


def prepare_backends(dest: Path, inst: TritonInstall | None = None) -> Path:
    """``dest/python`` = the wheel's Python backend + this interpreter's stub; returns ``dest``."""
    inst = inst or find_tritonserver()
    target = dest / "python"
    if not target.exists():
        shutil.copytree(inst.python_backend, target, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(inst.stub, target / "triton_python_backend_stub")
    return dest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalTritonServer:
    """One ``tritonserver`` process on 127.0.0.1 (ports chosen free unless given).

    ``start()`` launches it; ``wait_ready()`` polls health and model readiness within a bounded
    time; ``stop()`` sends SIGTERM, then SIGKILL to the server's own process group.
    """

    def __init__(self, model_repository: str | os.PathLike, *, work_dir: str | os.PathLike | None = None,
                 http_port: int | None = None, grpc_port: int | None = None, metrics_port: int | None = None,
                 extra_args: Iterable[str] = ()) -> None:
        self.repository = Path(model_repository).resolve()
        self._own_work = work_dir is None
        self.work_dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="cdd_triton_"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.extra_args = list(extra_args)
        self.log_path = self.work_dir / "tritonserver.log"
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def command(self, inst: TritonInstall) -> list[str]:
        backends = prepare_backends(self.work_dir / "backends", inst)
        return [str(inst.binary), f"--model-repository={self.repository}", f"--backend-directory={backends}",
                "--http-address=127.0.0.1", f"--http-port={self.http_port}",
                "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
                "--allow-metrics=true", "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
                "--exit-timeout-secs=10", *self.extra_args]

    def start(self) -> "LocalTritonServer":
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("the server is already running")
        inst = find_tritonserver()
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(inst.libs), env.get("LD_LIBRARY_PATH", "")) if p)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(inst), stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, OSError):
            return 0

    def wait_live(self, timeout: float = 60.0) -> None:
        """The server process answers /v2/health/live; ServerUnavailable if it exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise ServerUnavailable(f"tritonserver exited (code {self.proc.returncode if self.proc else None}) "
                                        f"before it was live; log tail:\n{self.log_tail()}")
            if self._get("/v2/health/live") == 200:
                return
            time.sleep(0.2)
        raise ServerUnavailable(f"tritonserver was not live within {timeout:.0f} s; log tail:\n{self.log_tail()}")

    def wait_ready(self, models: Iterable[str] = (), timeout: float = 180.0) -> None:
        """Live within ``timeout``, then every model in ``models`` ready (RuntimeError naming the
        server log otherwise: a model that fails to load is not an unavailable server)."""
        t0 = time.monotonic()
        self.wait_live(timeout)
        models = list(models)
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited (code {self.proc.returncode}); log tail:\n{self.log_tail()}")
            if all(self._get(f"/v2/models/{m}/ready") == 200 for m in models) \
                    and self._get("/v2/health/ready") == 200:
                return
            time.sleep(0.25)
        raise RuntimeError(f"models {models} not ready within {timeout:.0f} s; log tail:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its backend stubs
                self.proc.wait(10)
        try:  # stubs left behind by a killed server share its process group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        self.stop()
        if self._own_work:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> "LocalTritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

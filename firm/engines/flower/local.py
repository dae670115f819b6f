"""Plumbing: `firm flower up / down`, a SuperLink and N SuperNodes on loopback, to try the Flower engine on one machine.

`up` starts, each in its own process group, with its own FLWR_HOME and log file under the
state directory:
- `flower-superlink` on `engine.superlink` (one HTTP(S) port for SuperNodes, ServerApps and `flwr run`);
  with `database=True` it keeps its state in `<state>/superlink/state.db`, so that it can be
  restarted (`start_again`) while the SuperNodes stay up (in memory, the default, rounds are
  faster: docs/deployment.md, "Resume on Flower");
- N `flower-supernode`s with node config `client-id=i` (and `prompt-file=...` if given), each
  with `--isolation process` and a `firm flower worker` beside it (the warm ClientApp process
  that keeps the model loaded), or with Flower's own per-message executor (`warm=False`).
It records every pid in `<state>/processes.json`; `down` stops exactly those processes (and
their process groups: the ServerApp and ClientApp processes Flower started), SIGTERM then SIGKILL.
With `tls=DIR` (from scripts/make_test_certs.py) the SuperLink serves HTTPS with DIR's server
certificate and requires SuperNode authentication; each node signs with its own key. Without it,
the SuperLink serves plaintext to anyone who reaches it, so `up` refuses a `superlink` address
that is not loopback unless `insecure_non_loopback` (the TLS rule of docs/deployment.md).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tomli_w

from firm.transport import is_loopback_address

CONNECTION = "firm"
"""The name of the SuperLink connection in the Flower home's config.toml (`flwr_home_for`)."""

PROCESSES = "processes.json"


class ClusterError(RuntimeError):
    """The local SuperLink or SuperNodes could not be started or found."""


class PlaintextRefused(ClusterError):
    """A plaintext SuperLink was asked for on an address that other machines can reach."""


@dataclass
class Process:
    role: str
    pid: int
    cmd: list[str]
    log: str
    home: str = ""  # its FLWR_HOME (for `start_again`)


@dataclass
class Cluster:
    """What `up` started: where the SuperLink listens and which processes to stop."""

    state_dir: Path
    superlink: str
    processes: list[Process] = field(default_factory=list)
    root_certificates: str = ""

    def pid(self, role: str) -> int:
        return next(p.pid for p in self.processes if p.role == role)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports on 127.0.0.1 that nothing listens on right now (held together while chosen)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


def console_script(name: str) -> str:
    """A console script of this environment (flower-superlink, flwr, ...), else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def flower_env(flwr_home: Path) -> dict[str, str]:
    # Flower starts its helpers (flower-superexec, flwr-serverapp, ...) by name: this environment's first.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = dict(os.environ, FLWR_HOME=str(flwr_home), FLWR_TELEMETRY_ENABLED="0", PATH=path)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


def _start(cluster: Cluster, role: str, cmd: list[str], home: Path) -> Process:
    home.mkdir(parents=True, exist_ok=True)
    log = cluster.state_dir / f"{role}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=flower_env(home), start_new_session=True)
    entry = Process(role, proc.pid, cmd, str(log), str(home))
    cluster.processes.append(entry)
    _save(cluster)
    return entry


def _save(cluster: Cluster) -> None:
    data = {
        "superlink": cluster.superlink,
        "root_certificates": cluster.root_certificates,
        "processes": [asdict(p) for p in cluster.processes],
    }
    tmp = cluster.state_dir / (PROCESSES + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(cluster.state_dir / PROCESSES)


def wait_for_port(address: str, timeout: float, watch: Process | None = None) -> None:
    """Block until `host:port` accepts TCP connections (or `watch` exits, or the timeout passes)."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if watch is not None and not _alive(watch.pid):
            raise ClusterError(f"{watch.role} exited during start-up; see {watch.log}")
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise ClusterError(
        f"nothing listens on {address} after {timeout:g} s; see the logs in {Path(watch.log).parent if watch else '.'}"
    )


def up(
    state_dir: str | Path,
    nodes: int,
    superlink: str = "127.0.0.1:8000",
    *,
    warm: bool = True,
    tls: str | Path | None = None,
    insecure_non_loopback: bool = False,
    prompt_files: Sequence[str] = (),
    timeout: float = 60.0,
    database: bool = False,
) -> Cluster:
    """Start a SuperLink and `nodes` SuperNodes (client ids 0..nodes-1) on this machine; see the module docstring."""
    if tls is None and not insecure_non_loopback and not is_loopback_address(superlink):
        raise PlaintextRefused(
            f"--superlink {superlink}: without TLS a SuperLink that is not on loopback serves unauthenticated "
            "plaintext to anyone who reaches it; give --tls CERT_DIR (or --insecure-non-loopback if TLS is "
            "terminated outside Flower)"
        )
    state = Path(state_dir).absolute()
    if (state / PROCESSES).exists() and any(_alive(p.pid) for p in load(state).processes):
        raise ClusterError(f"{state} already has running processes; run `firm flower down --dir {state}` first")
    state.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(state, superlink)
    host, _, port = superlink.rpartition(":")
    link_cmd = [console_script("flower-superlink"), "--host", host, "--port", port, "--disable-runtime-dependency-installation"]
    if database:  # runs and node registrations in a file: the SuperLink can restart under live SuperNodes
        db = state / "superlink" / "state.db"
        for old in db.parent.glob(db.name + "*"):  # a new `up` starts from an empty one
            old.unlink()
        link_cmd += ["--database", str(db)]
    node_tls: list[str] = ["--insecure"]
    if tls is not None:
        certs = Path(tls).absolute()
        cluster.root_certificates = str(certs / "ca.crt")
        link_cmd += [
            "--ssl-ca-certfile", str(certs / "ca.crt"),
            "--ssl-certfile", str(certs / "server.pem"),
            "--ssl-keyfile", str(certs / "server.key"),
            "--enable-supernode-auth",
        ]  # fmt: skip
        node_tls = ["--root-certificates", cluster.root_certificates]
    else:
        link_cmd.append("--insecure")
    try:
        link = _start(cluster, "superlink", link_cmd, state / "superlink")
        wait_for_port(superlink, timeout, link)
        if tls is not None:
            register_nodes(cluster, [Path(tls).absolute() / f"supernode-{i}.pub" for i in range(nodes)])
        started: list[tuple[int, Process, int]] = []
        for i, runtime_port in enumerate(free_ports(nodes)):  # all nodes start at once; a worker once its node listens
            node_config = f"client-id={i}"
            if i < len(prompt_files) and prompt_files[i]:
                node_config += f' prompt-file="{Path(prompt_files[i]).absolute()}"'
            node_cmd = [
                console_script("flower-supernode"), *node_tls, "--superlink", superlink,
                "--port", str(runtime_port), "--node-config", node_config,
            ]  # fmt: skip
            if tls is not None:
                node_cmd += ["--auth-supernode-private-key", str(Path(tls).absolute() / f"supernode-{i}.key")]
            if warm:
                node_cmd += ["--isolation", "process"]
            started.append((i, _start(cluster, f"supernode-{i}", node_cmd, state / f"node-{i}"), runtime_port))
        for i, node, runtime_port in started:
            if warm:
                wait_for_port(f"127.0.0.1:{runtime_port}", timeout, node)
                worker_cmd = [
                    sys.executable,
                    "-m",
                    "firm.engines.flower.worker",
                    "--runtime-api-address",
                    f"127.0.0.1:{runtime_port}",
                ]
                _start(cluster, f"worker-{i}", worker_cmd, state / f"node-{i}")
    except BaseException:
        down(state)
        raise
    return cluster


def start_again(cluster: Cluster, role: str, timeout: float = 60.0) -> Process:
    """Start the stopped or crashed process `role` again, with its recorded command, FLWR_HOME and log.

    The SuperLink comes back with its database (runs, and SuperNodes with their node ids) if `up`
    had `database=True`, else knowing no SuperNode; a SuperNode comes back under a new node id,
    which the Flower engine picks up at its next round.
    Waits until the SuperLink or SuperNode listens again.
    """
    old = next(p for p in cluster.processes if p.role == role)
    if _alive(old.pid) and _is_ours(old):
        raise ClusterError(f"{role} (pid {old.pid}) is still running; stop it first")
    cluster.processes.remove(old)
    new = _start(cluster, role, old.cmd, Path(old.home))
    if role == "superlink":
        wait_for_port(cluster.superlink, timeout, new)
    elif "--port" in old.cmd:  # a SuperNode: its Runtime API, where its worker connects
        wait_for_port(f"127.0.0.1:{old.cmd[old.cmd.index('--port') + 1]}", timeout, new)
    return new


@contextmanager
def flwr_home_for(superlink: str, root_certificates: str, home: str | None) -> Iterator[Path]:
    """A Flower home whose config.toml has the connection `firm` to `superlink` (TLS if a CA file is given)."""
    conn: dict[str, object] = {"address": superlink}
    if root_certificates:
        conn["root-certificates"] = str(Path(root_certificates).absolute())
    else:
        conn["insecure"] = True
    text = tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: conn}})
    if home:
        path = Path(home).absolute()
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.toml").write_text(text)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="firm-flwr-home-") as tmp:
        (Path(tmp) / "config.toml").write_text(text)
        yield Path(tmp)


def register_nodes(cluster: Cluster, public_keys: Sequence[Path]) -> None:
    """Register SuperNode public keys with the SuperLink (needed when it requires node authentication)."""
    with flwr_home_for(cluster.superlink, cluster.root_certificates, None) as home:
        # One `flwr` process per key, all at once: each spends seconds importing flwr.
        cmd = [console_script("flwr"), "supernode", "register"]
        env = flower_env(home)
        calls = {
            key: subprocess.Popen([*cmd, str(key), "firm"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for key in public_keys
        }
        failed = []
        for key, call in calls.items():
            try:
                output, _ = call.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                call.kill()
                output, _ = call.communicate()
            if call.returncode != 0:
                failed.append(f"could not register {key}: {output.strip()[-400:]}")
        if failed:
            raise ClusterError("; ".join(failed))


def load(state_dir: str | Path) -> Cluster:
    """The cluster recorded in `state_dir` by `up`."""
    state = Path(state_dir).absolute()
    try:
        data = json.loads((state / PROCESSES).read_text())
    except FileNotFoundError:
        raise ClusterError(f"no local Flower cluster recorded in {state} (run `firm flower up` first)") from None
    return Cluster(state, data["superlink"], [Process(**p) for p in data["processes"]], data.get("root_certificates", ""))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return True


def _is_ours(p: Process) -> bool:
    """The pid still runs the command we started (pids are reused)."""
    try:
        cmdline = Path(f"/proc/{p.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return _alive(p.pid)  # no /proc (macOS): trust the pid
    return any(Path(p.cmd[0]).name.encode() in part or part == p.cmd[-1].encode() for part in cmdline)


def stop(p: Process, grace: float = 5.0) -> None:
    """SIGTERM the process group `up` started for `p`, then SIGKILL whatever is left after `grace` seconds."""
    if not _alive(p.pid) or not _is_ours(p):
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                if os.waitpid(p.pid, os.WNOHANG) != (0, 0):
                    return
            except ChildProcessError:  # not our child (started by another `firm flower up`)
                if not _alive(p.pid):
                    return
            time.sleep(0.1)


def down(state_dir: str | Path) -> list[Process]:
    """Stop every process `up` recorded in `state_dir` (nodes first); returns what was stopped."""
    cluster = load(state_dir)
    order = sorted(cluster.processes, key=lambda p: p.role == "superlink")
    for p in order:
        stop(p)
    (cluster.state_dir / PROCESSES).unlink(missing_ok=True)
    return order


@contextmanager
def local_cluster(state_dir: str | Path, nodes: int, **kwargs: object) -> Iterator[Cluster]:
    """`up` ... `down`, also when the body raises (used by the tests and the benchmark)."""
    cluster = up(state_dir, nodes, **kwargs)  # type: ignore[arg-type]
    try:
        yield cluster
    finally:
        down(state_dir)

"""Plumbing: a warm ClientApp executor for a SuperNode, one long-lived process that runs all of FIRM's messages.

Flower 1.41's SuperExec starts a fresh `flwr-clientapp` process for every message, so a
ClientApp would import torch and load the policy and scorers again every round. Run the
SuperNode with `--isolation process` and this worker beside it instead:

    flower-supernode --isolation process --port 9094 ... &
    firm flower worker --runtime-api-address 127.0.0.1:9094

The worker takes the SuperNode's ClientApp tasks from its Runtime API (what `flower-superexec`
does), and runs each in this process with Flower's own task-input / reply / task-output calls
(the steps of `flwr-clientapp`), so the model and scorers are built once and kept
(`firm.engines.flower.apps.runtime`). It serves only FIRM's ClientApps (the policy's and the
reward predictor's, `firm.rewards.flower`): a run of another Flower app gets an error reply naming
the app. A task lost to a SuperNode restart, or one whose input never arrives (`_task_input`),
fails alone: the worker serves on. Written against flwr 1.41.0
(pinned); those calls are Flower internals that may move in other versions.
"""

from __future__ import annotations

import argparse
import importlib
import io
import sys
import threading
import time
import tomllib
import zipfile
from collections.abc import Sequence
from typing import Any

from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.run import Run
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

CLIENT_APP_REF = "firm.engines.flower.apps:client_app"
CLIENT_APP_REFS = (CLIENT_APP_REF, "firm.rewards.flower:client_app")
"""The ClientApps this worker runs: the policy's and the reward predictor's."""

INPUT_PATIENCE_S = 30.0
"""Seconds a task may wait for its input before a newer task of the SuperNode takes its place (`_task_input`)."""


class Superseded(Exception):
    """A task whose input did not arrive was given up for a newer task of the SuperNode (its token)."""

    def __init__(self, token: str) -> None:
        super().__init__(f"its input did not arrive within {INPUT_PATIENCE_S:g} s and a newer task is waiting")
        self.token = token


def _client(address: str, root_certificates: str | None, token: str | None) -> RuntimeHttpClient:
    interceptors: list[object] = [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp" if token else "SuperExec")]
    if token:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=root_certificates is None,
        root_certificates=root_certificates,
        interceptors=interceptors,  # type: ignore[arg-type]
        retry_invoker=make_simple_http_retry_invoker(),
    )


def fab_client_app(fab_content: bytes) -> str:
    """The `clientapp` component named in a FAB's pyproject.toml."""
    with zipfile.ZipFile(io.BytesIO(fab_content)) as fab:
        project = tomllib.loads(fab.read("pyproject.toml").decode("utf-8"))
    return str(project.get("tool", {}).get("flwr", {}).get("app", {}).get("components", {}).get("clientapp", ""))


def acquire(supernode: RuntimeHttpClient) -> str | None:
    """Claim a ClientApp task the SuperNode has ready: its token, or None if there is none."""
    res = supernode.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP], agentapp_fab_hashes=[]))
    return str(res.token) if res.HasField("task") and res.token else None


def _task_input(client: RuntimeHttpClient, supernode: RuntimeHttpClient) -> tuple[Message, Context, Run, Fab]:
    """`pull_task_input`, given up for a newer task when its input has not arrived after INPUT_PATIENCE_S.

    Flower 1.41's SuperNode creates a message's task before it fetches the message, and when the
    message's run has stopped meanwhile (a message of a run that died with its SuperLink,
    delivered once the SuperLink is back) it leaves the task without its input, which
    `pull_task_input` then waits for up to 2 hours. Flower's own executor runs each task in a
    process of its own, so only that process waits; this worker would stop serving its node. An
    input that is just slow (a large message, a slow link) has no newer task of the same run
    behind it, since the server waits for the reply, so it is waited for as long as Flower would.
    """
    result: dict[str, Any] = {}

    def pull() -> None:
        try:
            result["input"] = pull_task_input(client)
        except BaseException as err:  # handed to the task below
            result["error"] = err

    thread = threading.Thread(target=pull, daemon=True)  # a pull given up must not keep the process alive
    thread.start()
    start = time.monotonic()
    while thread.is_alive():
        thread.join(1.0)
        if thread.is_alive() and time.monotonic() - start > INPUT_PATIENCE_S and (newer := acquire(supernode)):
            raise Superseded(newer)
    if "error" in result:
        raise result["error"]
    return result["input"]


def run_task(address: str, root_certificates: str | None, token: str, supernode: RuntimeHttpClient) -> None:
    """Run one ClientApp task in this process: pull its message and context, reply, push the context back."""
    client = _client(address, root_certificates, token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    context: Context | None = None
    status, details = SubStatus.FAILED, "ClientApp task failed"
    try:
        message, context, _run, fab = _task_input(client, supernode)
        app_ref = fab_client_app(fab.content)
        try:
            if app_ref not in CLIENT_APP_REFS:
                raise ValueError(f"this worker runs only FIRM's ClientApps ({', '.join(CLIENT_APP_REFS)}), not {app_ref!r}")
            module, _, name = app_ref.partition(":")
            client_app = getattr(importlib.import_module(module), name)
            reply = client_app(message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
        except Exception as err:  # the server sees the reason in the error reply, as with flwr-clientapp
            reason = f"{type(err).__name__}: {err}"
            print(f"firm worker: task failed: {reason}", file=sys.stderr, flush=True)
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)
            details = reason
        push_message(client, reply, context)
    finally:
        try:
            push_task_output(client, context, status, details)
        finally:  # also when the SuperNode is gone: no heartbeat may outlive its task
            heartbeat.stop()
            client.close()


def serve(address: str, root_certificates: str | None = None, poll_s: float = 0.05) -> None:
    """Take and run the SuperNode's ClientApp tasks until killed."""
    # Import the ClientApp (torch, transformers, peft: seconds) now, while the federation starts,
    # rather than inside the first task, where the server's node discovery waits for it.
    import firm.engines.flower.apps  # noqa: F401

    supernode = _client(address, root_certificates, None)
    print(f"firm worker: serving ClientApp tasks of the SuperNode at {address}", file=sys.stderr, flush=True)
    token: str | None = None
    while True:
        try:
            token = token or acquire(supernode)
        except Exception as err:  # the SuperNode is starting or restarting: keep asking
            print(f"firm worker: SuperNode not reachable yet ({type(err).__name__}); retrying", file=sys.stderr, flush=True)
            time.sleep(1.0)
            continue
        if token is None:
            time.sleep(poll_s)
            continue
        try:
            run_task(address, root_certificates, token, supernode)
            token = None
        except Superseded as newer:
            print(f"firm worker: task given up: {newer}", file=sys.stderr, flush=True)
            token = newer.token
        except Exception as err:  # the SuperNode went away mid-task (a restart): the task is lost, the worker serves on
            print(f"firm worker: task lost ({type(err).__name__}: {err}); serving on", file=sys.stderr, flush=True)
            token = None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="firm flower worker", description=__doc__.split("\n")[0])
    parser.add_argument("--runtime-api-address", default="127.0.0.1:9094", help="the SuperNode's Runtime API (its --port)")
    parser.add_argument("--root-certificates", default=None, help="CA of the Runtime API's TLS certificate; default: plain HTTP")
    args = parser.parse_args(argv)
    try:
        serve(args.runtime_api_address, args.root_certificates)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

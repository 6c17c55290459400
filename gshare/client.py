"""A blocking client for the scheduler's ClientService (what the CLI uses)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from gshare.address import resolve
from gshare.api import gshare_pb2 as pb
from gshare.clientconfig import ClientConfig, ClientConfigError, client_config
from gshare.munge import HEADER, Munge, MungeError, request_payload
from gshare.paths import SYSTEM_SOCKET

# The largest gRPC message, both ways, on every channel and server of gshare: the scheduler,
# its clients (gsub, gshare, the TUI) and its node agents. gRPC's default is 4 MiB for what
# a side receives; the scheduler sizes each job (schedulerd.requests) so that no Launch and
# no job in a listing comes near this.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


def new_key() -> str:
    """A submit's idempotency key: random, so two submits never share one by chance."""
    return uuid.uuid4().hex


SERVICE = "/gshare.v1.ClientService/"
M = TypeVar("M", bound=Message)


def _as_is(data: bytes) -> bytes:
    return data


def _unavailable(exc: grpc.RpcError) -> bool:
    return isinstance(exc, grpc.Call) and exc.code() is grpc.StatusCode.UNAVAILABLE


class ClientError(Exception):
    """A request the scheduler refused or could not serve; str() is the reason."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


_CERT = b"-----BEGIN CERTIFICATE-----"
_KEY = b"PRIVATE KEY-----"


def _read(path: str, key: str, marker: bytes) -> bytes:
    """A PEM file of [client]; checked here, since gRPC would only say it cannot connect."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ClientError(f"[client] {key} {path}: {exc.strerror}") from None
    if marker not in data or b"\0" in data:
        raise ClientError(f"[client] {key} {path}: not a PEM file ({marker.decode()}...)")
    return data


def channel_to(target: str, settings: ClientConfig) -> grpc.Channel:
    """A channel to `target`: over TCP with TLS when [client] ca_file names the CA of the
    scheduler's certificate (with the client's own certificate when it has one)."""
    if target.startswith("unix:") or not settings.ca_file:
        return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(settings.ca_file, "ca_file", _CERT),
        private_key=_read(settings.key_file, "key_file", _KEY) if settings.key_file else None,
        certificate_chain=_read(settings.cert_file, "cert_file", _CERT)
        if settings.cert_file
        else None,
    )
    return grpc.secure_channel(target, creds, options=CHANNEL_OPTIONS)


class Client:
    """Over the Unix socket the kernel says who calls; over TCP each request carries a
    MUNGE credential from the local munged, made for that request alone."""

    def __init__(
        self,
        address: str | None = None,
        timeout: float = 30.0,
        settings: ClientConfig | None = None,
    ) -> None:
        try:
            settings = settings if settings is not None else client_config(None)
        except ClientConfigError as exc:
            raise ClientError(str(exc)) from None
        # --address, GSHARE_ADDRESS, then the scheduler's own socket on its host (one
        # gshare.toml may serve every machine), then [client] scheduler
        local = SYSTEM_SOCKET.exists()
        chosen = (
            address or os.environ.get("GSHARE_ADDRESS") or ("" if local else settings.scheduler)
        )
        self.target = resolve(chosen or None)
        self.timeout = timeout
        self.resent = 0  # submits sent again with their key after a lost answer
        self.truncated = False  # whether the last job listing was cut short
        self.remote = not self.target.startswith("unix:")
        self._munge: Munge | None = None
        self._munge_error = ""  # why this client sends no credential, when it cannot
        if self.remote:
            try:
                self._munge = Munge(settings.munge_socket)
            except MungeError as exc:
                self._munge_error = str(exc)
        self._channel = channel_to(self.target, settings)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _metadata(self, method: str, data: bytes) -> tuple[tuple[str, str | bytes], ...] | None:
        """A fresh MUNGE credential for this request (over TCP): made for its method and
        bytes, so it is good for this request once and for nothing else."""
        if self._munge is None:
            return None
        try:
            return ((HEADER, self._munge.encode(request_payload(method, data))),)
        except MungeError as exc:
            self._munge_error = str(exc)
            return None

    def _send(self, name: str, request: Message, reply: type[M], **kw: Any) -> M:
        method = SERVICE + name
        data = request.SerializeToString()
        call = self._channel.unary_unary(
            method, request_serializer=_as_is, response_deserializer=reply.FromString
        )
        result: M = call(data, metadata=self._metadata(method, data), **kw)
        return result

    def _call(self, name: str, request: Message, reply: type[M]) -> M:
        try:
            return self._send(name, request, reply, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc: grpc.RpcError) -> ClientError:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return ClientError(
                f"cannot reach the scheduler at {self.target} ({details}); "
                "is it running? (start one with `gshare up`, or set GSHARE_ADDRESS)",
                code,
            )
        if code is grpc.StatusCode.UNAUTHENTICATED and self._munge_error:
            details = f"{details} (no credential was made here: {self._munge_error})"
        return ClientError(details or str(code), code)

    def submit(self, spec: pb.JobSpec, idempotency_key: str = "", retry_s: float = 30.0) -> int:
        """Submit a job; its id. The request carries an idempotency key (a fresh one unless
        given), and a submit whose answer was lost after it reached the scheduler (it died
        or restarted: UNAVAILABLE) is sent again with the same key for up to `retry_s`, so
        the job is made once. A scheduler never reached fails at once, as any call."""
        request = pb.SubmitJobRequest(spec=spec, idempotency_key=idempotency_key or new_key())
        reached = threading.Event()

        def watch(state: grpc.ChannelConnectivity) -> None:
            if state is grpc.ChannelConnectivity.READY:
                reached.set()

        self._channel.subscribe(watch, try_to_connect=False)
        deadline = time.monotonic() + retry_s
        try:
            try:
                return self._send(
                    "SubmitJob", request, pb.SubmitJobResponse, timeout=self.timeout
                ).job_id
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                # lost after it was sent: UNAVAILABLE once the channel was up (the
                # connectivity callback runs on gRPC's thread: give it a moment), or no
                # answer in time from a busy scheduler; either may have stored the job
                sent = code is grpc.StatusCode.DEADLINE_EXCEEDED or (
                    _unavailable(exc) and reached.wait(0.5)
                )
                if not sent:
                    raise self._error(exc) from None
            while True:  # the request may have been stored: the same key again
                self.resent += 1
                left = deadline - time.monotonic()
                try:
                    return self._send(
                        "SubmitJob",
                        request,
                        pb.SubmitJobResponse,
                        timeout=max(left, 0.1),
                        wait_for_ready=True,
                    ).job_id
                except grpc.RpcError as exc:
                    code = exc.code() if isinstance(exc, grpc.Call) else None
                    retry = code in (
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                    )
                    if not retry or time.monotonic() >= deadline:
                        raise self._error(exc) from None
                    time.sleep(0.2)
        finally:
            self._channel.unsubscribe(watch)

    def job(self, job: int | str) -> pb.Job:
        """A job by id, or by a task of an array: "12_7"."""
        request = (
            pb.GetJobRequest(job_id=job) if isinstance(job, int) else pb.GetJobRequest(target=job)
        )
        return self._call("GetJob", request, pb.Job)

    def jobs(
        self,
        users: Iterable[str] = (),
        states: Iterable[pb.JobState.ValueType] = (),
        queues: Iterable[str] = (),
        include_finished: bool = False,
        limit: int = 0,
    ) -> list[pb.Job]:
        request = pb.ListJobsRequest(
            users=list(users),
            states=list(states),
            queues=list(queues),
            include_finished=include_finished,
            limit=limit,
        )
        reply = self._call("ListJobs", request, pb.ListJobsResponse)
        self.truncated = reply.truncated  # the scheduler cut the listing (the newest kept)
        return list(reply.jobs)

    def array(self, array_job_id: int) -> list[pb.Job]:
        """Every task of an array, ended ones too, in task order."""
        request = pb.ListJobsRequest(array_job_id=array_job_id)
        reply = self._call("ListJobs", request, pb.ListJobsResponse)
        self.truncated = reply.truncated
        return list(reply.jobs)

    def cancel(self, job_id: int) -> pb.Job:
        return self._call("CancelJob", pb.JobIdRequest(job_id=job_id), pb.JobActionResponse).job

    def hold(self, job_id: int) -> pb.Job:
        return self._call("HoldJob", pb.JobIdRequest(job_id=job_id), pb.JobActionResponse).job

    def preempt(self, job_id: int) -> pb.Job:
        return self._call("PreemptJob", pb.JobIdRequest(job_id=job_id), pb.JobActionResponse).job

    def set_priority(self, job_id: int, priority: int) -> pb.Job:
        request = pb.SetPriorityRequest(job_id=job_id, priority=priority)
        return self._call("SetPriority", request, pb.JobActionResponse).job

    def release(self, job_id: int) -> pb.Job:
        return self._call("ReleaseJob", pb.JobIdRequest(job_id=job_id), pb.JobActionResponse).job

    def act(self, verb: str, target: str, priority: int = 0) -> pb.JobActionResponse:
        """cancel, hold, release, preempt or priority on "12" (a job or a whole array),
        "12_7" (a task) or "12_[3-5]" (some tasks)."""
        if verb == "priority":
            request = pb.SetPriorityRequest(target=target, priority=priority)
            return self._call("SetPriority", request, pb.JobActionResponse)
        method = {
            "cancel": "CancelJob",
            "hold": "HoldJob",
            "release": "ReleaseJob",
            "preempt": "PreemptJob",
        }[verb]
        return self._call(method, pb.JobIdRequest(target=target), pb.JobActionResponse)

    def usage(self) -> pb.GetUsageResponse:
        return self._call("GetUsage", pb.GetUsageRequest(), pb.GetUsageResponse)

    def drain(self, node: str, gpu: int, resume: bool, reason: str) -> pb.Node:
        request = pb.DrainRequest(node=node, gpu=gpu, resume=resume, reason=reason)
        return self._call("DrainNode", request, pb.Node)

    def nodes(self) -> list[pb.Node]:
        return list(self._call("ListNodes", pb.ListNodesRequest(), pb.ListNodesResponse).nodes)

    def watch(self, initial: bool = True) -> Iterator[pb.ClusterChange]:
        try:
            method = SERVICE + "WatchCluster"
            data = pb.WatchClusterRequest(initial=initial).SerializeToString()
            call = self._channel.unary_stream(
                method,
                request_serializer=_as_is,
                response_deserializer=pb.ClusterChange.FromString,
            )
            yield from call(data, metadata=self._metadata(method, data))
        except grpc.RpcError as exc:
            raise self._error(exc) from None

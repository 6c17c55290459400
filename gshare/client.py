"""A blocking client for the scheduler's ClientService (what the CLI uses)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import TypeVar

import grpc

from gshare.address import resolve
from gshare.api import gshare_pb2 as pb
from gshare.api import gshare_pb2_grpc as pb_grpc

Req = TypeVar("Req")
T = TypeVar("T")

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


def _unavailable(exc: grpc.RpcError) -> bool:
    return isinstance(exc, grpc.Call) and exc.code() is grpc.StatusCode.UNAVAILABLE


class ClientError(Exception):
    """A request the scheduler refused or could not serve; str() is the reason."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class Client:
    def __init__(self, address: str | None = None, timeout: float = 30.0) -> None:
        self.target = resolve(address)
        self.timeout = timeout
        self.resent = 0  # submits sent again with their key after a lost answer
        self.truncated = False  # whether the last job listing was cut short
        self._channel = grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.ClientServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: grpc.UnaryUnaryMultiCallable[Req, T], request: Req) -> T:
        try:
            return method(request, timeout=self.timeout)
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
                return self._stub.SubmitJob(request, timeout=self.timeout).job_id
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
                    return self._stub.SubmitJob(
                        request, timeout=max(left, 0.1), wait_for_ready=True
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
        return self._call(self._stub.GetJob, request)

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
        reply = self._call(self._stub.ListJobs, request)
        self.truncated = reply.truncated  # the scheduler cut the listing (the newest kept)
        return list(reply.jobs)

    def array(self, array_job_id: int) -> list[pb.Job]:
        """Every task of an array, ended ones too, in task order."""
        reply = self._call(self._stub.ListJobs, pb.ListJobsRequest(array_job_id=array_job_id))
        self.truncated = reply.truncated
        return list(reply.jobs)

    def cancel(self, job_id: int) -> pb.Job:
        return self._call(self._stub.CancelJob, pb.JobIdRequest(job_id=job_id)).job

    def hold(self, job_id: int) -> pb.Job:
        return self._call(self._stub.HoldJob, pb.JobIdRequest(job_id=job_id)).job

    def preempt(self, job_id: int) -> pb.Job:
        return self._call(self._stub.PreemptJob, pb.JobIdRequest(job_id=job_id)).job

    def set_priority(self, job_id: int, priority: int) -> pb.Job:
        request = pb.SetPriorityRequest(job_id=job_id, priority=priority)
        return self._call(self._stub.SetPriority, request).job

    def release(self, job_id: int) -> pb.Job:
        return self._call(self._stub.ReleaseJob, pb.JobIdRequest(job_id=job_id)).job

    def act(self, verb: str, target: str, priority: int = 0) -> pb.JobActionResponse:
        """cancel, hold, release, preempt or priority on "12" (a job or a whole array),
        "12_7" (a task) or "12_[3-5]" (some tasks)."""
        if verb == "priority":
            request = pb.SetPriorityRequest(target=target, priority=priority)
            return self._call(self._stub.SetPriority, request)
        method = {
            "cancel": self._stub.CancelJob,
            "hold": self._stub.HoldJob,
            "release": self._stub.ReleaseJob,
            "preempt": self._stub.PreemptJob,
        }[verb]
        return self._call(method, pb.JobIdRequest(target=target))

    def usage(self) -> pb.GetUsageResponse:
        return self._call(self._stub.GetUsage, pb.GetUsageRequest())

    def drain(self, node: str, gpu: int, resume: bool, reason: str) -> pb.Node:
        request = pb.DrainRequest(node=node, gpu=gpu, resume=resume, reason=reason)
        return self._call(self._stub.DrainNode, request)

    def nodes(self) -> list[pb.Node]:
        return list(self._call(self._stub.ListNodes, pb.ListNodesRequest()).nodes)

    def watch(self, initial: bool = True) -> Iterator[pb.ClusterChange]:
        try:
            yield from self._stub.WatchCluster(pb.WatchClusterRequest(initial=initial))
        except grpc.RpcError as exc:
            raise self._error(exc) from None

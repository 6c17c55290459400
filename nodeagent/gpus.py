"""GPU inventory: NVML through nvidia-ml-py, or a fake backend where there is no GPU."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import psutil

from gshare.telemetry import GpuProcess, GpuSample, XidEvent

log = logging.getLogger(__name__)

NVIDIA_MAJOR = 195  # /dev/nvidiaN: char 195:N


@dataclass(frozen=True, slots=True)
class GpuDevice:
    index: int
    uuid: str
    model: str
    memory_mb: int
    pci_bus_id: str = ""
    nvlink_peers: tuple[int, ...] = field(default=())
    minor: int = -1  # its /dev/nvidiaN is char 195:minor (-1: not known; the index is used)


@dataclass(frozen=True, slots=True)
class JobGpus:
    """A job running on this node: its GPUs and the pids of its process tree."""

    job_id: int
    gpu_indexes: tuple[int, ...]
    pids: frozenset[int]
    root_pid: int = 0


class GpuProbe(Protocol):
    backend: str

    def inventory(self) -> list[GpuDevice]: ...

    def sample(self, node: str, jobs: Sequence[JobGpus]) -> list[GpuSample]:
        """One telemetry sample per GPU (blocking; the agent calls it on a thread)."""
        ...

    def close(self) -> None: ...


def owner_job(pid: int, jobs: Sequence[JobGpus]) -> int:
    """The job whose process tree holds `pid`, else 0."""
    for job in jobs:
        if pid in job.pids:
            return job.job_id
    return 0


class NvmlUnavailable(RuntimeError):
    pass


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlProbe:
    """Real GPUs. NVLink peers are found by matching each active link's remote PCI bus id."""

    backend = "nvml"

    def __init__(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded...
            raise NvmlUnavailable(f"NVML is not available: {exc}") from exc
        self._nvml = pynvml

    def inventory(self) -> list[GpuDevice]:
        nv = self._nvml
        handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]
        bus_ids = [_text(nv.nvmlDeviceGetPciInfo(h).busId).lower() for h in handles]
        by_bus = {bus: i for i, bus in enumerate(bus_ids)}
        devices = []
        for i, h in enumerate(handles):
            peers: set[int] = set()
            for link in range(getattr(nv, "NVML_NVLINK_MAX_LINKS", 18)):
                try:
                    if nv.nvmlDeviceGetNvLinkState(h, link) != nv.NVML_FEATURE_ENABLED:
                        continue
                    remote = _text(nv.nvmlDeviceGetNvLinkRemotePciInfo(h, link).busId).lower()
                except nv.NVMLError:
                    continue
                if remote in by_bus and by_bus[remote] != i:
                    peers.add(by_bus[remote])
            devices.append(
                GpuDevice(
                    index=i,
                    uuid=_text(nv.nvmlDeviceGetUUID(h)),
                    model=_text(nv.nvmlDeviceGetName(h)),
                    memory_mb=int(nv.nvmlDeviceGetMemoryInfo(h).total) // (1 << 20),
                    pci_bus_id=bus_ids[i],
                    nvlink_peers=tuple(sorted(peers)),
                    minor=self._minor(h),
                )
            )
        return devices

    def _minor(self, h: Any) -> int:
        """The device's minor number (/dev/nvidiaN), which the job's cgroup allows or not."""
        get = getattr(self._nvml, "nvmlDeviceGetMinorNumber", None)
        try:
            return int(get(h)) if get is not None else -1
        except self._nvml.NVMLError:
            return -1

    def _handles(self) -> list[Any]:
        if not hasattr(self, "_handle_list"):
            nv = self._nvml
            self._handle_list = [
                nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())
            ]
            self._uuids = [_text(nv.nvmlDeviceGetUUID(h)) for h in self._handle_list]
            self._events: Any = None
            with contextlib.suppress(nv.NVMLError):
                self._events = nv.nvmlEventSetCreate()
                for h in self._handle_list:
                    with contextlib.suppress(nv.NVMLError):
                        nv.nvmlDeviceRegisterEvents(
                            h, nv.nvmlEventTypeXidCriticalError, self._events
                        )
        return self._handle_list

    def _xids(self) -> dict[int, list[XidEvent]]:
        """Xid events since the last call (NVML queues them in the event set)."""
        nv = self._nvml
        out: dict[int, list[XidEvent]] = {}
        if self._events is None:
            return {}
        uuids = {_text(nv.nvmlDeviceGetUUID(h)): i for i, h in enumerate(self._handles())}
        for _ in range(64):
            try:
                data = nv.nvmlEventSetWait_v2(self._events, 0)
            except nv.NVMLError:  # NVML_ERROR_TIMEOUT: none waiting
                break
            index = uuids.get(_text(nv.nvmlDeviceGetUUID(data.device)), -1)
            out.setdefault(index, []).append(XidEvent(int(data.eventData), time.time()))
        return out

    def sample(self, node: str, jobs: Sequence[JobGpus]) -> list[GpuSample]:
        xids = self._xids() if self._handles() else {}
        out = []
        for i, h in enumerate(self._handles()):
            try:
                out.append(self._sample_one(node, i, h, jobs, xids.get(i, [])))
            except self._nvml.NVMLError as exc:  # GPU_IS_LOST after Xid 79: the others go on
                log.error("GPU %d cannot be read through NVML: %s", i, exc)
                if xids.get(i) and i < len(self._uuids):  # its Xids still reach the scheduler
                    sample = GpuSample(node, i, self._uuids[i], time.time(), 0.0, 0, 0)
                    out.append(replace(sample, xids=tuple(xids[i])))
        return out

    def _sample_one(
        self, node: str, i: int, h: Any, jobs: Sequence[JobGpus], xids: list[XidEvent]
    ) -> GpuSample:
        nv = self._nvml

        def read(fn: Any, *args: Any, default: Any = 0) -> Any:
            try:
                return fn(h, *args)
            except nv.NVMLError:  # not supported on this GPU, or a transient failure
                return default

        mem = nv.nvmlDeviceGetMemoryInfo(h)
        util = read(nv.nvmlDeviceGetUtilizationRates, default=None)
        procs = []
        for p in read(nv.nvmlDeviceGetComputeRunningProcesses, default=[]) or []:
            used = p.usedGpuMemory
            procs.append(
                GpuProcess(
                    int(p.pid),
                    int(used) // (1 << 20) if isinstance(used, int) else 0,
                    owner_job(int(p.pid), jobs),
                )
            )
        return GpuSample(
            node=node,
            index=i,
            uuid=_text(nv.nvmlDeviceGetUUID(h)),
            time=time.time(),
            util_pct=float(util.gpu) if util is not None else 0.0,
            mem_used_mb=int(mem.used) // (1 << 20),
            mem_total_mb=int(mem.total) // (1 << 20),
            temp_c=float(read(nv.nvmlDeviceGetTemperature, nv.NVML_TEMPERATURE_GPU)),
            power_w=float(read(nv.nvmlDeviceGetPowerUsage)) / 1000.0,
            sm_clock_mhz=int(read(nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_SM)),
            mem_clock_mhz=int(read(nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_MEM)),
            ecc_sbe=int(
                read(
                    nv.nvmlDeviceGetTotalEccErrors,
                    nv.NVML_MEMORY_ERROR_TYPE_CORRECTED,
                    nv.NVML_VOLATILE_ECC,
                )
            ),
            ecc_dbe=int(
                read(
                    nv.nvmlDeviceGetTotalEccErrors,
                    nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                    nv.NVML_VOLATILE_ECC,
                )
            ),
            xids=tuple(xids),
            processes=tuple(procs),
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if getattr(self, "_events", None) is not None:
                self._nvml.nvmlEventSetFree(self._events)
        with contextlib.suppress(Exception):
            self._nvml.nvmlShutdown()


class CpuMeter:
    """CPU use of process trees, from psutil, remembered between samples."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def percent(self, pids: frozenset[int]) -> tuple[float, int]:
        """(CPU % summed over `pids` since the last call, their resident memory in MB)."""
        cpu, rss = 0.0, 0
        for pid in pids:
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                    proc.cpu_percent(None)  # the first call only sets the baseline
                else:
                    cpu += proc.cpu_percent(None)
                rss += proc.memory_info().rss
            except psutil.Error:
                self._procs.pop(pid, None)
        return cpu, rss >> 20

    def retain(self, pids: set[int]) -> None:
        """Forget processes that are no longer followed."""
        for pid in [p for p in self._procs if p not in pids]:
            del self._procs[pid]


def _fake_device(path: Path, minor: int, char: bool) -> None:
    """A fake GPU's device file: char 195:minor when `char`, else an empty regular file;
    one of the other kind (from an agent run the other way) is replaced."""
    with contextlib.suppress(FileNotFoundError):
        st = path.lstat()
        wanted = os.makedev(NVIDIA_MAJOR, minor) if char else None
        if (char and (not stat.S_ISCHR(st.st_mode) or st.st_rdev != wanted)) or (
            not char and not stat.S_ISREG(st.st_mode)
        ):
            path.unlink()
    if char:
        if not path.exists():
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(NVIDIA_MAJOR, minor))
    else:
        path.touch()
    path.chmod(0o666)


class FakeProbe:
    """N identical fake GPUs with stable UUIDs per node; all NVLink-connected when `nvlink`.

    Telemetry follows the jobs really running on them: a GPU's utilization is the CPU use
    of its job's process tree (a busy loop shows about 100%, a sleeping job 0), its memory
    use is that tree's resident memory. Each fake GPU has a device file in `dev_dir`
    (nvidia0, nvidia1, ...); a process holding one open shows up on that GPU, like a
    process with a CUDA context, whichever job it belongs to. Lines appended to
    `dev_dir/faults` inject hardware faults: {"gpu": 1, "ecc_dbe": 1} adds double-bit
    ECC errors, {"gpu": 0, "xid": 79} raises an Xid.

    With `char_devices` (an agent that confines jobs) the device files are character
    devices 195:N, as /dev/nvidiaN, so a job's devices cgroup decides whether it may open
    them as on a real node: a job's own opens up to the (missing) driver, ENXIO; another's
    is refused with EPERM. Nothing can hold those open, so they show no processes.
    """

    backend = "fake"

    def __init__(
        self,
        node: str,
        count: int,
        model: str = "Fake GPU",
        memory_mb: int = 81920,
        nvlink: bool = True,
        dev_dir: Path | None = None,
        char_devices: bool = False,
    ) -> None:
        if count < 1:
            raise ValueError("--fake-gpus must be at least 1")
        self.node = node
        self.count = count
        self.model = model
        self.memory_mb = memory_mb
        self.nvlink = nvlink
        self.dev_dir = dev_dir
        self._cpu = CpuMeter()
        self._faults_offset = 0
        self._ecc_dbe = [0] * count
        self._ecc_sbe = [0] * count
        if dev_dir is not None:
            dev_dir.mkdir(parents=True, exist_ok=True)
            dev_dir.chmod(0o755)
            for i in range(count):
                _fake_device(dev_dir / f"nvidia{i}", i, char_devices)

    def inventory(self) -> list[GpuDevice]:
        return [
            GpuDevice(
                index=i,
                uuid=f"GPU-{uuid.uuid5(uuid.NAMESPACE_URL, f'gshare-fake/{self.node}/{i}')}",
                model=self.model,
                memory_mb=self.memory_mb,
                nvlink_peers=tuple(j for j in range(self.count) if j != i) if self.nvlink else (),
            )
            for i in range(self.count)
        ]

    def _read_faults(self) -> dict[int, list[XidEvent]]:
        xids: dict[int, list[XidEvent]] = {}
        if self.dev_dir is None:
            return xids
        try:
            with open(self.dev_dir / "faults", "rb") as f:
                f.seek(self._faults_offset)
                chunk = f.read()
        except FileNotFoundError:
            return xids
        end = chunk.rfind(b"\n")
        if end < 0:
            return xids
        self._faults_offset += end + 1
        for line in chunk[: end + 1].splitlines():
            try:
                fault = json.loads(line)
                gpu = int(fault["gpu"])
                if not 0 <= gpu < self.count:
                    raise ValueError(f"no fake GPU {gpu}")
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("fake GPU faults: bad line %r: %s", line[:200], exc)
                continue
            self._ecc_dbe[gpu] += int(fault.get("ecc_dbe", 0))
            self._ecc_sbe[gpu] += int(fault.get("ecc_sbe", 0))
            if fault.get("xid"):
                xids.setdefault(gpu, []).append(XidEvent(int(fault["xid"]), time.time()))
        return xids

    def _device_users(self) -> dict[int, set[int]]:
        """GPU index -> pids holding that fake device file open (from /proc/*/fd)."""
        users: dict[int, set[int]] = {}
        if self.dev_dir is None:
            return users
        prefix = f"{self.dev_dir.resolve()}/nvidia"
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                fds = os.scandir(f"/proc/{entry.name}/fd")
            except OSError:
                continue
            with fds:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        target = os.readlink(fd.path)
                        if target.startswith(prefix) and target[len(prefix) :].isdigit():
                            users.setdefault(int(target[len(prefix) :]), set()).add(int(entry.name))
        return users

    def sample(self, node: str, jobs: Sequence[JobGpus]) -> list[GpuSample]:
        xids = self._read_faults()
        users = self._device_users()
        load: dict[int, tuple[float, int]] = {}
        procs: dict[int, list[GpuProcess]] = {}
        self._cpu.retain({pid for job in jobs for pid in job.pids})
        for job in jobs:
            cpu, rss = self._cpu.percent(job.pids)
            for i in job.gpu_indexes:
                util, mem = load.get(i, (0.0, 0))
                load[i] = (min(100.0, util + cpu), mem + rss // max(1, len(job.gpu_indexes)))
                if job.root_pid:
                    procs.setdefault(i, []).append(
                        GpuProcess(job.root_pid, rss // max(1, len(job.gpu_indexes)), job.job_id)
                    )
        for i, pids in users.items():
            listed = {p.pid for p in procs.get(i, [])}
            for pid in sorted(pids - listed):
                procs.setdefault(i, []).append(GpuProcess(pid, 0, owner_job(pid, jobs)))
        now = time.time()
        out = []
        for dev in self.inventory():
            util, mem = load.get(dev.index, (0.0, 0))
            out.append(
                GpuSample(
                    node=node,
                    index=dev.index,
                    uuid=dev.uuid,
                    time=now,
                    util_pct=round(util, 1),
                    mem_used_mb=min(mem, self.memory_mb),
                    mem_total_mb=self.memory_mb,
                    temp_c=round(30.0 + 0.5 * util, 1),
                    power_w=round(60.0 + 3.4 * util, 1),
                    sm_clock_mhz=210 + int(17.7 * util),
                    mem_clock_mhz=2619 if util else 405,
                    ecc_sbe=self._ecc_sbe[dev.index],
                    ecc_dbe=self._ecc_dbe[dev.index],
                    xids=tuple(xids.get(dev.index, ())),
                    processes=tuple(procs.get(dev.index, ())),
                )
            )
        return out

    def close(self) -> None:
        pass

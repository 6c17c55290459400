"""The telemetry wire format, the scheduler's bookkeeping of it, and the fake GPUs' faults."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gshare.config import ConfigError, parse_config, parse_mqtt_url
from gshare.telemetry import (
    GpuProcess,
    GpuSample,
    TelemetryError,
    XidEvent,
    encode,
    parse_gpu,
    parse_status,
    split_topic,
)
from nodeagent.gpus import FakeProbe, JobGpus
from nodeagent.telemetry import TelemetryPublisher
from schedulerd.telemetry import HeldGpu, Telemetry


def sample(index: int = 0, t: float = 100.0, util: float = 0.0, **kw: object) -> GpuSample:
    return GpuSample("n1", index, f"GPU-{index}", t, util, 10, 80, **kw)  # type: ignore[arg-type]


def test_a_sample_round_trips_through_json() -> None:
    s = sample(util=42.5, processes=(GpuProcess(7, 100, 3),), xids=(XidEvent(79, 5.0),))
    assert parse_gpu(encode(s), "n1", 0) == s


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"{", "not JSON"),
        (b"[]", "not a JSON object"),
        (json.dumps({"schema": 2}).encode(), "schema"),
        (b"x" * 70_000, "over"),
    ],
)
def test_bad_payloads_are_refused(payload: bytes, why: str) -> None:
    with pytest.raises(TelemetryError, match=why):
        parse_gpu(payload, "n1", 0)


def test_a_sample_must_match_its_topic_and_ranges() -> None:
    good = json.loads(encode(sample()))
    with pytest.raises(TelemetryError, match="topic of node"):
        parse_gpu(json.dumps(good).encode(), "n2", 0)
    with pytest.raises(TelemetryError, match="topic of GPU"):
        parse_gpu(json.dumps(good).encode(), "n1", 1)
    for key, value in (("util_pct", 101), ("util_pct", "5"), ("mem_used_mb", 1.5)):
        with pytest.raises(TelemetryError):
            parse_gpu(json.dumps({**good, key: value}).encode(), "n1", 0)
    with pytest.raises(TelemetryError, match="processes"):
        parse_gpu(json.dumps({**good, "processes": [1, 2]}).encode(), "n1", 0)
    with pytest.raises(TelemetryError, match="online"):
        parse_status(json.dumps({"schema": 1, "node": "n1", "time": 1}).encode(), "n1")


def test_topics() -> None:
    assert split_topic("gshare/v1/nodes/a/gpus/3") == ("a", "gpus", 3)
    assert split_topic("gshare/v1/nodes/a/status") == ("a", "status", -1)
    for bad in ("gshare/v1/nodes/a/gpus/x", "gshare/v1/nodes/a/other", "gshare/v2/nodes/a/host"):
        with pytest.raises(TelemetryError):
            split_topic(bad)


def test_idle_time_needs_every_gpu_idle_and_no_gap_in_samples() -> None:
    now = [100.0]
    tel = Telemetry(interval_s=1.0, clock=lambda: now[0])
    held = {i: HeldGpu(9, "ann", (0, 1), 5.0) for i in (0, 1)}
    for t in range(100, 111):
        now[0] = float(t)
        tel.on_gpu(sample(0, t, util=1.0), held)
        tel.on_gpu(sample(1, t, util=80.0 if t < 105 else 2.0), held)
    assert tel.idle_for(9) == pytest.approx(5.0)  # both idle since 105
    assert tel.jobs[9].util_avg == pytest.approx((10 * 1 + 4 * 80 + 6 * 2) / 20)
    assert tel.take_idle() == {"ann": pytest.approx(10 + 6)}  # idle GPU-seconds
    # a gap of more than three intervals: idleness is not claimed across it
    now[0] = 120.0
    tel.on_gpu(sample(0, 120, util=1.0), held)
    tel.on_gpu(sample(1, 120, util=1.0), held)
    assert tel.idle_for(9) == 0.0
    # samples that stop coming are stale: no idleness claimed on old figures
    now[0] = 130.0
    assert tel.idle_for(9) == 0.0


def test_misuse_is_reported_once_per_process() -> None:
    tel = Telemetry()
    held = {0: HeldGpu(1, "ann", (0,), 5.0)}
    stray = sample(1, 10.0, processes=(GpuProcess(55, 10, 1),))
    assert tel.on_gpu(stray, held) == [
        (1, "pid 55 of job 1 is on GPU 1, which was not given to it")
    ]
    assert tel.on_gpu(sample(1, 11.0, processes=(GpuProcess(55, 10, 1),)), held) == []
    foreign = sample(0, 12.0, processes=(GpuProcess(1, 10, 1), GpuProcess(66, 5, 0)))
    [(job, text)] = tel.on_gpu(foreign, held)
    assert job == 0 and "pid 66, not a gshare job's" in text and "given to job 1" in text
    assert tel.on_gpu(sample(0, 11.0), held) == []  # older than what it has: ignored


def test_health_events_fire_on_new_double_bit_errors_and_fatal_xids() -> None:
    pub = TelemetryPublisher.__new__(TelemetryPublisher)
    pub.fatal_xids = frozenset({79})
    pub._dbe_seen = {}
    assert pub.health_events([sample(ecc_dbe=0, xids=(XidEvent(13, 1.0),))]) == []
    [event] = pub.health_events([sample(ecc_dbe=2)])
    assert event.kind == "ecc_dbe" and "double-bit ECC" in event.describe()
    assert pub.health_events([sample(ecc_dbe=2)]) == []  # the same count: nothing new
    [event] = pub.health_events([sample(ecc_dbe=2, xids=(XidEvent(79, 2.0),))])
    assert event.kind == "xid" and event.code == 79


def test_fake_gpus_take_injected_faults_and_see_device_users(tmp_path: Path) -> None:
    probe = FakeProbe("n1", 2, dev_dir=tmp_path / "dev")
    (tmp_path / "dev" / "faults").write_text(
        json.dumps({"gpu": 1, "ecc_dbe": 1}) + "\n" + json.dumps({"gpu": 0, "xid": 79}) + "\nbad\n"
    )
    with open(tmp_path / "dev" / "nvidia1", "rb"):  # this process now "uses" fake GPU 1
        samples = probe.sample("n1", [JobGpus(4, (0,), frozenset({os.getpid()}), os.getpid())])
    assert samples[1].ecc_dbe == 1 and samples[0].ecc_dbe == 0
    assert [x.code for x in samples[0].xids] == [79]
    assert [(p.pid, p.job_id) for p in samples[1].processes] == [(os.getpid(), 4)]
    assert [p.job_id for p in samples[0].processes] == [4]
    again = probe.sample("n1", [])
    assert again[0].xids == () and again[1].ecc_dbe == 1  # counts stay, events do not repeat


def test_a_daemons_mqtt_flag_overrides_the_file_and_is_checked() -> None:
    from gshare.config import Config, MqttConfig, with_mqtt_url

    base = Config(mqtt=MqttConfig(url="mqtt://file:1883", username="gpu01"))
    assert with_mqtt_url(base, None) is base
    flagged = with_mqtt_url(base, "mqtts://other:8883")
    assert flagged.mqtt.url == "mqtts://other:8883" and flagged.mqtt.username == "gpu01"
    assert not with_mqtt_url(base, "").mqtt.enabled
    with pytest.raises(ConfigError, match="--mqtt: expected mqtt://"):
        with_mqtt_url(base, "tcp://other")


def test_mqtt_and_telemetry_config() -> None:
    assert parse_mqtt_url("mqtt://broker") == ("broker", 1883, False)
    assert parse_mqtt_url("mqtts://[::1]:8884") == ("::1", 8884, True)
    for bad in ("http://x", "mqtt://", "mqtt://u:p@host:1", "mqtt://h:99999"):
        with pytest.raises(ValueError):
            parse_mqtt_url(bad)
    cfg = parse_config(
        {
            "mqtt": {"url": "mqtt://b:1884", "username": "gpu01"},
            "telemetry": {"interval": "2s", "fatal_xids": [79]},
            "queues": {"gpu": {"idle_reclaim": True, "idle_time": "30m", "idle_util_pct": 3}},
            "server": {"metrics": "127.0.0.1:9464"},
        },
        "t.toml",
    )
    assert cfg.mqtt.url == "mqtt://b:1884" and cfg.telemetry_interval_s == 2.0
    assert cfg.queues["gpu"].idle_reclaim and cfg.queues["gpu"].idle_time_s == 1800
    assert cfg.fatal_xids == frozenset({79}) and cfg.metrics_listen == "127.0.0.1:9464"
    for data, why in (
        ({"mqtt": {"url": "tcp://x"}}, "url"),
        ({"mqtt": {"password": "a", "password_file": "/etc/p"}}, "not both"),
        ({"mqtt": {"ca_file": "/nonexistent"}}, "does not exist"),
        ({"queues": {"q": {"idle_util_pct": 0}}}, "idle_util_pct"),
        ({"queues": {"q": {"idle_tim": "1h"}}}, "unknown key 'idle_tim'"),
        ({"telemetry": {"fatal_xids": ["79"]}}, "fatal_xids"),
        ({"server": {"metrics": "9464"}}, "HOST:PORT"),
    ):
        with pytest.raises(ConfigError, match=why):
            parse_config(data, "t.toml")


class _FakeNvml:
    """The calls NvmlProbe makes, answering like a two-GPU machine (the hardware edge)."""

    NVML_FEATURE_ENABLED = 1
    NVML_NVLINK_MAX_LINKS = 0
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    nvmlEventTypeXidCriticalError = 8

    class NVMLError(Exception):
        pass

    def __init__(self) -> None:
        self.xids: list[tuple[int, int]] = [(1, 79)]

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUUID(self, h: int) -> bytes:
        return f"GPU-{h}".encode()

    def nvmlDeviceGetMemoryInfo(self, h: int) -> object:
        return type("Mem", (), {"used": (h + 1) << 30, "total": 80 << 30})()

    def nvmlDeviceGetUtilizationRates(self, h: int) -> object:
        return type("Util", (), {"gpu": 90 if h == 0 else 0})()

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[object]:
        proc = type("P", (), {"pid": 4242, "usedGpuMemory": 512 << 20})()
        return [proc] if h == 0 else []

    def nvmlDeviceGetTemperature(self, h: int, kind: int) -> int:
        return 61

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return 250_000  # mW

    def nvmlDeviceGetClockInfo(self, h: int, kind: int) -> int:
        return 1980 if kind == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetTotalEccErrors(self, h: int, kind: int, counter: int) -> int:
        if h == 1:
            raise self.NVMLError("not supported")  # consumer GPUs have no ECC
        return 3 if kind == self.NVML_MEMORY_ERROR_TYPE_CORRECTED else 0

    def nvmlEventSetCreate(self) -> str:
        return "set"

    def nvmlDeviceRegisterEvents(self, h: int, kinds: int, events: str) -> None: ...

    def nvmlEventSetWait_v2(self, events: str, timeout_ms: int) -> object:
        if not self.xids:
            raise self.NVMLError("timeout")
        h, code = self.xids.pop(0)
        return type("Event", (), {"device": h, "eventData": code})()

    def nvmlEventSetFree(self, events: str) -> None: ...


def test_nvml_probe_reads_each_field(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from nodeagent.gpus import NvmlProbe

    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml())
    probe = NvmlProbe()
    [g0, g1] = probe.sample("n1", [JobGpus(7, (0,), frozenset({4242}), 4242)])
    assert (g0.util_pct, g0.mem_used_mb, g0.mem_total_mb) == (90.0, 1024, 80 * 1024)
    assert (g0.temp_c, g0.power_w, g0.sm_clock_mhz, g0.mem_clock_mhz) == (61.0, 250.0, 1980, 2619)
    assert (g0.ecc_sbe, g0.ecc_dbe) == (3, 0)
    assert g0.processes == (GpuProcess(4242, 512, 7),)
    assert (g1.ecc_sbe, g1.ecc_dbe, g1.processes) == (0, 0, ())  # unsupported reads as 0
    assert [x.code for x in g1.xids] == [79] and g0.xids == ()
    assert probe.sample("n1", [])[1].xids == ()  # an event is reported once
    probe.close()


def test_whatever_a_publisher_sends_is_dropped_not_raised() -> None:
    now = [1000.0]
    tel = Telemetry(clock=lambda: now[0])
    good = json.loads(encode(sample(t=1000.0)))
    cases = [
        ("gshare/v1/nodes/n1", b"{}"),
        ("gshare/v1/nodes/n1/gpus/\u00b2", b"{}"),
        ("gshare/v1/nodes/n1/gpus/0", json.dumps({**good, "mem_used_mb": 1 << 70}).encode()),
        ("gshare/v1/nodes/n1/gpus/0", json.dumps({**good, "time": 1100.0}).encode()),
        (
            "gshare/v1/nodes/n1/events",
            json.dumps(
                {"schema": 1, "node": "n1", "index": -1, "uuid": "", "time": 1, "kind": "xid"}
            ).encode(),
        ),
    ]
    for topic, payload in cases:
        assert tel.handle(topic, payload, lambda node: {}) == ([], None, "")
    assert tel.dropped == len(cases) and tel.gpus == {}
    assert tel.handle("gshare/v1/nodes/n1/gpus/0", encode(sample(t=1000.0)), lambda n: {})[2]
    assert tel.gpu("n1", 0) is not None


def test_a_lost_gpu_does_not_hide_the_others_or_its_xid(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from nodeagent.gpus import NvmlProbe

    nvml = _FakeNvml()
    real = nvml.nvmlDeviceGetMemoryInfo

    def lost(h: int) -> object:
        if h == 1:
            raise nvml.NVMLError("GPU is lost")
        return real(h)

    nvml.nvmlDeviceGetMemoryInfo = lost  # type: ignore[method-assign]
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    [g0, g1] = NvmlProbe().sample("n1", [])
    assert g0.util_pct == 90.0
    assert g1.uuid == "GPU-1" and [x.code for x in g1.xids] == [79]


def test_each_job_sees_the_misuse_that_concerns_it_and_no_other() -> None:
    tel = Telemetry()
    held = {0: HeldGpu(1, "ann", (0,), 5.0), 1: HeldGpu(12, "bob", (1,), 5.0)}
    tel.on_gpu(sample(1, 10.0, processes=(GpuProcess(55, 10, 1),)), held)  # job 1 on job 12's
    tel.on_gpu(sample(0, 10.0, processes=(GpuProcess(1, 10, 1),)), held)  # job 1 at home
    text = "pid 55 of job 1 is on GPU 1, which was not given to it"
    assert tel.warnings_of("n1", 1) == [text]  # the job that strays
    assert tel.warnings_of("n1", 12) == [text]  # the job whose GPU it is
    assert tel.warnings_of("n1", 2) == [] and tel.warnings_of("n2", 1) == []

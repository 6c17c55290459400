from __future__ import annotations

from pathlib import Path

import pytest

from gshare.cli import UsageError, build_spec, gsub_parser
from gshare.jobscript import ScriptError, directives, read_script
from gshare.timefmt import TimeFormatError, parse_duration


def spec_for(argv: list[str], env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return build_spec(gsub_parser().parse_intermixed_args(argv), env or {"PATH": "/bin"})


def test_command_line_wins_over_gsub_lines(tmp_path: Path) -> None:
    path = tmp_path / "train.sh"
    path.write_text(
        "#!/bin/bash\n#GSUB --gpus 4 --name fromfile\n#GSUB -t 2h\n#GSUB --env A=1 --env B=1\n"
        "python train.py\n#GSUB --gpus 8\n"
    )
    spec = spec_for([str(path), "--gpus", "2", "--env", "B=2"])
    assert spec.gpus == 2 and spec.name == "fromfile" and spec.time_limit_s == 7200
    assert spec.env["A"] == "1" and spec.env["B"] == "2" and spec.env["PATH"] == "/bin"


def test_gsub_lines_after_the_first_command_are_ignored() -> None:
    text = "#!/bin/sh\n# comment\n\n#GSUB --gpus 2\necho hi\n#GSUB --gpus 8\n"
    assert directives(text, "x") == [(4, ["--gpus", "2"])]


def test_script_arguments_and_options_mix(tmp_path: Path) -> None:
    path = tmp_path / "s.sh"
    path.write_text("#!/bin/sh\n")
    spec = spec_for([str(path), "a", "--gpus", "2", "b", "--", "--lr", "0.1"])
    assert list(spec.args) == ["a", "b", "--lr", "0.1"] and spec.gpus == 2
    assert spec.workdir.startswith("/") and spec.script_name == "s.sh"


def test_memory_and_time_units(tmp_path: Path) -> None:
    path = tmp_path / "s.sh"
    path.write_text("#!/bin/sh\n")
    assert spec_for([str(path), "--mem", "16G"]).mem_mb == 16384
    assert spec_for([str(path), "--mem", "512M"]).mem_mb == 512
    assert spec_for([str(path), "--time", "90"]).time_limit_s == 5400


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 5400),
        ("30s", 30),
        ("15m", 900),
        ("2h", 7200),
        ("1d", 86400),
        ("1:30:00", 5400),
        ("45:00", 2700),
        ("1-12:00:00", 129600),
        ("2-3", 183600),
    ],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "1:99", "-5", "1h30"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(TimeFormatError):
        parse_duration(text)


def test_script_checks(tmp_path: Path) -> None:
    binary = tmp_path / "b"
    binary.write_bytes(b"#!/bin/sh\n\xff\xfe\x00")
    with pytest.raises(ScriptError, match="binary file"):
        read_script(binary)
    big = tmp_path / "big"
    big.write_text("#!/bin/sh\n" + "x" * 100)
    with pytest.raises(ScriptError, match="limited to 50 bytes"):
        read_script(big, limit=50)
    with pytest.raises(ScriptError, match="No such file"):
        read_script(tmp_path / "missing")


def test_wrap_and_script_are_exclusive(tmp_path: Path) -> None:
    path = tmp_path / "s.sh"
    path.write_text("#!/bin/sh\n")
    with pytest.raises(UsageError, match="not both"):
        spec_for([str(path), "--wrap", "true"])
    assert spec_for(["--wrap", "nvidia-smi"]).script == b"#!/bin/sh\nnvidia-smi\n"


def test_gpu_types_from_gsub_lines_and_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "t.sh"
    path.write_text("#!/bin/bash\n#GSUB --gpu-type A100\ntrue\n")
    assert list(spec_for([str(path)]).gpu_types) == ["A100"]
    assert list(spec_for([str(path), "--gpu-type", " h100 , a100"]).gpu_types) == [
        "h100",
        "a100",
    ]
    assert list(spec_for([str(tmp_path / "t.sh"), "--gpus", "1"]).gpu_types) == ["A100"]
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/bash\n#GSUB --gpu-type a100,,h100\ntrue\n")
    with pytest.raises(UsageError, match=r"bad.sh:2: #GSUB --gpu-type a100,,h100: .*GPU type"):
        spec_for([str(bad)])

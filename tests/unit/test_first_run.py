"""What a newcomer meets first, without a model: the documented exit statuses, the access log without polls, the
progress lines of slow start-up steps, and a benchmark command that names the extra it lacks."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import cli as bench_cli
from embedserve import cli, logs
from embedserve.cli import parse_settings

pytestmark = pytest.mark.unit

README = Path(__file__).parents[2] / "README.md"


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logging_restored() -> Iterator[None]:
    """logs.configure replaces the root handlers and filters the access logger; put them back afterwards."""
    root = logging.getLogger()
    access = logging.getLogger(logs.ACCESS_LOGGER)
    handlers, level, filters = root.handlers[:], root.level, access.filters[:]
    try:
        yield
    finally:
        root.handlers[:], access.filters[:] = handlers, filters
        root.setLevel(level)


def test_the_readme_lists_every_exit_status_of_the_command():
    section = README.read_text().split("### Exit status", 1)[1].split("\n#", 1)[0]
    listed = {int(code) for code in re.findall(r"^\| `(\d+)` \|", section, re.MULTILINE)}
    statuses = {value for name, value in vars(cli).items() if name.startswith("EXIT_")}
    assert statuses == {0, 1, 2, 3}
    assert statuses <= listed


@pytest.mark.usefixtures("logging_restored")
@pytest.mark.parametrize(("flags", "polls_logged"), [([], False), (["--access-log-polls"], True)])
def test_health_and_metrics_polls_are_left_out_of_the_access_log_unless_asked(flags, polls_logged):
    server = parse_settings(flags, {}).server
    logs.configure(json_output=False, level="info", access_log_polls=server.access_log_polls)
    access = logging.getLogger(logs.ACCESS_LOGGER)
    collect = Collect()
    access.addHandler(collect)
    try:
        for route in ("/health", "/metrics", "/embed", "/v1/embeddings"):
            access.info("GET %s 200", route, extra={"route": route})
    finally:
        access.removeHandler(collect)
    logged = [record.getMessage() for record in collect.records]
    polls = ["GET /health 200", "GET /metrics 200"] if polls_logged else []
    assert logged == [*polls, "GET /embed 200", "GET /v1/embeddings 200"]


def test_a_slow_step_says_it_is_still_running_and_only_the_innermost_step_repeats():
    logger = logging.getLogger("embedserve.test-steps")
    collect = Collect()
    logger.addHandler(collect)
    logger.setLevel(logging.DEBUG)
    try:
        with logs.step(logger, "loading %s", "m", every=0.05):
            with logs.step(logger, "exporting %s", "m", every=0.05):
                time.sleep(0.5)
            time.sleep(0.5)
    finally:
        logger.removeHandler(collect)
    lines = [record.getMessage() for record in collect.records]
    assert lines[:2] == ["loading m", "exporting m"]
    ended = next(i for i, line in enumerate(lines) if line.startswith("exporting m: took"))
    between = lines[2:ended]
    assert between, "no progress line while the inner step ran"
    assert all(re.fullmatch(r"exporting m: still running \(\d+ s\)", line) for line in between)
    assert any(re.fullmatch(r"loading m: still running \(\d+ s\)", line) for line in lines[ended:])
    assert lines[-1].startswith("loading m: took")
    assert not [t for t in threading.enumerate() if t.name == "embedserve-progress"]


@pytest.mark.parametrize(
    ("argv", "missing"),
    [
        (["run", "--quick"], "psutil, matplotlib"),
        (["overload", "--quick"], "psutil, matplotlib"),
        (["report"], "matplotlib"),
        (["overload", "--report-only"], "matplotlib"),
    ],
)
def test_a_benchmark_command_names_the_extra_to_install_when_its_packages_are_missing(monkeypatch, argv, missing):
    for module in ("matplotlib", "psutil"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed: find_spec answers None
    with pytest.raises(SystemExit) as stopped:
        bench_cli.main(argv)
    assert str(stopped.value) == (
        f'python -m benchmarks {argv[0]} needs {missing} (the bench extra): pip install -e ".[bench]"'
    )


def test_benchmark_help_needs_no_bench_extra(monkeypatch, capsys):
    for module in ("matplotlib", "psutil"):
        monkeypatch.setitem(sys.modules, module, None)
    for command in ("run", "report", "overload", "make-bge-large-shape"):
        with pytest.raises(SystemExit) as stopped:
            bench_cli.main([command, "--help"])
        assert stopped.value.code == 0
        assert f"usage: python -m benchmarks {command}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "argv", "missing"),
    [
        ("gateway", [], "psutil"),
        ("priority", [], "psutil, matplotlib"),
        ("priority", ["--report-only"], "matplotlib"),
        ("images", [], "psutil, matplotlib"),
        ("images", ["--report-only"], "matplotlib"),
        ("cache", ["miss-cost"], "psutil, matplotlib"),
        ("cache", ["hit-rates", "--report-only"], "matplotlib"),
    ],
)
def test_a_standalone_benchmark_answers_help_and_names_the_extra_without_it(name, argv, missing):
    # A fresh interpreter in which neither psutil nor matplotlib can be imported, as without the bench extra.
    code = (
        "import sys; sys.modules['psutil'] = sys.modules['matplotlib'] = None; import runpy; "
        f"sys.argv = ['x'] + sys.argv[1:]; runpy.run_module('benchmarks.{name}', run_name='__main__')"
    )
    helped = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0, helped.stderr
    assert f"usage: python -m benchmarks.{name}" in helped.stdout
    ran = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 1, ran.stderr
    needed = f'python -m benchmarks.{name} needs {missing} (the bench extra): pip install -e ".[bench]"'
    assert ran.stderr.strip() == needed

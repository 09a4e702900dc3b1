"""The installer's tools: `probe` shows every word order, `check` shows the read plan."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from backend.modbus.probe import format_probe
from backend.modbus.registers import DataType, Table, WordOrder
from backend.modbus.simulator import SimServer, SimulatedDevice

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLUXIO_API_KEY": "k"}
    return subprocess.run(
        [sys.executable, "-m", "backend.modbus", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )


def rows_for(text: str, address: int) -> dict[str, str]:
    """{order: float32 column} of the pair block starting at `address`."""
    out: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[1] in {o.value for o in WordOrder}:
            current = int(parts[0])
            parts = parts[1:]
        elif len(parts) == 4 and parts[0] in {o.value for o in WordOrder}:
            pass
        else:
            continue
        if current == address:
            out[parts[0]] = parts[1]
    return out


def test_format_shows_the_value_in_the_right_order_only():
    text = format_probe(Table.HOLDING, 0, [0x0000, 0x4148, 0x0000, 0x4148])
    pair = rows_for(text, 0)
    assert pair["CDAB"] == "12.5*"
    assert not pair["ABCD"].endswith("*") and not pair["BADC"].endswith("*")
    assert "0x4148" in text
    assert rows_for(text, 1) == {}  # pairs step by two unless --sliding
    assert rows_for(format_probe(Table.HOLDING, 0, [0, 0x4148, 0], sliding=True), 1)["ABCD"].startswith("12.5")


def test_format_with_one_based_addresses_and_bits():
    text = format_probe(Table.HOLDING, 9, [0x4148, 0], address_base=1)
    assert "= 10 1-based" in text and "12.5*" in rows_for(text, 10)["ABCD"]
    assert "1" in format_probe(Table.COIL, 0, [True, False]).splitlines()[1]


def test_probe_command_against_a_device_in_each_order():
    port = free_port()
    dev = SimulatedDevice(5)
    for i, order in enumerate(WordOrder):
        dev.set_value(Table.INPUT, 100 + 2 * i, 21.75, DataType.FLOAT32, order)
    with SimServer([dev], port=port):
        result = cli("probe", "--tcp", f"127.0.0.1:{port}", "--unit", "5", "--address", "30101", "--count", "8")
    assert result.returncode == 0, result.stderr
    for i, order in enumerate(WordOrder):
        assert rows_for(result.stdout, 100 + 2 * i)[order.value] == "21.75*"


def test_probe_reports_failures_with_an_exit_code():
    port = free_port()
    dev = SimulatedDevice(1)
    dev.exception = 2
    with SimServer([dev], port=port):
        result = cli("probe", "--tcp", f"127.0.0.1:{port}", "--address", "0", "--count", "2", "--retries", "0")
    assert result.returncode == 1 and "exception 2 (illegal_address)" in result.stderr
    refused = cli("probe", "--tcp", f"127.0.0.1:{free_port()}", "--count", "2", "--timeout", "0.5")
    assert refused.returncode == 2 and "cannot connect" in refused.stderr


def test_check_prints_the_plan_and_rejects_bad_configs(tmp_path: Path):
    ok = cli("check", "--config", "docker/modbus.example.toml")
    assert ok.returncode == 0, ok.stderr
    assert "read holding 0 count 11: flow_rate, totalizer, temperature, status" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[connections.x]\ntransport = "tcp"\nhost = "h"\n[[devices]]\nid = "d"\nconnection = "x"\n'
        'map = "nivus"\norder = "ACBD"\n'
    )
    result = cli("check", "--config", str(bad))
    assert result.returncode == 2 and "devices[0].order" in result.stderr


def test_run_stdout_once_needs_no_api_key_even_with_an_api_section(tmp_path: Path):
    port = free_port()
    device = SimulatedDevice(1)
    device.set_nivus(12.5, 100.0, 9.5, 0, order=WordOrder.ABCD)
    config = tmp_path / "try.toml"
    config.write_text(
        '[api]\nurl = "http://127.0.0.1:5000"\n'
        f'[connections.sim]\ntransport = "tcp"\nhost = "127.0.0.1"\nport = {port}\n'
        '[[devices]]\nid = "nivus-sim"\nconnection = "sim"\nmap = "nivus"\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "FLUXIO_API_KEY"}
    with SimServer([device], port=port):
        result = subprocess.run(
            [sys.executable, "-m", "backend.modbus", "run", "--config", str(config), "--stdout", "--once"],
            cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=30,
        )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["device_id"], r["flow_rate"]) for r in records] == [("nivus-sim", 12.5)]
    # Sending still needs the key, and says so.
    check = subprocess.run([sys.executable, "-m", "backend.modbus", "run", "--config", str(config), "--once"],
                           cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 2 and "api.api_key: no API key" in check.stderr
    plan = subprocess.run([sys.executable, "-m", "backend.modbus", "check", "--config", str(config)],
                          cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=30)
    assert plan.returncode == 0 and "no API key yet: only run --stdout will work" in plan.stdout

"""Real deployment on Flower: a SuperLink and two SuperNodes on 127.0.0.1 (insecure, local
ports), 2 rounds of FedDST with 2 clients, compared with the in-process simulation; and a real
SIGKILL of the simulation engine followed by a rerun."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sparseprior.engine.distributed import find_free_port
from sparseprior.federated import load_final, run_federated

sys.path.insert(0, str(Path(__file__).parent))
import contextlib

from test_federated import tiny  # noqa: E402

BIN = Path(sys.executable).parent
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _descendants(pid: int) -> list[int]:
    """Child processes of ``pid`` (recursively), from /proc."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            out += [child, *_descendants(child)]
    return out


def _kill_all(procs: list[subprocess.Popen]) -> None:
    """SIGKILL the processes we started and every descendant they spawned (by pid)."""
    pids = []
    for p in procs:
        pids += [p.pid, *_descendants(p.pid)]
    for pid in reversed(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=10)


def _wait_for_port(port: int, procs: list[subprocess.Popen], timeout: float) -> None:
    """Block until something listens on 127.0.0.1:``port`` (or fail when a process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise AssertionError("a Flower process exited early")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on port {port} after {timeout} s")


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=SRC + os.pathsep + env.get("PYTHONPATH", ""),
               PATH=str(BIN) + os.pathsep + env.get("PATH", ""),
               FLWR_HOME=str(tmp_path / "flwr-home"), OMP_NUM_THREADS="1",
               FLWR_TELEMETRY_ENABLED="0")
    return env


@pytest.mark.slow
def test_flower_deployment_matches_the_simulation(tmp_path):
    pytest.importorskip("flwr", reason="Flower is not installed: pip install 'sparseprior[fed]'")
    for tool in ("flower-superlink", "flower-supernode", "flwr"):
        if not (BIN / tool).exists():
            pytest.skip(f"{tool} is not next to {sys.executable}; install 'sparseprior[fed]'")
    from sparseprior.federated.flower_app import write_app_dir

    config = tiny(clients=2, per_round=2, rounds=2, split="iid")
    (tmp_path / "config.json").write_text(config.to_json())
    app = write_app_dir(tmp_path / "app")
    env = _env(tmp_path)
    link = find_free_port()
    (tmp_path / "flwr-home").mkdir()
    (tmp_path / "flwr-home" / "config.toml").write_text(
        f'[superlink]\ndefault = "testlink"\n\n[superlink.testlink]\naddress = "127.0.0.1:{link}"\n'
        f"insecure = true\n")
    logs = {name: open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 (closed in finally)
            for name in ("link", "n0", "n1", "run")}
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(
            [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port",
             str(link), "--disable-runtime-dependency-installation"], cwd=tmp_path, env=env,
            stdout=logs["link"], stderr=subprocess.STDOUT))
        _wait_for_port(link, procs, 120)
        node_ports = [find_free_port() for _ in range(2)]
        for i in range(2):
            procs.append(subprocess.Popen(
                [str(BIN / "flower-supernode"), "--insecure", "--superlink",
                 f"127.0.0.1:{link}", "--port", str(node_ports[i]), "--node-config",
                 f"partition-id={i}", "--max-wait-time", "300"], cwd=tmp_path, env=env,
                stdout=logs[f"n{i}"], stderr=subprocess.STDOUT))
        for port in node_ports:
            _wait_for_port(port, procs, 120)
        out = tmp_path / "out"
        run_config = f"config-path='{tmp_path / 'config.json'}' out='{out}' timeout=300.0"
        deadline = time.monotonic() + 600  # a loaded 2-core machine; ~1 min when idle
        procs.append(subprocess.Popen(  # `flwr run` returns once the run is started
            [str(BIN / "flwr"), "run", str(app), "testlink", "--run-config", run_config],
            cwd=tmp_path, env=env, stdout=logs["run"], stderr=subprocess.STDOUT))
        while not (out / "final.json").exists() and time.monotonic() < deadline:
            time.sleep(1)
        assert (out / "final.json").exists(), "no result from the ServerApp: " + \
            (tmp_path / "link.log").read_text()[-3000:]
    finally:
        _kill_all(procs)
        for fh in logs.values():
            fh.close()
    import json

    rounds = json.loads((out / "metrics.json").read_text())
    assert [r["accepted"] for r in rounds] == [2, 2], (
        "the SuperNodes did not reply (Flower drops a ClientApp whose process misses its "
        "heartbeats for ~60 s, e.g. on an overloaded machine): "
        + (tmp_path / "n0.log").read_text()[-1500:])
    flower = load_final(out)
    state = run_federated(config, None)["state"]
    assert set(flower) == set(state.weights)
    for name, value in state.weights.items():
        assert torch.allclose(flower[name], value, atol=1e-5, rtol=1e-4), name
    for name, mask in state.masks.items():  # same masks: exactly sparse on both engines
        assert torch.equal(flower[name] != 0, mask), name


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_gives_the_identical_final_model(tmp_path):
    config = tiny(rounds=6)
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(config.to_json())
    folder = tmp_path / "run"
    cmd = [sys.executable, "-m", "sparseprior", "fed", "run", "--config", str(cfg_file),
           "--out", str(folder)]
    env = _env(tmp_path)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        metrics = folder / "metrics.jsonl"
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        _kill_all([proc])
    assert not (folder / "summary.json").exists()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    straight = run_federated(config, None)["state"].weights
    final = load_final(folder)
    assert all(torch.equal(final[k], straight[k]) for k in straight)

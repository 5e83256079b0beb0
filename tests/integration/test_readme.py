"""The README's "Using it" commands, run as written, in order, on a fresh data folder."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    """Return the lines of the bash block under "## Using it", comments stripped."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Using it", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README's 'Using it' section lost its bash block"
    lines = [line.split("  #", 1)[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def readme_entity_request() -> dict[str, object]:
    """Return the entity-lookup body the README's "Using it" section shows."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Using it", 1)[1].split("\n## ", 1)[0]
    found = re.search(r'`(\{"entity": \{"customer_id": \d+\}\})`', section)
    assert found, "README's 'Using it' section lost its entity-lookup example"
    import json

    return json.loads(found.group(1))


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(900)
def test_the_readme_commands_work_as_written(tmp_path: Path) -> None:
    commands = readme_commands()
    assert any("optimize" in c for c in commands) and commands[-1].split()[-3] == "serve"
    env = os.environ | {"BANDITFLOW_HOME": str(tmp_path / "home")}
    env.pop("PREFECT_API_URL", None)
    # A busy laptop: one core spins the whole time, as a user's other work would.
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        _walk_the_readme(commands, env)
    finally:
        hog.kill()
        hog.wait(timeout=10)


def _walk_the_readme(commands: list[str], env: dict[str, str]) -> None:
    for command in commands[:-1]:
        run = subprocess.run(
            shlex.split(command), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
        )
        assert run.returncode == 0, f"{command}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    assert "champion" in run.stdout  # `models` shows the registered champion

    # The last one serves until stopped: start it, ask it, stop it.
    words = shlex.split(commands[-1])
    assignments = [w for w in words if "=" in w and not w.startswith("-")]
    serve_env = env | dict(a.split("=", 1) for a in assignments)
    proc = subprocess.Popen(
        [w for w in words if w not in assignments], cwd=ROOT, env=serve_env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get("http://127.0.0.1:8000/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, "banditflow serve exited"
            time.sleep(0.5)
        arms = httpx.get("http://127.0.0.1:8000/arms", timeout=5).json()
        assert arms["model_name"] == "conversion-hgb"
        assert any(a["role"] == "champion" for a in arms["arms"])
        assert httpx.get("http://127.0.0.1:8000/docs", timeout=5).status_code == 200
        # The path ends with a model that serves: the ONNX champion, found by entity.
        ready = httpx.get("http://127.0.0.1:8000/readyz", timeout=5).json()
        champion = ready["champion"]
        assert ready["models"][champion]["flavour"] == "onnx", ready["models"][champion]
        deadline = time.monotonic() + 240  # Feast opens off the request path, at start-up
        while ready["entity_lookups"] == "opening the Feast store":
            assert time.monotonic() < deadline, "the Feast store never opened"
            time.sleep(0.5)
            ready = httpx.get("http://127.0.0.1:8000/readyz", timeout=5).json()
        assert ready["entity_lookups"].startswith("ready"), ready["entity_lookups"]
        body = readme_entity_request()
        answer = httpx.post("http://127.0.0.1:8000/predict", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["arm"] == champion
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)

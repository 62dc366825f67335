"""The live dashboard: /api/metrics over real HTTP, its token, the CLI's bad input, a served run's
clients, and the page in a real headless Chromium updating as a run's rounds finish."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from importlib import resources

import pytest

import fedfm
from fedfm.cli import main
from fedfm.dashboard import DashboardServer, RunSource
from tests.conftest import ROOT
from tests.runtimes.conftest import Server, certs  # noqa: F401  (certs: a fixture)

pytestmark = pytest.mark.network


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), _lower(response.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), _lower(e.headers)


def _lower(headers) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


@pytest.fixture
def dashboard():
    """``dashboard(run_dir, **options)`` → a started DashboardServer on a free loopback port."""
    started = []

    def make(run_dir, live=None, **options) -> DashboardServer:
        options.setdefault("port", 0)
        board = DashboardServer(RunSource(run_dir, live), **options).start()
        started.append(board)
        return board

    yield make
    for board in started:
        board.stop()


def _base(board: DashboardServer) -> str:
    return f"http://127.0.0.1:{board.port}/"


def test_api_metrics_serves_the_run_directorys_rounds_and_summary(finished_run, dashboard):
    board = dashboard(finished_run)
    status, body, headers = _get(_base(board) + "api/metrics")
    assert status == 200 and headers["content-type"] == "application/json"
    data = json.loads(body)
    rows = [json.loads(x) for x in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in data["rounds"]] == [1, 2, 3]
    assert [r["bytes_up"] for r in data["rounds"]] == [r["bytes_up"] for r in rows]
    assert [r["accuracy"] for r in data["rounds"]] == [r["accuracy"] for r in rows]
    summary = json.loads((finished_run / "summary.json").read_text())
    assert data["summary"]["final_accuracy"] == summary["final_accuracy"]
    assert data["run"]["finished"] and data["run"]["rounds_planned"] == 3
    assert not data["run"]["differential_privacy"] and data["clients"] is None


def test_a_run_being_written_is_read_as_far_as_it_goes(finished_run, tmp_path, dashboard):
    run_dir = shutil.copytree(finished_run, tmp_path / "run")
    (run_dir / "summary.json").unlink()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    nan_row = json.loads(lines[1]) | {"loss": float("nan")}  # a diverged round: JSON has no NaN
    (run_dir / "metrics.jsonl").write_text(
        lines[0] + "\n" + json.dumps(nan_row) + "\n" + lines[2][:25]  # round 3: half written
    )
    board = dashboard(run_dir)
    data = json.loads(_get(_base(board) + "api/metrics")[1])
    assert [r["round"] for r in data["rounds"]] == [1, 2]
    assert data["rounds"][1]["loss"] is None and not data["run"]["finished"]


def test_page_and_assets_ship_in_the_package_and_load_nothing_from_elsewhere(
    finished_run, dashboard
):
    board = dashboard(finished_run)
    status, page, headers = _get(_base(board))
    assert status == 200 and b"round-count" in page
    assert "default-src 'self'" in headers["content-security-policy"]
    static = resources.files("fedfm.dashboard").joinpath("static")
    for name in ("index.html", "dashboard.js", "dashboard.css"):
        text = static.joinpath(name).read_text()
        # the only absolute URL is the SVG namespace, an identifier that is never fetched
        assert re.findall(r"https?://[^\s\"'`)]+", text) in ([], ["http://www.w3.org/2000/svg"])
    for src in re.findall(rb'(?:src|href)="([^"]+)"', page):
        if src != b"data:,":  # the empty icon: no request for /favicon.ico
            assert _get(_base(board) + src.decode())[0] == 200
    assert _get(_base(board) + "static/app.py")[0] == 404


def test_a_token_is_required_when_given_and_compared_exactly(finished_run, dashboard):
    board = dashboard(finished_run, token="s3cret-token")
    base = _base(board)
    assert board.url == f"{base}?token=s3cret-token"
    for url, headers in [
        (base + "api/metrics", {}),
        (base + "api/metrics?token=s3cret-tokeN", {}),
        (base + "api/metrics", {"Authorization": "Bearer s3cret-toke"}),
        (base, {}),
    ]:
        status, body, _ = _get(url, headers)
        assert status == 401 and b"token" in body and b"round" not in body
    assert _get(base + "api/metrics?token=s3cret-token")[0] == 200
    assert _get(base + "api/metrics", {"Authorization": "Bearer s3cret-token"})[0] == 200
    assert _get(base + "?token=s3cret-token")[0] == 200
    assert _get(base + "static/dashboard.js")[0] == 200  # the package's code, no run data


def test_bound_beyond_loopback_a_token_is_generated_and_required(finished_run, dashboard):
    board = dashboard(finished_run, host="0.0.0.0")
    assert board.token and len(board.token) >= 32 and board.url.endswith(f"?token={board.token}")
    assert _get(_base(board) + "api/metrics")[0] == 401
    assert _get(_base(board) + f"api/metrics?token={board.token}")[0] == 200


def test_on_loopback_a_foreign_host_name_is_refused(finished_run, dashboard):
    board = dashboard(finished_run)  # DNS rebinding: a page of evil.example reading 127.0.0.1
    assert _get(_base(board) + "api/metrics", {"Host": "evil.example"})[0] == 400
    assert _get(_base(board) + "api/metrics", {"Host": f"localhost:{board.port}"})[0] == 200


def test_fedfm_dashboard_serves_until_ctrl_c(finished_run):
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    argv = [sys.executable, "-m", "fedfm", "dashboard", str(finished_run), "--port", "0"]
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()  # "dashboard of RUN_DIR: http://127.0.0.1:PORT/  (...)"
        url = re.search(r"(http://127\.0\.0\.1:\d+/)", line).group(1)
        status, body, _ = _get(url + "api/metrics")
        assert status == 200 and [r["round"] for r in json.loads(body)["rounds"]] == [1, 2, 3]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    assert "Traceback" not in proc.stderr.read()


def _taken_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["dashboard", "no/such/run", "--port", "0"], "RUN_DIR 'no/such/run' does not exist"),
        (["dashboard", "{run}", "--port", "70000"], "--port 70000 is not allowed; allowed: 0"),
        (["dashboard", "{run}", "--port", "{taken}"], "is already in use"),
        (["dashboard", "{run}", "--host", "no-such-host.invalid"], "--host 'no-such-host.invalid'"),
        (["dashboard", "{tmp}", "--port", "0"], "is not a run directory: it has no config.toml"),
        (["serve", "--dashboard", "{taken}"], "--dashboard {taken}: 127.0.0.1:{taken} is already"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(finished_run, tmp_path, capsys, argv, expected):
    with _taken_port() as taken:
        port = str(taken.getsockname()[1])
        fill = {"run": str(finished_run), "taken": port, "tmp": str(tmp_path)}
        assert main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected.format(**fill) in err, err


def test_a_served_runs_connected_late_and_rejected_clients(tmp_path, certs, dashboard):  # noqa: F811
    server = Server(tmp_path, certs)
    try:
        board = dashboard(server.run_dir, live=server.runtime.live_status)
        (server.run_dir / "config.toml").write_text('name = "served"\n[federation]\nrounds = 2\n')
        server.client("c0").join()
        server.client("c1").join()
        with pytest.raises(fedfm.FedFMError):
            server.client("c2", token="not-the-right-token").join()
        server.store.event("late", "c1", 1, "round 1 closed before the upload completed (late)")
        data = json.loads(_get(_base(board) + "api/metrics")[1])
        clients = data["clients"]
        assert sorted(clients["connected"]) == ["c0", "c1"] and data["live"]
        assert sorted(clients["joined"]) == ["c0", "c1"] and data["run"]["served"]
        assert clients["late"] == [
            {
                "round": 1,
                "client": "c1",
                "reason": "round 1 closed before the upload completed (late)",
            }
        ]
        assert clients["rejected_total"] == 1 and clients["rejected"][0]["client"] == "c2"
    finally:
        server.close()


# ---- the page in a real browser -------------------------------------------------------------


def _chromium() -> str | None:
    for candidate in (os.environ.get("FEDFM_CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


@pytest.fixture
def page():
    playwright = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium browser found (apt-get install chromium, or set FEDFM_CHROMIUM)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True)
        try:
            yield browser.new_page()
        finally:
            browser.close()


def test_the_page_updates_in_a_browser_as_rounds_finish(page, tiny_config, tmp_path, dashboard):
    from playwright.sync_api import expect

    # with differential privacy: the page shows the ε spent so far
    dp = ("privacy.dp=central", "privacy.noise_multiplier=1.0", "privacy.clip_norm=5.0")
    config = tiny_config("federation.rounds=2", "federation.local_steps=3", *dp)
    failure: list[BaseException] = []

    def work():
        try:
            fedfm.run(config, out=tmp_path)
        except BaseException as e:  # the test fails with it, not with a timeout
            failure.append(e)

    run = threading.Thread(target=work, daemon=True)
    run.start()
    run_dir = tmp_path / config.name
    deadline = time.monotonic() + 300
    while not (run_dir / "config.toml").is_file():
        assert not failure and time.monotonic() < deadline, failure
        time.sleep(0.1)
    board = dashboard(run_dir)
    page.goto(board.url)
    expect(page.locator("#run-name")).to_have_text(config.name)
    expect(page.locator("#rounds-planned")).to_have_text("2")
    accuracy_points = page.locator("#accuracy-chart circle.point")
    shown: list[str] = []
    for k in ("1", "2"):
        expect(page.locator("#round-count")).to_have_text(k, timeout=300_000)
        assert not failure, failure
        shown.append(k)
        expect(accuracy_points).to_have_count(int(k))  # a curve point per round, as it comes
        expect(page.locator("#rounds-table tbody tr")).to_have_count(int(k))
    assert shown == ["1", "2"]
    run.join(300)
    assert not run.is_alive() and not failure, failure
    expect(page.locator("#run-status")).to_have_text("finished", timeout=30_000)
    summary = json.loads((run_dir / "summary.json").read_text())
    expect(page.locator("#accuracy")).to_have_text(f"{summary['final_accuracy']:.4f}")
    mb = (summary["bytes_up_total"] + summary["bytes_down_total"]) / 1e6
    expect(page.locator("#megabytes")).to_have_text(f"{mb:.2f}")
    expect(page.locator("#epsilon-card")).to_be_visible()
    expect(page.locator("#epsilon")).to_have_text(f"{summary['epsilon']:.3f}")
    expect(page.locator("#clients-card")).to_be_hidden()  # simulated: nothing to say


def test_fedfm_serve_dashboard_shows_the_served_run_and_its_clients_live(tmp_path):
    from tests.runtimes.test_grpc_network import NET, Deployment

    d = Deployment(
        tmp_path,
        [*NET, "partition.clients=2", "federation.clients_per_round=2", "federation.rounds=2"],
    )
    seen: dict[str, set] = {"connected": set(), "rounds": set(), "finished": set()}
    try:
        server = d.serve("--dashboard", "0")
        log = tmp_path / "serve-0.log"
        deadline = time.monotonic() + 120
        while not (found := re.search(r"dashboard: (http://\S+)", log.read_text())):
            assert server.poll() is None and time.monotonic() < deadline, d.logs()
            time.sleep(0.2)
        url = found.group(1)
        d.join("c0")
        d.join("c1")
        deadline = time.monotonic() + 600
        while server.poll() is None:  # the page's data while the server serves
            assert time.monotonic() < deadline, d.logs()
            try:
                data = json.loads(_get(url + "api/metrics")[1])
            except OSError:  # the server stops its dashboard as it exits
                break
            if data["run"] is not None:
                assert data["run"]["name"] == "net" and data["run"]["served"] and data["live"]
                seen["connected"].add(tuple(sorted(data["clients"]["connected"])))
                seen["rounds"].add(len(data["rounds"]))
                seen["finished"].add(data["run"]["finished"])
            time.sleep(0.2)
        assert d.wait("serve-0") == 0, d.logs()
    finally:
        d.kill_all()
    assert ("c0", "c1") in seen["connected"]  # both connected, live
    assert {1, 2} <= seen["rounds"] and True in seen["finished"], seen

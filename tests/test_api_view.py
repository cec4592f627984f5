"""The live view: the API's HTML page in headless Chromium, during a real federation."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from api_support import Driver, wait_for_api
from flwr.app import ConfigRecord, MetricRecord
from flwr.serverapp import ServerApp
from PIL import Image, ImageStat
from ray_support import run_app

from fedforget.api.app import FederationView
from fedforget.api.auth import ApiToken
from fedforget.api.client import UnlearningClient
from fedforget.api.server import ApiServer
from fedforget.api.sqlite_queue import SQLiteRequestQueue
from fedforget.api.view import CONTENT_SECURITY_POLICY, PAGE, SCRIPT, VIEW_PATH
from fedforget.arrays import to_arrays, to_record
from fedforget.config import FederationConfig
from fedforget.federated.federation import build_strategy, live_api
from fedforget.federated.records import FederationStatus
from fedforget.requests import UnlearningRequest
from fedforget.task import evaluate_global_metrics, model_arrays, new_model

pytestmark = pytest.mark.ray

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="the chromium binary is not installed (apt-get install -y chromium; .ci/run does)",
)
WINDOW = (1280, 1000)
FORGOTTEN_RGB = (0xB4, 0x23, 0x18)  # the page's --forgot and --train colours
TRAINING_RGB = (0x1F, 0x7A, 0x4D)
PAGE_WAIT_S = 120.0

VIEWED = FederationConfig(
    num_partitions=3,
    local_epochs=1,
    num_server_rounds=6,  # slack: the run must still be up when the page loads
    unlearn_at_round=0,
    api_enabled=True,
    progress=False,
)


# ------------------------------------------------------------------ helpers
class Dom(HTMLParser):
    """A dumped DOM: every element with its attributes, its text and its nearest id'd ancestor."""

    VOID = frozenset({"meta", "link", "input", "br", "img", "hr", "source", "wbr", "area", "col"})

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[dict[str, Any]] = []
        self._open: list[dict[str, Any]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        within = next((e["attrs"]["id"] for e in reversed(self._open) if "id" in e["attrs"]), "")
        element = {"tag": tag, "attrs": attributes, "text": "", "within": within}
        self.elements.append(element)
        if tag not in self.VOID:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop()["tag"] == tag:
                break

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element["text"] += data

    def text(self, element_id: str) -> str:
        """The text under the element with ``element_id``, stripped ('' if there is none)."""
        found = [e["text"] for e in self.elements if e["attrs"].get("id") == element_id]
        return found[0].strip() if found else ""

    def items(self, list_id: str) -> list[str]:
        """The texts of the items of the list with ``list_id``, in order."""
        return [e["text"] for e in self.elements if e["tag"] == "li" and e["within"] == list_id]

    def count(self, tag: str, css_class: str) -> int:
        """How many ``tag`` elements carry ``css_class``."""
        return sum(
            1
            for e in self.elements
            if e["tag"] == tag and css_class in e["attrs"].get("class", "").split()
        )

    def ids(self) -> list[str]:
        """Every element id, in document order."""
        return [e["attrs"]["id"] for e in self.elements if "id" in e["attrs"]]


def chromium(url: str, profile: Path, *args: str, budget_ms: int = 4000) -> str:
    """Load ``url`` in headless Chromium with ``args`` (e.g. --dump-dom); its stdout."""
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless=new",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--virtual-time-budget={budget_ms}",
        *(["--no-sandbox"] if os.geteuid() == 0 else []),  # Chromium's sandbox refuses root
        *args,
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def pixels_near(image: Image.Image, colour: tuple[int, int, int], tolerance: int = 12) -> int:
    """How many pixels of ``image`` are within ``tolerance`` of ``colour`` in every channel."""
    difference = np.abs(np.asarray(image, dtype=np.int16) - np.array(colour, dtype=np.int16))
    return int(np.all(difference <= tolerance, axis=-1).sum())


def view_url(base: str, token: str) -> str:
    """The page with the token in the fragment (never sent to the server)."""
    return f"{base}{VIEW_PATH}#token={token}"


# ------------------------------------------------------- a live federation
def run_viewed_federation(config: FederationConfig, profile: Path) -> dict[str, Any]:
    """Forget client 1 mid-run, then load the page while the run holds still.

    The run holds in the evaluation of the round after the step (its API up,
    its status fixed) until the page has been read, so what the page shows
    can be compared with the API's answers at the same moment.
    """
    from clients.client_app import app as client_app

    page_read = threading.Event()
    scores: dict[int, float] = {}
    server = ServerApp()

    @server.main()
    def main(grid, context):
        strategy = build_strategy(config)

        def evaluate(server_round, arrays):
            metrics = evaluate_global_metrics(config, to_arrays(arrays))
            scores[server_round] = metrics["accuracy"]
            if strategy.events and server_round > strategy.events[-1].server_round:
                page_read.wait(PAGE_WAIT_S)
            return MetricRecord(metrics)

        with live_api(config, strategy):
            strategy.start(
                grid,
                to_record(model_arrays(new_model(config))),
                config.num_server_rounds,
                600.0,
                ConfigRecord(config.to_run_config()),
                ConfigRecord(config.to_run_config()),
                evaluate,
            )

    def scenario(client: UnlearningClient) -> dict[str, Any]:
        token = (Path(config.state_dir) / "api-token").read_text().strip()
        while client.status()["current_round"] < 2:  # client 1 has trained once
            time.sleep(0.05)
        applied = client.wait(client.submit(["1"])["request_id"], timeout=PAGE_WAIT_S)
        while client.status()["current_round"] <= applied["applied_round"]:
            time.sleep(0.05)  # then held in the next round's evaluation, the applied score in
        seen = {"applied": applied, "status": client.status(), "audit": client.audit_log()}
        if CHROMIUM is not None:
            url = view_url(client.url, token)
            seen["dom"] = chromium(url, profile / "dom", "--dump-dom")
            seen["png"] = profile / "page.png"
            chromium(url, profile / "shot", f"--screenshot={seen['png']}")
        seen["status_after"] = client.status()
        return seen

    def drive() -> dict[str, Any]:
        try:
            return scenario(wait_for_api(Path(config.state_dir)))
        finally:
            page_read.set()

    driver = Driver(drive)
    driver.start()
    run_app(server, client_app, config.num_partitions)
    return {**driver.outcome(timeout=PAGE_WAIT_S), "scores": scores}


@pytest.fixture(scope="module")
def viewed(tmp_path_factory):
    """A run that forgot client 1, its API's answers and (with Chromium) its page."""
    config = VIEWED.replace(state_dir=str(tmp_path_factory.mktemp("state")))
    return run_viewed_federation(config, tmp_path_factory.mktemp("chromium"))


def test_status_carries_the_test_score_of_every_evaluated_round(viewed):
    """/v1/status lists the server's test accuracy of rounds 0..t (t: the applied round)."""
    t = viewed["applied"]["applied_round"]
    status = viewed["status"]
    assert status["current_round"] == t + 1
    assert status["test_metric"] == "accuracy"
    assert [(s["server_round"], s["value"]) for s in status["test_scores"]] == [
        (r, pytest.approx(viewed["scores"][r], abs=1e-12)) for r in range(t + 1)
    ]
    assert viewed["status_after"] == status, "the run moved while the page was read"


@needs_chromium
def test_the_status_page_shows_a_request_that_was_just_applied(viewed):
    """In Chromium the page shows round t + 1, client 1 forgotten, the request in the audit log."""
    dom = Dom(viewed["dom"])
    applied, status = viewed["applied"], viewed["status"]
    t = applied["applied_round"]
    assert dom.text("round") == f"{t + 1} / {VIEWED.num_server_rounds}"
    assert dom.text("method") == "puf-special"
    assert dom.items("clients-forgotten") == ["1"]
    assert dom.items("clients-training") == ["0", "2"]
    assert dom.items("clients-excluded") == ["none"]
    audit = dom.text("audit-body")
    assert applied["request_id"] in audit
    assert f"{applied['update_norm']:.4f}" in audit
    assert status["pending_requests"] == [] and "No request is pending" in dom.text("requests-body")
    # one point per evaluated round, the step marked, the latest value shown
    assert dom.count("circle", "point") == len(status["test_scores"]) == t + 1
    assert dom.count("line", "step") == 1
    assert dom.text("curve-latest") == f"round {t}: {status['test_scores'][-1]['value']:.4f}"
    assert dom.text("token-message") == ""  # the token from the fragment was taken


@needs_chromium
def test_the_screenshot_has_the_window_size_and_is_not_blank(viewed):
    """The PNG is the window's size, not blank, and shows the client chips in their colours."""
    with Image.open(viewed["png"]) as image:
        assert image.size == WINDOW
        rgb = image.convert("RGB")
    spread = ImageStat.Stat(rgb.convert("L")).stddev[0]
    assert spread > 5, f"the screenshot looks blank (grey-level std {spread:.1f})"
    # one forgotten chip (client 1), two training chips (0 and 2): solid areas of their colours
    assert 150 < pixels_near(rgb, FORGOTTEN_RGB) < 2000
    assert 300 < pixels_near(rgb, TRAINING_RGB) < 4000


# ------------------------------------------------------------ no federation
EVIL_CLIENT = '"><img id=injected-client src=x onerror=alert(1)>'
EVIL_METHOD = "<b id=injected-method>m</b>"
EVIL_OPTION = "<svg id=injected-option onload=alert(1)></svg>"
EVIL_REASON = "<img id=injected-reason src=x onerror=alert(1)> eta too big"


@pytest.fixture
def evil_api(tmp_path):
    """An API over a queue and a status full of markup (as a rogue client or row could hold).

    The status names a client whose id is HTML; the audit log holds a request
    for it; a queued request with HTML method and option is rejected with an
    HTML reason when the status is read the second time (the page's second poll).
    """
    queue = SQLiteRequestQueue(tmp_path / "requests.sqlite3")
    queue.submit(UnlearningRequest((EVIL_CLIENT,), method="not", request_id="forgot-evil"))
    queue.mark_step_applied(["forgot-evil"], 3, 0.5)
    queue.submit(
        UnlearningRequest(
            (EVIL_CLIENT, "0"),
            method=EVIL_METHOD,
            options={"source": EVIL_OPTION},
            request_id="rejected-evil",
        )
    )
    reads = 0

    def read_status() -> FederationStatus:
        nonlocal reads
        reads += 1
        if reads == 2:
            queue.mark_rejected("rejected-evil", EVIL_REASON)
        return FederationStatus(
            current_round=4,
            method="puf-special",
            clients_seen=("0", EVIL_CLIENT),
            clients_forgotten=(EVIL_CLIENT,),
            clients_excluded=(EVIL_CLIENT,),
            test_metric=EVIL_METHOD,
            test_scores=((0, 0.1), (1, 0.5)),
        )

    token = ApiToken("view-test-token-0123456789", "test")
    config = FederationConfig(num_partitions=3, unlearn_at_round=0)
    server = ApiServer(queue, FederationView(read_status, config), token).start()
    yield server.url, token.value
    server.stop()
    queue.close()


def test_the_page_is_public_constant_and_self_contained_the_data_is_not(evil_api):
    """GET /view needs no token and holds no data; all else still needs it; strict headers."""
    url, token = evil_api
    page = httpx.get(url + VIEW_PATH)
    assert page.status_code == 200 and page.text == PAGE
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "forgot-evil" not in page.text and "injected" not in page.text
    # nothing loaded from elsewhere: no src/href, no URL but the SVG namespace
    assert not re.search(r"\b(src|href)\s*=", PAGE)
    assert re.findall(r"\w+://[^\s\"']+", PAGE) == ["http://www.w3.org/2000/svg"]
    assert SCRIPT in PAGE
    # only GET of exactly that path is public
    for method, path in (("POST", VIEW_PATH), ("GET", VIEW_PATH + "/"), ("GET", "/v1/status")):
        assert httpx.request(method, url + path).status_code == 401, (method, path)
    # a token in a query string is never looked at: still 401
    assert httpx.get(f"{url}/v1/status?token={token}").status_code == 401


@needs_chromium
def test_client_ids_methods_options_and_reasons_are_shown_as_text(evil_api, tmp_path):
    """Markup in the data appears as text in Chromium's DOM; no element is injected."""
    url, token = evil_api
    dom_html = chromium(view_url(url, token), tmp_path / "profile", "--dump-dom", budget_ms=8000)
    dom = Dom(dom_html)
    assert [i for i in dom.ids() if i.startswith("injected")] == []
    assert not any("onerror" in e["attrs"] or "onload" in e["attrs"] for e in dom.elements)
    assert dom.items("clients-forgotten") == [EVIL_CLIENT]
    assert dom.items("clients-excluded") == [EVIL_CLIENT]
    assert dom.items("clients-training") == ["0"]
    requests = dom.text("requests-body")
    assert "rejected-evil" in requests and "rejected" in requests
    for text in (EVIL_CLIENT, EVIL_METHOD, f"source={EVIL_OPTION}", EVIL_REASON):
        assert text in requests, text
    assert EVIL_CLIENT in dom.text("audit-body") and "forgot-evil" in dom.text("audit-body")
    assert dom.text("curve-metric") == EVIL_METHOD
    assert "&lt;img id=injected-reason" in dom_html  # serialised as text, escaped


@needs_chromium
def test_a_wrong_token_shows_the_token_form_and_no_data(evil_api, tmp_path):
    """With a refused token the page asks for one and shows nothing of the federation."""
    url, _ = evil_api
    dom_html = chromium(view_url(url, "not-the-token"), tmp_path / "profile", "--dump-dom")
    dom = Dom(dom_html)
    hidden = {e["attrs"].get("id") for e in dom.elements if "hidden" in e["attrs"]}
    assert "federation" in hidden and "token-form" not in hidden
    assert "refused" in dom.text("token-message")
    assert "forgot-evil" not in dom_html and dom.items("clients-forgotten") == []

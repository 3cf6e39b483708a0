"""The /ui dashboard in real headless Chromium against a real `tuneforge serve` (API and
worker processes, tiny models): sign in, follow a job while it trains, read its curves,
events, checkpoints and confusion matrix, move an alias, predict, and keep the key out of
every URL and cookie.

Screenshots go to tests/ui/screenshots/ (git-ignored); their paths are printed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Request, Route, expect, sync_playwright

from tests.live import LiveService, live_service, upload_jsonl, wait_for_job
from tests.live import expect as expect_status
from tests.security.fuzz import TINY_MODEL, service_env, tiny_models
from tests.unit.tiny_model import sentiment_rows

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
NAME = "sentiment"
NER_NAME = "moods"
# Tiny jobs: a few seconds each on two cores. 10% of the rows are held out (stratified), the
# rest train in batches of 8 with an evaluation and a checkpoint at every epoch.
ROWS = 80
HELD_OUT = 8
EPOCHS = 3
STEPS = (ROWS - HELD_OUT) // 8 * EPOCHS
HYPERPARAMETERS = {"n_epochs": EPOCHS, "batch_size": 8, "learning_rate": 1e-3}
WAIT_MS = 120_000

if not CHROMIUM.exists():
    pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium; .ci/run "
                "installs it)", allow_module_level=True)


def mood_rows(n: int) -> list[dict[str, Any]]:
    """Entity rows in the tiny model's vocabulary: a thing (ITEM) and how it was (MOOD)."""
    items = ["movie", "film", "plot", "story"]
    moods = ["good", "great", "bad", "awful", "dull", "fun"]
    return [{"tokens": ["the", items[i % 4], "was", moods[i % 6]],
             "tags": ["O", "B-ITEM", "O", "B-MOOD"]} for i in range(n)]


@dataclass
class Dashboard:
    service: LiveService
    page: Page
    job_id: str
    later_job_id: str
    ner_job_id: str
    spare_job_id: str
    urls: list[str] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)

    def shot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path


def start_jobs(service: LiveService) -> tuple[str, str, str, str]:
    """Four jobs queued at once (the worker takes them in turn): two versions of one
    classifier, an entity tagger, and one last in line for the buttons to stop."""
    with service.client() as client:
        reviews = upload_jsonl(client, "reviews.jsonl", sentiment_rows(ROWS))["id"]
        moods = upload_jsonl(client, "moods.jsonl", mood_rows(ROWS))["id"]

        def create(file_id: str, suffix: str, epochs: int = EPOCHS) -> str:
            job = expect_status(client.post("/v1/fine_tuning/jobs", json={
                "model": TINY_MODEL, "training_file": file_id, "suffix": suffix,
                "hyperparameters": {**HYPERPARAMETERS, "n_epochs": epochs}}), 201)
            return str(job["id"])

        # Only the first job's curves are looked at: the others train one epoch.
        return (create(reviews, NAME), create(reviews, NAME, 1), create(moods, NER_NAME, 1),
                create(reviews, "spare", 1))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory, browser: Browser) -> Iterator[Dashboard]:
    root = tmp_path_factory.mktemp("dashboard")
    models = tiny_models(root / "models")
    with live_service(root / "service", env_overrides=service_env(models)) as service:
        job_ids = start_jobs(service)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        board = Dashboard(service, page, *job_ids)

        def record(request: Request) -> None:
            board.urls.append(request.url)
            if "/v1/" in request.url:
                board.authorizations.append(request.headers.get("authorization"))

        page.on("request", record)
        page.goto(f"{service.base_url}/ui")
        yield board
        context.close()


def sign_in(page: Page, key: str) -> None:
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()


def test_a_wrong_key_is_refused_and_the_right_one_signs_in(dashboard: Dashboard) -> None:
    page = dashboard.page
    sign_in(page, "tf-not-a-key")
    expect(page.get_by_role("alert")).to_contain_text("refused")
    expect(page.locator("#nav")).to_be_hidden()
    sign_in(page, dashboard.service.api_key)
    expect(page.locator("#nav")).to_be_visible()
    expect(page.locator(f'tr[data-job="{dashboard.job_id}"]')).to_be_visible()


def is_stream(url: str) -> bool:
    return url.endswith("/events?stream=true")


def test_pause_resume_and_cancel_buttons_on_a_server_without_a_stream(
        dashboard: Dashboard) -> None:
    page = dashboard.page
    # A server (or proxy) that refuses the event stream: the page polls the list instead.
    refused: list[str] = []

    def refuse(route: Route) -> None:
        refused.append(route.request.url)
        route.fulfill(status=404, json={"error": {"code": "not_found", "message": "no stream",
                                                  "param": None}})

    page.route(is_stream, refuse)
    try:
        # The last job in line is still queued: pausing it is allowed, and so is the rest.
        page.goto(f"{dashboard.service.base_url}/ui#/jobs/{dashboard.spare_job_id}")
        status = page.locator("#job-status")
        expect(status).to_have_text("queued")
        for action, after in (("pause", "paused"), ("resume", "queued"),
                              ("cancel", "cancelled")):
            page.get_by_role("button", name=action, exact=True).click()
            expect(status).to_have_text(after)
        for action in ("pause", "resume", "cancel"):
            expect(page.get_by_role("button", name=action, exact=True)).to_be_disabled()
        # Recorded after the page opened, so only a poll of the list can have shown them.
        for message in ("Job paused before it started.", "Job resumed", "Job cancelled."):
            expect(page.locator(".events")).to_contain_text(message)
    finally:
        page.unroute(is_stream)
    assert refused
    page.get_by_role("link", name="Jobs", exact=True).click()


def test_the_job_page_follows_a_job_while_it_trains(dashboard: Dashboard) -> None:
    page = dashboard.page
    # Opened while the job is queued or running: its page must see it through to the end.
    page.locator(f'a[href="#/jobs/{dashboard.job_id}"]').click()
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=WAIT_MS)
    loss = page.locator('#loss-chart path[data-series="training loss"]')
    expect(loss).to_have_count(1)
    # The curve has a point per logged step (every step, in a run this short).
    assert loss.get_attribute("d").count("L") == STEPS - 1
    expect(page.locator('#score-chart path[data-series="macro_f1"]')).to_have_count(1)
    expect(page.locator(".events")).to_contain_text("Job succeeded")
    expect(page.locator(".events")).to_contain_text("Evaluation at step")
    expect(page.locator("#job-checkpoints tbody tr")).to_have_count(EPOCHS)
    expect(page.locator("#job-summary")).to_contain_text(f"ft:{NAME}:v1")
    dashboard.shot("job")


def test_the_confusion_matrix_counts_every_evaluation_row(dashboard: Dashboard) -> None:
    page = dashboard.page
    matrix = page.locator("#confusion-matrix svg")
    expect(matrix).to_be_visible()
    counts = [int(text) for text in matrix.locator("text.count").all_text_contents()]
    # Two labels; every held-out row counted once.
    assert len(counts) == 4 and sum(counts) == HELD_OUT


def test_the_jobs_list_shows_status_progress_and_model(dashboard: Dashboard) -> None:
    page = dashboard.page
    page.get_by_role("link", name="Jobs", exact=True).click()
    row = page.locator(f'tr[data-job="{dashboard.job_id}"]')
    expect(row).to_contain_text("succeeded")
    expect(row).to_contain_text(f"{STEPS}/{STEPS}")
    expect(row).to_contain_text(TINY_MODEL)
    assert row.locator("progress").get_attribute("value") == str(STEPS)
    dashboard.shot("jobs")


def test_moving_an_alias_in_the_registry(dashboard: Dashboard) -> None:
    service, page = dashboard.service, dashboard.page
    with service.client() as client:
        wait_for_job(service, client, dashboard.later_job_id, timeout_s=WAIT_MS / 1000)
        expect_status(client.put(f"/v1/registry/{NAME}/aliases/production",
                                 json={"version": f"ft:{NAME}:v1"}))
    page.goto(f"{service.base_url}/ui#/models/{NAME}")
    production = page.locator('#aliases tr[data-alias="production"]')
    expect(production).to_contain_text(f"ft:{NAME}:v1")
    form = page.locator("#alias-form")
    form.get_by_label("alias").fill("production")
    form.get_by_label("version").select_option(f"ft:{NAME}:v2")
    form.get_by_role("button", name="Move alias").click()
    expect(production).to_contain_text(f"ft:{NAME}:v2")
    with service.client() as client:
        assert expect_status(client.get(f"/v1/registry/{NAME}"))["aliases"] == {
            "production": f"ft:{NAME}:v2"}
    # Lineage: each version names its job and training file.
    expect(page.locator("details.version").first).to_contain_text(dashboard.later_job_id)
    expect(page.locator("details.version").first).to_contain_text("reviews.jsonl")


def test_the_try_it_box_shows_labels_with_scores(dashboard: Dashboard) -> None:
    page = dashboard.page
    box = page.locator("#try-it")
    box.get_by_label("model").select_option(f"{NAME}@production")
    box.locator("textarea").fill("the film was great and fun")
    box.get_by_role("button", name="Predict").click()
    labels = box.locator("#prediction td.label")
    expect(labels).to_have_count(2)
    assert sorted(labels.all_inner_texts()) == ["negative", "positive"]
    dashboard.shot("registry")


def test_entity_versions_show_f1_per_type_and_highlighted_spans(dashboard: Dashboard) -> None:
    service, page = dashboard.service, dashboard.page
    with service.client() as client:
        wait_for_job(service, client, dashboard.ner_job_id, timeout_s=WAIT_MS / 1000)
    page.goto(f"{service.base_url}/ui#/models/{NER_NAME}")
    bars = page.locator("#entity-f1 svg")
    expect(bars).to_contain_text("ITEM")
    expect(bars).to_contain_text("MOOD")
    box = page.locator("#try-it")
    box.locator("textarea").fill("the plot was dull")
    box.get_by_role("button", name="Predict").click()
    # Whatever the tiny model tags, the text comes back whole, spans marked in place.
    expect(box.locator("#prediction p.entities")).to_be_visible()
    assert "".join(box.locator("#prediction p.entities").all_inner_texts()).replace(
        "ITEM", "").replace("MOOD", "") == "the plot was dull"
    dashboard.shot("entities")


def test_the_key_stays_in_the_tab_and_out_of_urls(dashboard: Dashboard) -> None:
    page, key = dashboard.page, dashboard.service.api_key
    assert key not in page.url
    assert not any(key in url for url in dashboard.urls)
    assert page.context.cookies() == []
    assert page.evaluate("sessionStorage.getItem('tuneforge.key')") == key
    # Every API call carried a key in the header: the refused one first, then this one.
    assert set(dashboard.authorizations) == {"Bearer tf-not-a-key", f"Bearer {key}"}
    assert dashboard.authorizations[-1] == f"Bearer {key}"
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API key")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('tuneforge.key')") is None


def test_the_dashboard_is_served_outside_the_api_spec(dashboard: Dashboard) -> None:
    base = dashboard.service.base_url
    page = httpx.get(f"{base}/ui")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(f"{base}/ui/static/dashboard.js").status_code == 200
    missing = httpx.get(f"{base}/ui/static/nothing.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    spec = httpx.get(f"{base}/openapi.json").json()
    assert not any(path.startswith("/ui") for path in spec["paths"])

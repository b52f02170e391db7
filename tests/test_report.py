"""The HTML report: self-contained (no network source), its parts (runs data, paper table
with the best bold, plots, a search study's lineage tree), at most 5 MB for 1,000 runs, and
driven in a real headless Chromium: it renders, a screenshot is taken, a filter narrows the
rows, a click sorts them, and no network request is made."""

from __future__ import annotations

import io
import json
import random
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from expman.cli import main
from expman.results.report import ReportOptions, build_report

from .conftest import require
from .results_helpers import make_run, scalars, write_events
from .webdriver import CHROMEDRIVER, CHROMIUM, chromium

NETWORKS = ["cnn", "mlp"]
LRS = [0.001, 0.01, 0.1]
SEEDS = [1, 2, 3]
MAX_REPORT_BYTES = 5 * 1024 * 1024


def set_search(run: Path, **search: object) -> None:
    record = json.loads((run / "run.json").read_text())
    record["search"] = search
    (run / "run.json").write_text(json.dumps(record))


def pbt_study(root: Path, study: str, members: int, generations: int, rng: random.Random) -> list[Path]:
    """A population-based training study: generation g of member m starts from generation g-1
    of some member, as the record's search.parent says."""
    made: list[Path] = []
    previous: list[str] = []
    trial = 0
    for generation in range(generations):
        current = []
        for member in range(members):
            config = {"model": {"network": "pbt"}, "train": {"lr": rng.choice(LRS), "seed": member}}
            run = make_run(root, config, {"accuracy": rng.random(), "loss": rng.random()})
            parent = rng.choice(previous) if previous else None
            set_search(run, study=study, trial=trial, member=member, generation=generation, parent=parent)
            current.append(run.name)
            made.append(run)
            trial += 1
        previous = current
    return made


@pytest.fixture
def report_runs(runs_root):
    """2 networks x 3 learning rates x 3 seeds, a failed run and a 2x2 PBT study: 23 runs."""
    rng = random.Random(15)
    accuracy: dict[tuple[str, float], list[float]] = {}
    for network in NETWORKS:
        for lr in LRS:
            for seed in SEEDS:
                value = rng.random() + (1 if network == "mlp" and lr == 0.01 else 0)
                config = {"model": {"network": network}, "train": {"lr": lr, "seed": seed}}
                run = make_run(runs_root, config, {"accuracy": value, "loss": rng.random()})
                write_events(run / "output" / "tb", scalars("loss", range(0, 30, 10), lambda s, v=value: v - s / 100))
                accuracy.setdefault((network, lr), []).append(value)
    make_run(runs_root, {"model": {"network": "cnn"}, "train": {"lr": 0.5, "seed": 1}}, status="failed")
    study = pbt_study(runs_root, "pbt-study", members=2, generations=2, rng=rng)
    return {"accuracy": accuracy, "study": [run.name for run in study], "count": 23}


class Sources(HTMLParser):
    """Every src and href of script, link and img elements."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "link", "img", "iframe", "source", "video", "audio", "object", "embed"):
            self.urls += [value or "" for name, value in attrs if name in ("src", "href", "data")]


def assert_no_network_source(text: str) -> None:
    sources = Sources()
    sources.feed(text)
    assert all(url.startswith("data:") for url in sources.urls), [u[:40] for u in sources.urls if "data:" not in u]
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.I)
    assert not re.search(r"@import|url\(\s*['\"]?(?:https?:)?//", text, re.I)
    assert "default-src 'none'" in text


def runs_data(text: str) -> dict:
    blob = re.search(r'<script type="application/json" id="runs-data">(.*?)</script>', text, re.S)
    assert blob
    return json.loads(blob.group(1))


def test_report_is_self_contained_with_runs_tables_plots_and_lineage(runs_root, report_runs, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", "-o", str(out)]) == 0
    text = out.read_text()
    assert_no_network_source(text)
    data = runs_data(text)
    assert len(data["rows"]) == report_runs["count"]
    assert {"run_id", "status", "config.train.lr", "config.train.seed", "results.accuracy"} <= set(data["columns"])
    # paper table: the best mean of accuracy (mlp, lr 0.01, shifted by 1) is bold
    best = max(report_runs["accuracy"].values(), key=lambda v: sum(v) / len(v))
    mean = sum(best) / len(best)
    bold = re.findall(r"<td><b>([-0-9.]+) ± ", text)
    assert bold and any(abs(float(b) - mean) < 0.01 for b in bold)
    assert text.count('src="data:image/svg+xml;base64,') >= 2  # accuracy over lr, the loss curve
    # lineage: each second-generation run is nested under the first-generation run it started from
    first, second = report_runs["study"][:2], report_runs["study"][2:]
    for child in second:
        parent = json.loads((runs_root / child / "run.json").read_text())["search"]["parent"]
        assert parent in first
        block = text[text.index(f"<code>{parent}</code>") :]
        assert f"<code>{child}</code>" in block[: block.index("</ul>")]


def test_same_runs_give_the_same_report(runs_root, report_runs):
    options = ReportOptions(epoch=1_000_000_000)
    assert build_report(runs_root, options) == build_report(runs_root, options)


def test_a_thousand_runs_make_at_most_5_mb(runs_root):
    rng = random.Random(1000)
    results_keys = [f"metric_{i:02d}" for i in range(20)]
    for i in range(900):
        config = {
            "model": {"network": NETWORKS[i % 2], "width": [64, 128, 256][i // 2 % 3]},
            "train": {"lr": LRS[i // 6 % 3], "env": f"env{i // 18 % 5}", "seed": i // 90},
        }
        run = make_run(runs_root, config, {key: rng.gauss(0, 1) for key in results_keys})
        if i % 9 == 0:
            write_events(run / "output" / "tb", scalars("loss", range(0, 50, 10), lambda s: rng.random()))
    pbt_study(runs_root, "big-pbt", members=10, generations=10, rng=rng)
    text = build_report(runs_root, ReportOptions())
    assert len(runs_data(text)["rows"]) == 1000
    assert len(text.encode()) <= MAX_REPORT_BYTES
    assert_no_network_source(text)


def test_report_in_headless_chromium(runs_root, report_runs, tmp_path):
    require(CHROMIUM.exists() and CHROMEDRIVER.exists(), "chromium and chromium-driver (Debian)")
    from PIL import Image

    out = tmp_path / "report.html"
    assert main(["report", "-o", str(out), "--title", "Grid report"]) == 0
    with chromium() as browser:
        browser.open(out.as_uri())
        assert browser.title() == "Grid report"
        assert browser.run("return document.querySelectorAll('#runs-table tbody tr').length") == report_runs["count"]
        assert browser.run("return document.querySelectorAll('table').length") >= 2  # the runs and a paper table
        assert browser.run("return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        shot = browser.screenshot()
        (tmp_path / "report.png").write_bytes(shot)
        image = Image.open(io.BytesIO(shot)).convert("RGB")
        assert image.size[0] > 200 and image.size[1] > 200
        assert len(image.getcolors(maxcolors=1 << 20) or []) > 16  # text and tables, not a blank page

        browser.type(browser.find("#filter"), "mlp")
        expected = len(LRS) * len(SEEDS)
        assert browser.run("return document.querySelectorAll('#runs-table tbody tr').length") == expected
        assert browser.run("return document.getElementById('count').textContent").startswith(f"{expected} of 23")

        columns = browser.run("return JSON.parse(document.getElementById('runs-data').textContent).columns")
        k = columns.index("results.accuracy")
        browser.click(browser.find(f"#runs-table thead th:nth-child({k + 1})"))
        rows = "document.querySelectorAll('#runs-table tbody tr')"
        script = f"return Array.from({rows}, r => r.cells[arguments[0]].textContent)"
        cells = [float(text) for text in browser.run(script, k)]
        assert cells == sorted(cells) and len(cells) == expected

        resources = browser.run("return performance.getEntriesByType('resource').map(e => e.name)")
        assert all(name.startswith(("data:", "file:")) for name in resources), resources


def test_a_runs_root_without_succeeded_runs_still_has_a_report(runs_root, tmp_path):
    failed = make_run(runs_root, {"train": {"lr": 0.1}}, {"accuracy": 0.5}, status="failed")
    write_events(failed / "output" / "tb", scalars("loss", range(3)))
    text = build_report(runs_root, ReportOptions())
    assert len(runs_data(text)["rows"]) == 1
    assert "No succeeded run to plot." in text

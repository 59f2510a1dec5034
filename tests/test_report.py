"""`ttc report`: a real run (`ttc evaluate` on the testbed, two strategies at budgets 1 and 4) becomes one
self-contained HTML file, driven in headless Chromium: no console errors, the plots and a searched
prompt's tree are there, and the numbers shown are those the database holds. Bad input is one line,
exit status 2, and nothing written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

from db import Recorder, connect, dispose, queries
from flows.cli import app

TTC_SCRIPT = str(Path(sys.executable).parent / "ttc")
DATASET = "testbed:arith?n=6&seed=3"
RUNS = [f"{strategy}-{budget}" for strategy in ("majority", "best_of_n_weighted") for budget in (1, 4)]


def ttc(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Four real runs in a SQLite file: majority and best-of-N weighted at N = 1 and 4, made by
    `ttc evaluate` (the installed script) against one Prefect server."""
    folder = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{folder / 'ttc.db'}"
    connect(url)  # migrated once, before the processes open it
    with (
        temporary_settings({PREFECT_SERVER_ANALYTICS_ENABLED: False}),
        prefect_test_harness(server_startup_timeout=120),
    ):
        environment = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "OMP_NUM_THREADS": "1"}
        for name in RUNS:
            strategy, _, budget = name.rpartition("-")
            command = [TTC_SCRIPT, "evaluate", "--dataset", DATASET, "--strategy", strategy, "--budget", budget]
            done = subprocess.run(
                [*command, "--run-name", name, "--db", url, "--concurrency", "2", "--json"],
                env=environment,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert done.returncode == 0, done.stderr[-3000:]
    yield url
    dispose(url)


@pytest.fixture(scope="module")
def report(database: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out")
    result = ttc("report", *RUNS, "--out", str(out), "--db", database)
    assert result.exit_code == 0, result.output
    return out / "report.html"


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("headless Chromium is missing: `make browser` installs Debian's chromium package")
    return found


def browse(page: Path, fragment: str = "", *extra: str) -> subprocess.CompletedProcess[str]:
    """Load the page in headless Chromium and dump the DOM its scripts left; console lines on stderr."""
    command = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    return subprocess.run(
        [*command, *extra, "--dump-dom", f"{page.as_uri()}{fragment}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


class Elements(HTMLParser):
    """Every start tag's attributes, by tag, and the text inside each element with an id."""

    VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[str, list[dict[str, str]]] = {}
        self.stack: list[tuple[str, str | None]] = []
        self.text: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.setdefault(tag, []).append(values)
        if tag not in self.VOID:
            self.stack.append((tag, values.get("id")))
            if values.get("id"):
                self.text.setdefault(values["id"], "")

    def handle_endtag(self, tag: str) -> None:
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        for _, element in self.stack:
            if element:
                self.text[element] += data


def parsed(html: str) -> Elements:
    elements = Elements()
    elements.feed(html)
    return elements


def table_rows(html: str, table_id: str) -> list[list[str]]:
    """The text of each body cell of the table with this id, row by row."""
    table = re.search(rf'<table id="{table_id}">(.*?)</table>', html, flags=re.DOTALL)
    assert table is not None, table_id
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table[1], flags=re.DOTALL)
    cells = [
        [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.DOTALL)] for r in rows
    ]
    return [row for row in cells if row]


def test_the_report_is_one_file_that_needs_no_network(report: Path) -> None:
    html = report.read_text(encoding="utf-8")

    assert not re.search(r"<script[^>]+src=|<link\b|<img[^>]+src=\"?https?:|@import|url\(\s*['\"]?https?:", html)
    assert not re.search(r"(?:src|href)=\"(?:https?:)?//", html)
    assert html.count("<svg") >= 2  # accuracy against budget, and by difficulty


def test_in_chromium_the_page_runs_without_errors_and_shows_the_plots(report: Path) -> None:
    shown = browse(report)
    page = parsed(shown.stdout)

    assert [line for line in shown.stderr.splitlines() if ":CONSOLE" in line] == []
    (errors,) = [e for e in page.tags["pre"] if e.get("id") == "js-errors"]
    assert errors["data-count"] == "0", page.text.get("js-errors")
    assert page.tags["body"][0].get("data-ready") == "yes"
    figures = {f["id"] for f in page.tags["figure"]}
    assert {"fig-accuracy", "fig-difficulty"} <= figures
    for label in ("generation budget N", "accuracy (fraction of prompts correct)", "majority", "best_of_n_weighted"):
        assert label in page.text["fig-accuracy"], label


def test_the_accuracy_and_spend_shown_are_those_in_the_database(report: Path, database: str) -> None:
    page = parsed(browse(report).stdout)
    shown = {
        (s["data-series"], int(s["data-budget"]), s["data-group"]): s for s in page.tags["span"] if "data-series" in s
    }
    with connect(database)() as session:
        for name in RUNS:
            run = queries.find_run(session, name)
            assert run is not None
            rows = queries.accuracy_by(session, run.id)
            (strategy,) = {r.strategy for r in rows}
            (budget,) = {r.budget for r in rows}
            graded, correct = sum(r.graded for r in rows), sum(r.correct for r in rows)
            cell = shown[(strategy, budget, "all")]
            assert (int(cell["data-graded"]), int(cell["data-correct"])) == (graded, correct) == (6, correct)
            assert float(cell["data-accuracy"]) == pytest.approx(correct / graded, abs=1e-6)
            traces = queries.trace_of(session, run.id)
            by_difficulty: dict[str, list[int]] = {}
            for t in traces:  # the testbed's difficulty knob groups the prompts
                tally = by_difficulty.setdefault(str(t.problem.meta["difficulty"]), [0, 0])
                tally[0] += bool(t.correct)
                tally[1] += 1
            for difficulty, (right, total) in by_difficulty.items():
                cell = shown[(strategy, budget, difficulty)]
                assert (int(cell["data-correct"]), int(cell["data-graded"])) == (right, total)
            (spend,) = [s for s in page.tags["tr"] if s.get("data-run") == name]
            assert float(spend["data-generations"]) == sum(t.generations for t in traces)
            assert int(spend["data-tokens"]) == sum(t.tokens for t in traces)
            assert float(spend["data-flops"]) == pytest.approx(sum(t.flops for t in traces), rel=1e-5)
            assert float(spend["data-seconds"]) == pytest.approx(sum(t.seconds for t in traces), abs=1e-3)
            assert int(spend["data-failed"]) == 0


def test_a_searched_prompt_shows_its_tree_and_why_its_answer_won(report: Path, database: str) -> None:
    with connect(database)() as session:
        run = queries.find_run(session, "best_of_n_weighted-4")
        assert run is not None
        (trace,) = queries.trace_of(session, run.id)[:1]
        solves = [t for name in RUNS for t in queries.trace_of(session, queries.find_run(session, name).id)]  # type: ignore[union-attr]
    key = trace.problem.key
    mine = [t for t in solves if t.problem.key == key]

    page = parsed(browse(report, f"#prompt={quote(key)}").stdout)

    (pane,) = [d for d in page.tags["div"] if d.get("id") == "prompt"]
    assert pane.get("data-prompt") == f"{DATASET}/{key}"
    assert trace.problem.question in page.text["prompt"]
    assert len([li for li in page.tags["li"] if "data-key" in li]) == sum(len(t.candidates) for t in mine)
    assert len([d for d in page.tags["div"] if "data-run" in d]) == len(RUNS)
    totals = [(row["data-answer"], float(row["data-total"])) for row in page.tags["tr"] if "data-answer" in row]
    expected = [
        (answer, total)
        for t in mine
        for answer, total in sorted(t.detail["votes"].items(), key=lambda item: -item[1])  # highest first
    ]
    assert [answer for answer, _ in totals] == [answer for answer, _ in expected]
    assert [total for _, total in totals] == pytest.approx([total for _, total in expected])
    weighted = next(t for t in mine if t.strategy == "best_of_n_weighted" and t.budget == 4)
    why = f"why it won (weighted, totals are summed scores): {weighted.answer} has the highest total"
    assert why in page.text["prompt"]


def test_the_search_box_filters_the_prompts(report: Path) -> None:
    searched = parsed(browse(report, "#search=s3-4").stdout)
    missing = parsed(browse(report, "#prompt=arith-s3-nothing-like-this").stdout)

    assert searched.text["matches"] == "1 of 6 prompts match: arith-s3-4"
    assert [a["href"] for a in searched.tags["a"] if a["href"].startswith("#prompt=")] == [
        f"#prompt={quote(DATASET + '/arith-s3-4', safe='')}"
    ]
    assert "no prompt arith-s3-nothing-like-this in this report" in missing.text["prompt"]
    assert missing.text["matches"].startswith("0 of 6 prompts match")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["no-such-run"], "no run with id or name 'no-such-run'"),
        (["{empty}"], "names no runs"),
        (["ungraded"], "has no graded solves"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    database_url: str, tmp_path: Path, arguments: list[str], message: str
) -> None:
    recorder = Recorder(connect(database_url))
    run_id = recorder.open_run("ungraded", {"strategy": "majority"})
    solve = recorder.start_solve(run_id, recorder.problem("toy", "k", "q", None, {}), "majority", {}, 1)
    recorder.finish_solve(solve, answer="1", correct=None, generations=1, tokens=1, flops=1.0, seconds=0.1, detail={})
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.json").write_text(json.dumps({"no": "runs"}))
    out = tmp_path / "out"

    given = [a.format(empty=tmp_path / "empty") for a in arguments]
    result = ttc("report", *given, "--out", str(out), "--db", database_url)

    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_a_folder_of_run_summaries_names_its_runs(database: str, tmp_path: Path) -> None:
    with connect(database)() as session:
        ids = [queries.find_run(session, name).id for name in RUNS[:2]]  # type: ignore[union-attr]
    (tmp_path / "summaries").mkdir()
    for run_id in ids:
        (tmp_path / "summaries" / f"{run_id}.json").write_text(json.dumps({"run_id": run_id, "accuracy": 0.5}))

    result = ttc("report", str(tmp_path / "summaries"), "--out", str(tmp_path / "out"), "--db", database)

    assert result.exit_code == 0, result.output
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert all(run_id in html for run_id in ids) and "best_of_n_weighted-1" not in html


def record(
    recorder: Recorder, name: str, config: dict[str, Any], solves: list[tuple[str, int, dict[str, Any], bool]]
) -> None:
    """A finished run whose solves are (strategy, budget, settings, correct), one per problem p0, p1, …"""
    run_id = recorder.open_run(name, config)
    for index, (strategy, budget, settings, correct) in enumerate(solves):
        problem = recorder.problem("toy", f"p{index}", f"question {index}", "1", {"level": 1 + index % 2})
        solve = recorder.start_solve(run_id, problem, strategy, settings, budget)
        recorder.finish_solve(
            solve,
            answer="1" if correct else "2",
            correct=correct,
            generations=budget,
            tokens=10 * budget,
            flops=2.0 * budget,
            seconds=0.5,
            detail={"votes": {"1" if correct else "2": 1.0}},
        )
    recorder.close_run(run_id)


def test_policy_and_revision_runs_get_the_efficiency_and_ratio_sections(database_url: str, tmp_path: Path) -> None:
    recorder = Recorder(connect(database_url))
    weighted = {"flow": "evaluate", "strategy": "best_of_n_weighted"}
    verdicts = {1: [True, False, False, False], 4: [True, True, False, False], 16: [True, True, True, False]}
    for budget, outcomes in verdicts.items():
        record(recorder, f"bon-{budget}", weighted, [("best_of_n_weighted", budget, {}, c) for c in outcomes])
    for budget, outcomes in {1: [True, True, False, False], 4: [True, True, True, False]}.items():
        policy = {"flow": "evaluate", "policy": "policy.json", "budget": budget}
        record(recorder, f"co-{budget}", policy, [("beam", budget, {}, c) for c in outcomes])
    for chains, outcomes in {1: [True, True, True, True], 4: [True, False, False, False]}.items():
        settings = {"chains": chains, "chain_length": 4 // chains}
        revisions = {"flow": "evaluate", "strategy": "revisions", "settings": {"chains": chains}}
        record(recorder, f"rev-{chains}", revisions, [("revisions", 4, settings, c) for c in outcomes])
    names = ["bon-1", "bon-4", "bon-16", "co-1", "co-4", "rev-1", "rev-4"]

    result = ttc("report", *names, "--out", str(tmp_path), "--db", database_url)

    assert result.exit_code == 0, result.output
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    page = parsed(html)
    # Compute-optimal at N = 1 (0.5) reaches best-of-N at 4 (0.5): 4×; at 4 (0.75) best-of-N at 16: 4×.
    assert table_rows(html, "efficiency-table") == [
        ["compute-optimal (policy)", "1", "0.250", "1", "1×"],
        ["compute-optimal (policy)", "4", "0.500", "1", "4×"],
        ["compute-optimal (policy)", "16", "0.750", "4", "4×"],
    ]
    sweep = {(s["data-group"]): s for s in page.tags["span"] if s.get("data-series") == "revisions"}
    assert float(sweep["4|all"]["data-accuracy"]) == 1.0  # chain length 4 ÷ 1 chain: fully sequential
    assert float(sweep["0.25|all"]["data-accuracy"]) == 0.25
    assert {"fig-accuracy", "fig-difficulty", "fig-revisions"} <= {f["id"] for f in page.tags["figure"]}
    levels = {s["data-group"] for s in page.tags["span"] if s.get("data-series") == "compute-optimal (policy)"}
    assert levels == {"1", "2", "all"}  # MATH-style levels group the prompts

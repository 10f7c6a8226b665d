"""Every measured number from the command that measured it: the docs' marked tables are what
their results files render, a measured figure in prose names where it came from, and a sweep's
report records its provenance."""

import json
import re

import pytest

from src.experiments import results
from src.experiments.report import report
from src.experiments.results import BLOCK, pages, read_results, render_page, write_results
from src.utils.provenance import provenance
from tests.conftest import ROOT
from tests.test_report import accuracy, write_job

# A measured figure: a number with a unit of time, throughput or memory, a difference in points
# of accuracy, or an accuracy named as one (val/acc 0.83).
MEASURED_FIGURE = [
    r"\b\d+(?:\.\d+)? ?(?:ms|s|min|h)\b(?![-/])",  # 7 min 18 s, 2.4 s
    r"\b[\d,]+(?:\.\d+)? ?(?:images/s|img/s|it/s|steps/s)",  # 1,369 images/s
    r"\b[\d,]+(?:\.\d+)? ?(?:KB|MB|GB|KiB|MiB|GiB)\b",  # 1,180 MB
    r"\b\d+(?:\.\d+)? points\b",  # 7.3 points
    r"acc\S*`?,? (?:of |at |to |was |is |=|: )?\*{0,2}0\.\d{2,4}",  # `val/acc` 0.829
]
# what backs it, in its paragraph: a results file (docs/results/, a bench/ table the command
# wrote), the commit it was measured on, or, for the caption right above it, a marked table
BACKED = re.compile(r"results/|bench/\w+\.md|measured at commit [0-9a-f]{7}", re.I)
# a number with a unit that is a size or a limit, not a measurement, says so
NOT_MEASURED = "<!-- not measured -->"


def prose_paragraphs(text: str) -> list[str]:
    """The page's paragraphs outside code blocks; each marked table becomes one placeholder."""
    text = re.sub(r"```.*?```", "", BLOCK.sub("<!-- results -->", text), flags=re.S)
    return [p for p in re.split(r"\n\s*\n", text) if p.strip()]


def unbacked_figures(text: str) -> list[str]:
    found = []
    paragraphs = prose_paragraphs(text)
    for k, paragraph in enumerate(paragraphs):
        figures = [m.group() for p in MEASURED_FIGURE for m in re.finditer(p, paragraph)]
        caption = k + 1 < len(paragraphs) and paragraphs[k + 1].startswith("<!-- results")
        if (
            figures
            and not caption
            and NOT_MEASURED not in paragraph
            and not BACKED.search(paragraph)
        ):
            found.append(f"{figures} in: {paragraph[:120]!r}")
    return found


DOC_PAGES = [p for p in pages() if p.parent.name != "bench"]


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_marked_table_is_what_its_results_file_renders(page):
    assert page.read_text() == render_page(page), (
        f"{page.relative_to(ROOT)} differs from its results files: run make docs"
    )


def test_every_results_file_is_shown_and_records_its_measurement():
    shown = {m["name"] for page in pages() for m in BLOCK.finditer(page.read_text())}
    files = {p.stem for p in results.RESULTS_DIR.glob("*.json")}
    assert files == shown, "a results file no page shows, or a marker without its file"
    for name in files:
        where = read_results(name)["provenance"]
        assert where["command"] and re.fullmatch(r"[0-9a-f]{7}", where["commit"]), name
        assert re.match(r"\d{4}-\d\d-\d\d", where["date"]) and where["machine"]["cpu"], name


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_measured_figure_in_prose_names_where_it_came_from(page):
    assert not unbacked_figures(page.read_text())


def test_the_figure_check_finds_a_figure_and_accepts_its_backing():
    assert unbacked_figures("It took 7 min 18 s on a fresh clone.")
    assert unbacked_figures("Best `val/acc` 0.829 after 20 epochs.")
    assert not unbacked_figures("It took 7 min 18 s ([default_run](results/default_run.json)).")
    assert not unbacked_figures("A 252 GB download. <!-- not measured -->")
    assert not unbacked_figures("`experiment=ablate_lrn` (7 min 18 s):\n\n<!-- results: x -->")
    assert not unbacked_figures("Learning rate 0.01, 20 epochs, batch 32.")


def test_a_written_file_renders_into_its_page_and_a_change_is_caught(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path / "results")
    where = provenance("python -m src.train seed=1", {"files_sha256": "0" * 64})
    write_results(
        "demo", "| a | b |\n|---|---|\n| 1 | 2 |\n", where, directory=tmp_path / "results"
    )
    record = json.loads((tmp_path / "results" / "demo.json").read_text())
    assert record["provenance"]["versions"]["torch"] and record["provenance"]["constraints_sha256"]
    page = tmp_path / "page.md"
    page.write_text("Before.\n\n<!-- results: demo -->\nold\n<!-- end results -->\n\nAfter.\n")
    rendered = render_page(page, tmp_path / "results")
    assert "| 1 | 2 |" in rendered and "old" not in rendered
    assert f"commit {where['commit']}" in rendered and "(results/demo.json)" in rendered
    assert rendered.startswith("Before.") and rendered.endswith("After.\n")
    page.write_text(rendered.replace("| 1 | 2 |", "| 1 | 3 |"))
    assert render_page(page, tmp_path / "results") == rendered  # the file, not the page, wins
    page.write_text("<!-- results: missing -->\n<!-- end results -->\n")
    with pytest.raises(FileNotFoundError, match="missing.json.*remove the marker"):
        render_page(page, tmp_path / "results")


def test_a_sweeps_report_records_its_provenance_and_publishes(tmp_path, monkeypatch):
    """A finished sweep folder tabled, then published: the file keeps the sweep's own
    provenance, with its data's fingerprint."""
    sweep, data = tmp_path / "sweep", tmp_path / "data"
    (data / "train" / "a").mkdir(parents=True)
    (data / "train" / "a" / "1.png").write_bytes(b"x")
    config = {"data": {"_target_": "src.data.folders.ImageFolderDataModule", "root": str(data)}}
    for num, (lrn, seed) in enumerate([("true", 0), ("false", 0), ("true", 1), ("false", 1)]):
        overrides = [f"model.net.lrn={lrn}", f"seed={seed}"]
        write_job(sweep, num, overrides, accuracy(0.5 + 0.1 * num), config=config)
    where = provenance("python -m src.train -m model.net.lrn=true,false seed=0,1")
    summary = report(sweep, where=where)
    assert summary["provenance"]["command"] == where["command"]
    fingerprint = summary["provenance"]["data"]
    assert fingerprint["root"] == str(data) and len(fingerprint["files_sha256"]) == 64
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path / "results")
    path = results.publish(sweep, "demo")
    record = json.loads(path.read_text())
    assert (
        record["provenance"] == summary["provenance"]
        and "| model.net.lrn=false |" in (record["table"])
    )
    (sweep / "results.json").write_text(json.dumps({"title": "old"}))
    with pytest.raises(ValueError, match="no provenance"):
        results.publish(sweep, "demo")


def test_make_docs_renders_every_page():
    assert "python -m src.experiments.results" in (ROOT / "Makefile").read_text()
    assert results.main(["--check"]) == 0


def test_reproduce_skips_what_was_measured_on_this_code_and_refuses_unknown_claims(
    tmp_path, monkeypatch
):
    from src.experiments import reproduce
    from src.utils.provenance import git

    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(reproduce, "RESULTS_DIR", tmp_path)
    assert not reproduce.measured_on_this_code("default_run")  # no file yet
    head = git("rev-parse", "--short=7", "HEAD")
    for commit, current in ((head, True), ("0eec2b1", False)):  # 0eec2b1: older src/
        where = provenance("python -m src.train") | {"commit": commit}
        write_results("default_run", "| a |\n|---|\n| 1 |", where, directory=tmp_path)
        assert reproduce.measured_on_this_code("default_run") == current
    with pytest.raises(SystemExit, match="ablate_nothing: not a claim"):
        reproduce.main(["--only", "ablate_nothing"])

"""The report: claims table, metadata, flags, stable numeric results.json, console summary."""

from __future__ import annotations

import json
import math

import pytest

from sparseprior.common.results import SECTIONS, Claim, Section, register_section
from sparseprior.report.reproduce import reproduce


@pytest.fixture
def toy_sections():
    @register_section("toy_a", order=1, summary="first toy", replace=True)
    def toy_a(run, mode, device):
        run.write_text("a.txt", mode)
        return Section("Toy A (quick)", rows=[{"model": "x", "nmse_db": -40.0}],
                       data={"nmse_db": [-10.0, math.nan]},
                       claims=[Claim("toy.fast", "x converges fast", ">= 10x", 12.5, "x",
                                     passed=True, seed_figure="37x"),
                               Claim("toy.small", "x is small", ">= 5x", None, "x",
                                     passed=False, note="not reached")])

    @register_section("toy_b", order=2, summary="second toy", replace=True)
    def toy_b(run, mode, device):
        import logging

        logging.getLogger("sparseprior.toy").warning("dataset missing; fell back to digits")
        logging.getLogger("sparseprior.toy").info("epoch 1 {'loss': 1.0}")
        return Section("Toy B", flags=["solver got worse after layer 8"])

    yield
    SECTIONS.unregister("toy_a")
    SECTIONS.unregister("toy_b")


def test_report_opens_with_claims_meta_and_flags(tmp_path, toy_sections, capsys):
    path = reproduce(tmp_path / "r", only=["toy_a", "toy_b"])
    md = (tmp_path / "r" / "report.md").read_text()
    assert md.index("## Run") < md.index("## Claims") < md.index("## Flags") < md.index(
        "## Toy A")
    assert "docs/results.md" in md and "Quick mode" in md
    assert "| x converges fast | 37x | >= 10x | 12.5 x | met |" in md
    assert "not reached" in md and "NOT met" in md
    assert "fell back to digits" in md and "solver got worse" in md
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert set(results["sections"]) == {"toy_a", "toy_b"}          # stable keys, not titles
    assert results["sections"]["toy_a"]["data"]["nmse_db"] == [-10.0, None]
    claims = {c["key"]: c for c in results["claims"]}
    assert claims["toy.fast"]["measured"] == 12.5 and claims["toy.small"]["measured"] is None
    assert claims["toy.small"]["verdict"] == "NOT met" and claims["toy.fast"]["section"] == "toy_a"
    for field in ("sparseprior", "torch", "cpu", "torch_threads", "date_utc", "total_seconds"):
        assert field in results["meta"]
    captured = capsys.readouterr()
    out = captured.out
    assert "== [1/2] toy_a: first toy ==" in out and "== summary ==" in out
    assert "1 met, 1 not met" in out and f"report: {path}" in out
    assert "epoch 1 {" not in out + captured.err  # library INFO chatter is silenced
    assert path.name == "report.html" and "Toy B" in path.read_text()


def test_unknown_section_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="section"):
        reproduce(tmp_path / "r", only=["nope"])


def test_a_report_folder_of_another_mode_is_refused(tmp_path, toy_sections):
    reproduce(tmp_path / "r", only=["toy_a"])
    reproduce(tmp_path / "r", only=["toy_b"])          # other sections: same report folder
    with pytest.raises(ValueError, match="mode"):
        reproduce(tmp_path / "r", mode="full", only=["toy_a"])

"""The scale benchmarks' pieces: the Zipf corpus, growth exponents and plots, the measured jobs, `--scale`."""

from __future__ import annotations

import doctest
import json
import textwrap
from pathlib import Path

import pytest

import bench.__main__ as bench_main
import bench.growth as growth
from bench.growth import fit_exponent, plot_growth
from bench.zipf_corpus import EOT, make_lexicon, write_zipf_corpora, write_zipf_corpus


def test_doctests() -> None:
    assert doctest.testmod(growth).failed == 0


def test_fit_exponent_needs_two_sizes() -> None:
    assert fit_exponent([3.0, 3.0], [1.0, 2.0]) is None
    assert fit_exponent([1.0, 10.0, 100.0], [5.0, 5.0, 5.0]) == pytest.approx(0.0)


def test_zipf_corpus_is_deterministic_sized_and_separated(tmp_path: Path) -> None:
    a = write_zipf_corpus(tmp_path / "a.txt", 200_000, seed=3).read_bytes()
    b = write_zipf_corpus(tmp_path / "b.txt", 200_000, seed=3).read_bytes()
    c = write_zipf_corpus(tmp_path / "c.txt", 200_000, seed=4).read_bytes()
    assert a == b and a != c
    assert 200_000 <= len(a) < 400_000  # whole documents: a little more than asked
    text = a.decode("ascii")
    docs = [d for d in text.split(f"\n{EOT}\n") if d]
    assert len(docs) >= 50 and all(d[0].isupper() and d.endswith(".") for d in docs)


def test_zipf_corpora_in_one_pass_equal_separate_writes(tmp_path: Path) -> None:
    sizes = {tmp_path / "big.txt": 300_000, tmp_path / "small.txt": 70_000, tmp_path / "mid.txt": 150_000}
    assert write_zipf_corpora(sizes, seed=2) == list(sizes)
    for path, num_bytes in sizes.items():
        alone = write_zipf_corpus(tmp_path / f"alone_{num_bytes}.txt", num_bytes, seed=2).read_bytes()
        assert path.read_bytes() == alone
    assert len((tmp_path / "small.txt").read_bytes()) < len((tmp_path / "big.txt").read_bytes())
    with pytest.raises(ValueError, match="positive"):
        write_zipf_corpora({tmp_path / "x.txt": 0})


def test_zipf_corpus_heaps_law_distinct_words_grow_sublinearly(tmp_path: Path) -> None:
    words = write_zipf_corpus(tmp_path / "z.txt", 400_000).read_text().replace(EOT, " ").lower().split()
    half = len(set(words[: len(words) // 2]))
    full = len(set(words))
    assert half < full < 2 * half  # more distinct words with more text, but fewer than twice as many


def test_lexicon_words_are_distinct() -> None:
    lexicon = make_lexicon(2_000, seed=1)
    assert len(set(lexicon.tolist())) == 2_000


def test_plot_growth_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = plot_growth(tmp_path / "g.png", "t", "size", [("s", {"ours": ([1, 2, 4], [1, 2, 4])})])
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_scale_jobs_agree_on_a_small_corpus(tmp_path: Path) -> None:
    """ours and tiktoken produce the same number of tokens; memory and times are measured."""
    pytest.importorskip("psutil")
    pytest.importorskip("tiktoken")
    from bench.bench_scale import measure

    corpus = write_zipf_corpus(tmp_path / "z.txt", 100_000)
    tok = tmp_path / "tok.pkl"
    bpe = measure(["bpe-ours", str(corpus), "400", str(tok)])
    assert bpe["vocab"] == 400 and bpe["peak_rss"] > 0 and bpe["wall_s"] >= bpe["seconds"] > 0
    ours = measure(["encode-ours", str(corpus), str(tok), str(tmp_path / "tokens" / "ids.npy")])
    assert ours["engine"].startswith("tokenize engine: ours")  # 100 KB: below the size where tiktoken pays
    peer = measure(["encode-tiktoken", str(corpus), str(tok)])
    assert ours["tokens"] == peer["tokens"] > 0


def test_scale_flag_runs_the_scale_benchmarks_with_their_sizes(tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "fake_scale.py").write_text(
        textwrap.dedent(
            """
        from bench.common import make_row

        def run(quick=False, sizes_mb=None, encode_max_mb=None):
            return [make_row("scaled", "peer", 1.0, 1.0, "s", notes=f"sizes={sizes_mb} encode={encode_max_mb}")]
        """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(bench_main, "BENCHMARKS", {})
    monkeypatch.setattr(bench_main, "SCALE_BENCHMARKS", {"scale": "fake_scale"})
    monkeypatch.setattr(bench_main, "ALL_BENCHMARKS", {"scale": "fake_scale"})
    out = tmp_path / "out"
    assert bench_main.main(["--scale", "--scale-mb", "1,2.5", "--out-dir", str(out), "--docs-dir", str(out)]) == 0
    rows = json.loads((out / "latest.json").read_text())["rows"]
    assert [r["notes"] for r in rows] == ["sizes=[1.0, 2.5] encode=None"]
    assert (
        bench_main.main(
            [
                "--scale",
                "--scale-mb",
                "1,2.5",
                "--scale-encode-max-mb",
                "1",
                "--out-dir",
                str(out),
                "--docs-dir",
                str(out),
            ]
        )
        == 0
    )
    notes = [r["notes"] for r in json.loads((out / "latest.json").read_text())["rows"]]
    assert notes == ["sizes=[1.0, 2.5] encode=1.0"]
    assert bench_main.main(["--out-dir", str(out), "--docs-dir", str(out)]) == 0  # without --scale: nothing
    assert json.loads((out / "latest.json").read_text())["rows"] == []


@pytest.mark.slow
def test_scale_run_leaves_out_encode_rows_above_the_cap() -> None:
    pytest.importorskip("tokenizers")
    pytest.importorskip("tiktoken")
    from bench.bench_scale import run

    rows = run(sizes_mb=[0.05, 0.1], docs_dir=None, encode_max_mb=0.05)
    works = [r["work"] for r in rows]
    assert sum("train BPE, 10000 vocab, Zipf corpus" in w for w in works) == 2
    encode_rows = [w for w in works if w.startswith("cs336 tokenize")]
    assert encode_rows == ["cs336 tokenize to .npy, 2 processes, Zipf corpus 0.05 MB"]


def _measured(seconds: float, rss: float) -> dict:
    return {"seconds": seconds, "peak_rss": rss, "tokens": 10, "engine": "tokenize engine: tiktoken (...)"}


def test_tokenize_row_is_speed_against_tiktoken_alone_with_goal_one() -> None:
    """`cs336 tokenize` twice as fast as tiktoken is 2x (a seconds ratio would read 0.5x); the engine is named."""
    from bench.bench_scale import _encode_row

    row = _encode_row(250, 250_000_000, _measured(5.0, 0.6e9), _measured(10.0, 0.5e9))
    assert row["ratio"] == pytest.approx(2.0) and row["goal"] == ">= 1x" and row["met"] is True
    assert row["unit"] == "bytes/s" and "tiktoken alone" in row["peer"] and "tokenize engine: tiktoken" in row["notes"]
    assert _encode_row(250, 250_000_000, _measured(12.0, 0.6e9), _measured(10.0, 0.5e9))["met"] is False


def test_tokenize_memory_growth_row_wants_a_flat_peak() -> None:
    from bench.bench_scale import _encode_row, _memory_growth_row

    def rows(rss_small: float, rss_big: float) -> list[dict]:
        return [
            _encode_row(250, 250_000_000, _measured(5.0, rss_small), _measured(10.0, 0.5e9)),
            _encode_row(500, 500_000_000, _measured(10.0, rss_big), _measured(20.0, 0.5e9)),
        ]

    flat = _memory_growth_row(rows(0.6e9, 0.62e9))
    assert flat["ours"] == pytest.approx(0.047, abs=0.01) and "(memory flat in corpus size): met" in flat["notes"]
    growing = _memory_growth_row(rows(0.7e9, 0.9e9))  # today's 250 -> 500 MB: exponent 0.36
    assert "NOT met" in growing["notes"]

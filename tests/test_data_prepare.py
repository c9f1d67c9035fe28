"""`python -m manet_jax.data.prepare`: builds, reports skipped files, explains missing ones."""

from __future__ import annotations

import data_fixtures as fx

from manet_jax.data import prepare


def test_prepare_builds_once(tmp_path, capsys):
    fx.make_raf_db(tmp_path / "data/downloads/manual/raf_db")  # the default manual dir
    assert prepare.main(["--dataset", "raf_db", "--data-dir", str(tmp_path / "data")]) == 0
    assert "raf_db prepared in" in capsys.readouterr().out
    assert prepare.main(["--dataset", "raf_db", "--data-dir", str(tmp_path / "data")]) == 0
    assert "already prepared" in capsys.readouterr().out


def test_prepare_explains_missing_files(tmp_path, capsys):
    code = prepare.main(["--dataset", "caer_s", "--manual-dir", str(tmp_path / "manual"),
                         "--data-dir", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert code == 2
    assert str(tmp_path / "manual") in err and "caer-dataset.github.io" in err
    assert "train/<Class>/*.png" in err


def test_prepare_skip_corrupt_reports_names(tmp_path, capsys):
    fx.make_raf_db(tmp_path / "manual")
    bad = tmp_path / "manual/basic/Image/aligned/test_0003_aligned.jpg"
    bad.write_bytes(b"\xff\xd8 broken")
    args = ["--dataset", "raf_db", "--manual-dir", str(tmp_path / "manual"),
            "--data-dir", str(tmp_path / "data")]
    assert prepare.main(args) == 2
    assert "Image/aligned/test_0003_aligned.jpg" in capsys.readouterr().err
    assert prepare.main(args + ["--skip-corrupt"]) == 0
    out = capsys.readouterr().out
    assert "test: skipped 1 missing or unreadable file(s):" in out
    assert "Image/aligned/test_0003_aligned.jpg" in out and "test 13 examples" in out


def test_prepare_unknown_dataset(capsys):
    assert prepare.main(["--dataset", "rafdb"]) == 2
    assert "unknown dataset 'rafdb'" in capsys.readouterr().err
    assert prepare.main(["--dataset", "affectnet/7+raf_db"]) == 2
    assert "'affectnet/7+raf_db' names several datasets; give one (affectnet/7, raf_db)" in capsys.readouterr().err

"""mtlrec.outputs: what a command may write over."""

import pytest

from mtlrec import outputs


def test_claim_tells_absent_empty_and_ours(tmp_path):
    assert outputs.claim(str(tmp_path / "new"), "dataset", "output") == outputs.ABSENT
    (tmp_path / "empty").mkdir()
    assert outputs.claim(str(tmp_path / "empty"), "dataset", "output") == outputs.EMPTY
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / outputs.LOCK).write_text("123")  # a run killed as it started
    assert outputs.claim(str(tmp_path / "locked"), "run", "model_dir") == outputs.EMPTY
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text("{}")
    assert outputs.claim(str(tmp_path / "data"), "dataset", "output") == outputs.OURS


def test_claim_refuses_files_of_another_kind_or_of_the_user(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text("{}")
    with pytest.raises(FileExistsError, match="not an mtlrec-train run .*manifest.json"):
        outputs.claim(str(tmp_path / "data"), "run", "model_dir")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="--output=.*file is an existing file"):
        outputs.claim(str(tmp_path / "file"), "dataset", "output")
    many = tmp_path / "many"
    many.mkdir()
    for i in range(7):
        (many / f"f{i}").write_text("")
    with pytest.raises(FileExistsError, match=r"f0, f1, f2, f3, f4, \.\.\. \(7 entries\)"):
        outputs.claim(str(many), "report", "out")


def test_an_output_never_replaces_or_contains_an_input(tmp_path):
    with pytest.raises(FileExistsError, match="would overwrite the input"):
        outputs.claim(str(tmp_path), "dataset", "output", inputs=[str(tmp_path / "in.csv")])
    with pytest.raises(FileExistsError, match="would overwrite the input"):
        outputs.claim_file(str(tmp_path / "in.csv"), "output", True, inputs=[str(tmp_path / "in.csv")])


def test_claim_file_replaces_only_its_own_kind_and_only_with_overwrite(tmp_path):
    out = tmp_path / "scores.csv"
    outputs.claim_file(str(out), "output", False)  # absent: free
    out.write_text("p\n")
    with pytest.raises(FileExistsError, match="is not an mtlrec output"):
        outputs.claim_file(str(out), "output", True)
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        outputs.claim_file(str(out), "output", False, is_ours=lambda p: True)
    outputs.claim_file(str(out), "output", True, is_ours=lambda p: True)
    with pytest.raises(FileExistsError, match="is a directory"):
        outputs.claim_file(str(tmp_path), "output", True)

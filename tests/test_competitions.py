import pytest

from retinopathy.competitions import APTOS2019, detect_competition, get_competition, read_labels
from retinopathy.errors import UserError


def test_aliases():
    assert get_competition("aptos2019") is APTOS2019
    assert get_competition("eyepacs2015").slug == "diabetic-retinopathy-detection"
    with pytest.raises(UserError, match="unknown competition 'kaggle'"):
        get_competition("kaggle")


def test_detect(tiny_aptos, tiny_eyepacs, tmp_path):
    assert detect_competition(tiny_aptos) is APTOS2019
    assert detect_competition(tiny_eyepacs).paired_eyes
    with pytest.raises(UserError, match="no train.csv or trainLabels.csv"):
        detect_competition(tmp_path)


@pytest.mark.parametrize("csv, message", [
    ("id_code,diagnosis\na1,0\na2,7\n", r"train.csv, row 3: grade '7' is not an integer 0-4"),
    ("id_code,diagnosis\na1,0\na2,\n", r"row 3: grade '' is not an integer"),
    ("id_code,diagnosis\na1,0\na1,2\n", r"row 3: duplicate id 'a1'"),
    ("id,label\na1,0\n", r"missing column\(s\) id_code, diagnosis"),
])
def test_bad_label_rows_are_named(tmp_path, csv, message):
    (tmp_path / "train.csv").write_text(csv)
    with pytest.raises(UserError, match=message):
        read_labels(tmp_path, APTOS2019)

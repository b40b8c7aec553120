"""support/files.py: the safe load says one sentence for a path the filesystem cannot hold."""

import pytest

from support.errors import CheckpointError
from support.files import safe_torch_load


@pytest.mark.parametrize("name", ["x" * 5000 + ".pth", "x" * 5000], ids=["pth", "bare"])
def test_a_name_longer_than_any_file_name_is_one_sentence(tmp_path, name):
    # pathlib lets ENAMETOOLONG through is_dir()/is_file(): it was an OSError traceback
    with pytest.raises(CheckpointError, match=r"^No checkpoint at .{20,90}… \(5,0\d\d "
                       r"characters\): File name too long\.$") as err:
        safe_torch_load(tmp_path / name, "run python main.py first")
    assert "\n" not in str(err.value)

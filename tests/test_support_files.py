"""support/files.py: one atomic write for text and bytes; the safe load says one sentence for a
path the filesystem cannot hold."""

import pytest

from support.errors import CheckpointError
from support.files import atomic_write, safe_torch_load


@pytest.mark.parametrize("name", ["x" * 5000 + ".pth", "x" * 5000], ids=["pth", "bare"])
def test_a_name_longer_than_any_file_name_is_one_sentence(tmp_path, name):
    # pathlib lets ENAMETOOLONG through is_dir()/is_file(): it was an OSError traceback
    with pytest.raises(CheckpointError, match=r"^No checkpoint at .{20,90}… \(5,0\d\d "
                       r"characters\): File name too long\.$") as err:
        safe_torch_load(tmp_path / name, "run python main.py first")
    assert "\n" not in str(err.value)


def test_atomic_write_keeps_text_and_bytes_exact_and_the_old_file_on_failure(tmp_path):
    path = tmp_path / "new" / "data.txt"  # a missing folder is made
    atomic_write(path, "caf\u00e9\r\n")
    assert path.read_bytes() == b"caf\xc3\xa9\r\n"  # UTF-8, no newline translation
    atomic_write(path, b"\xff\x00 raw")
    assert path.read_bytes() == b"\xff\x00 raw"
    with pytest.raises(TypeError):  # fails inside the write: the old file stays, no temp file
        atomic_write(path, 42)
    assert path.read_bytes() == b"\xff\x00 raw" and sorted(path.parent.iterdir()) == [path]

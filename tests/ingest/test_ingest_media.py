"""Media checks decode the whole clip or photo: a clip cut short is refused, whatever its format."""
from __future__ import annotations

import pytest

from fusionrank.ingest.media import check_audio, check_image


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg", ".aiff"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_cut_clip_fails_the_check(tmp_path, make_audio, truncate, suffix, keep):
    full = make_audio(tmp_path / f"full{suffix}", seconds=1.0)
    assert check_audio(str(full)) is None
    cut = truncate(full, tmp_path / f"cut{suffix}", keep=keep)
    why = check_audio(str(cut))
    assert why is not None and ("truncated" in why or "unreadable" in why), why


def test_cut_wav_names_the_shortfall(tmp_path, make_audio, truncate):
    cut = truncate(make_audio(tmp_path / "full.wav", seconds=1.0), tmp_path / "cut.wav", keep=0.5)
    why = check_audio(str(cut))
    assert why.startswith("audio truncated: the header declares 32000 bytes of data"), why


def test_checks_never_raise(tmp_path):
    """Paths the OS refuses (too long, NUL, a folder) are reasons, not exceptions."""
    for bad in ("x" * 5000 + ".jpg", "a\x00b.jpg", str(tmp_path)):
        assert check_image(bad) is not None
        assert check_audio(bad.replace(".jpg", ".wav")) is not None
    (tmp_path / "empty.wav").write_bytes(b"")
    assert check_audio(str(tmp_path / "empty.wav")).startswith("audio unreadable")
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert check_image(str(tmp_path / "empty.jpg")).startswith("image unreadable")


def test_decompression_bomb_is_a_reason(tmp_path, monkeypatch):
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64*64 > 2 * 100: PIL raises DecompressionBombError
    assert "DecompressionBombError" in check_image(str(tmp_path / "big.png"))

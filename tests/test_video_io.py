import numpy as np
import pytest
import torch

from genrl.io.video import VideoReadError, read_video, write_video


def _clip():
    g = torch.Generator().manual_seed(0)
    v = torch.zeros(6, 3, 32, 32)
    for f in range(6):
        v[f, :, 8:20, 4 + 2 * f : 14 + 2 * f] = torch.tensor([0.9, 0.2, 0.1])[:, None, None]
    return (v + 0.02 * torch.rand(v.shape, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("suffix, tol", [(".gif", 0.03), (".mp4", 0.08)])
def test_write_read_round_trip(tmp_path, suffix, tol):
    v = _clip()
    path = write_video(tmp_path / f"a{suffix}", v)
    back = read_video(path)
    assert back.shape == v.shape
    assert (back - v).abs().mean() < tol


def test_webm_and_png_folder(tmp_path):
    import imageio.v3 as iio

    arr = (np.random.default_rng(0).random((5, 32, 32, 3)) * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "a.webm", arr, plugin="FFMPEG", fps=8, codec="libvpx")
    assert read_video(tmp_path / "a.webm").shape == (5, 3, 32, 32)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, a in enumerate(arr):
        iio.imwrite(folder / f"{i:03d}.png", a)
    got = read_video(folder)
    assert torch.allclose(got, torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255)


def test_bad_files_name_the_file(tmp_path):
    cases = {}
    cases["missing"] = tmp_path / "missing.mp4"
    (tmp_path / "empty.mp4").write_bytes(b"")
    cases["empty"] = tmp_path / "empty.mp4"
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 50)
    cases["cannot decode"] = tmp_path / "text.mp4"
    good = write_video(tmp_path / "good.mp4", _clip())
    (tmp_path / "trunc.mp4").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 3])
    cases["trunc"] = tmp_path / "trunc.mp4"
    (tmp_path / "notes.txt").write_text("hi")
    cases["unsupported"] = tmp_path / "notes.txt"
    (tmp_path / "nopng").mkdir()
    cases["no .png"] = tmp_path / "nopng"
    for what, path in cases.items():
        with pytest.raises(VideoReadError) as e:
            read_video(path)
        assert str(path) in str(e.value), what
        assert "\n" not in str(e.value)

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
    """Every reader (whole video, resized, chosen frames, info) fails with one VideoReadError naming the file;
    read_resized and read_frames raised FileNotFoundError on a missing path before, and a traceback in genrl score."""
    from genrl.io.video import read_frames, read_resized, video_info

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
    (tmp_path / "badpng").mkdir()
    (tmp_path / "badpng" / "000.png").write_text("not a png")
    cases["bad .png"] = tmp_path / "badpng"
    readers = {"read_video": read_video, "read_resized": lambda p: read_resized(p, (8, 8)),
               "read_frames": lambda p: read_frames(p, [0]), "video_info": video_info}
    for what, path in cases.items():
        for name, read in readers.items():
            if name == "video_info" and what in ("cannot decode", "trunc", "bad .png"):
                continue  # reads the header only; decoding errors surface when frames are read
            with pytest.raises(VideoReadError) as e:
                read(path)
            assert str(path) in str(e.value), (what, name)
            assert "\n" not in str(e.value)


def _long_video(path, frames, size=256):
    import imageio.v2 as iio

    w = iio.get_writer(path, fps=30, codec="libx264", quality=5, macro_block_size=8)
    for i in range(frames):
        f = np.zeros((size, size, 3), np.uint8)
        f[80:140, (i * 7) % 190 : (i * 7) % 190 + 60] = (200, 40, 40)
        w.append_data(f)
    w.close()
    return path


def test_read_resized_equals_resizing_each_decoded_frame(tmp_path, monkeypatch):
    import genrl.io.video as V

    monkeypatch.setattr(V, "_BLOCK", 7)  # several blocks and a partial last one
    path = _long_video(tmp_path / "v.mp4", 20, size=64)
    full = read_video(path)
    want = torch.nn.functional.interpolate(full, size=(16, 16), mode="area")
    got = V.read_resized(path, (16, 16))
    assert got.shape == (20, 3, 16, 16) and torch.allclose(got, want, atol=1e-6)
    assert torch.equal(V.read_resized(path, (64, 64)), full)


def test_reading_a_long_video_at_model_size_keeps_memory_flat(tmp_path):
    """Peak memory of read_resized grows with frames x 32 x 32, not with frames x source size
    (one leaked full-size float frame per frame before: +1.5 GB here)."""
    import subprocess
    import sys

    path = _long_video(tmp_path / "long.mp4", 2000)
    probe = ("import resource, sys\nfrom genrl.io.video import read_resized\nimport torch\n"
             "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "v = read_resized(sys.argv[1], (32, 32))\n"
             "print(v.shape[0], (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)")
    out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=300)
    frames, grown_mb = map(int, out.stdout.split())
    assert frames == 2000 and grown_mb < 150, grown_mb  # the output itself is 24 MB


def test_shapes_reward_scores_a_long_video_in_frame_chunks_exactly(monkeypatch):
    import rewards.shapes as S

    torch.manual_seed(0)
    model = S.ShapesReward(S.ShapesRewardConfig(width=8, dim=16)).eval()
    v = torch.rand(2, 23, 3, 32, 32)
    with torch.no_grad():
        whole = model.raw_scores(v, ["a red square", "a blue circle"])
        monkeypatch.setattr(S, "FRAME_CHUNK", 5)
        chunked = model.raw_scores(v, ["a red square", "a blue circle"])
    for a in whole:
        torch.testing.assert_close(chunked[a], whole[a], rtol=1e-5, atol=1e-6)

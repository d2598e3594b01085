"""Fuzzing the two things every command reads first: no config text or override, and no file posing as a
video, makes them fail with anything but their documented one-line error."""

import os
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genrl.config import ConfigError, load_config
from genrl.io.video import VIDEO_SUFFIXES, VideoReadError, read_frames, read_resized, read_video, video_info

from distill.recipe import DistillConfig

KEYS = ["method", "teacher", "student", "out_dir", "optim.lr", "optim.betas", "train.steps", "train.tracker",
        "dmd.batch_size", "dmd.real_guidance", "streaming.timesteps", "stream_r1.axes", "world.frames",
        "world.height", "eval_num", "nonsense", "optim", "train.steps.deeper", ""]
VALUES = st.one_of(
    st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", "[]", "[1,", "{}", "null", "~", "true", "[1000, -1]", "'x'", "a=b", "${oops}", "[vq,mq]"]),
    st.text(string.printable, max_size=12),
)
FUZZ = settings(max_examples=int(os.environ.get("GENRL_FUZZ_EXAMPLES", 150)), deadline=None, derandomize="GENRL_FUZZ_EXAMPLES" not in os.environ, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _one_line(e: Exception) -> None:
    assert str(e) and "\n" not in str(e)


@FUZZ
@given(overrides=st.lists(st.one_of(st.tuples(st.sampled_from(KEYS), VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"),
                                    st.text(string.printable, max_size=20)), max_size=4))
def test_overrides_load_or_fail_with_one_config_error(overrides):
    try:
        load_config(DistillConfig, "configs/stream_r1.yaml", overrides)
    except ConfigError as e:
        _one_line(e)


@FUZZ
@given(text=st.one_of(
    st.text(string.printable, max_size=200),
    st.lists(st.tuples(st.sampled_from(KEYS[:-1]), VALUES), max_size=5).map(
        lambda kvs: "".join(f"{k.split('.')[0]}:\n  {k.split('.')[-1]}: {v}\n" if "." in k else f"{k}: {v}\n"
                            for k, v in kvs))))
def test_config_files_load_or_fail_with_one_config_error(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    try:
        load_config(DistillConfig, p)
    except ConfigError as e:
        _one_line(e)


@pytest.fixture(scope="module")
def real_video(tmp_path_factory):
    import torch

    from genrl.io.video import write_video

    d = tmp_path_factory.mktemp("v")
    return {s: (d / f"v{s}").write_bytes(b"") or write_video(d / f"v{s}", torch.rand(6, 3, 32, 32)).read_bytes()
            for s in (".gif", ".mp4")}


@FUZZ
@given(suffix=st.sampled_from(sorted(VIDEO_SUFFIXES)), data=st.data())
def test_any_bytes_named_as_a_video_read_or_fail_with_one_video_read_error(tmp_path, real_video, suffix, data):
    source = real_video.get(suffix)
    if source is not None and data.draw(st.booleans()):  # a real file, cut short or with bytes flipped
        cut = data.draw(st.integers(0, len(source)))
        blob = bytearray(source[:cut])
        for i in data.draw(st.lists(st.integers(0, max(0, len(blob) - 1)), max_size=8)) if blob else []:
            blob[i] ^= 0xFF
        blob = bytes(blob)
    else:
        blob = data.draw(st.binary(max_size=2000))
    p = tmp_path / f"fuzz{suffix}"
    p.write_bytes(blob)
    for read in (read_video, lambda q: read_resized(q, (8, 8)), video_info, lambda q: read_frames(q, [0, 2])):
        try:
            read(p)
        except VideoReadError as e:
            _one_line(e)

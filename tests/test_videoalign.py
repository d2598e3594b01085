"""VideoReward as VideoAlign ships and scores it: the release layout loads, scores equal a step-by-step reference."""

import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from genrl.models.qwen_vision import smart_resize
from rewards.videoalign import convert
from rewards.videoreward import videoreward

from tiny_videoalign import STATS, write_release


def _write_mp4(path, frames, fps, seed):
    g = np.random.default_rng(seed)
    base = g.integers(0, 255, size=(1, 6, 8, 3)).astype(np.float32)
    clip = np.stack([np.roll(base[0], i, axis=1) for i in range(frames)])
    clip = np.kron(clip, np.ones((1, 8, 8, 1)))  # 48x64, smooth enough for the codec
    iio.imwrite(path, clip.astype(np.uint8), plugin="FFMPEG", fps=fps, codec="libx264", macro_block_size=16)
    return path


def _reference(trained, head, tok, path, prompt, template, output_dim):
    """VideoAlign's pipeline step by step: its frame rule from the file's own fps, uint8 bicubic resize,
    transformers' processor with its chat template, the decoder with position_ids=None, the head at the tokens."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    frames = np.stack(list(iio.imiter(path, plugin="FFMPEG")))
    total, fps = len(frames), iio.immeta(path, plugin="FFMPEG")["fps"]
    nframes = total / fps * 2.0
    nframes = min(max(nframes, 4), math.floor(min(768, total) / 2) * 2)
    nframes = min(round(nframes / 2) * 2, total)
    idx = torch.linspace(0, total - 1, nframes).round().long().tolist()
    video = torch.from_numpy(frames[idx]).permute(0, 3, 1, 2)
    h, w = smart_resize(video.shape[2], video.shape[3], 28, 128 * 28 * 28, 448 * 448)
    video = resize(video, [h, w], interpolation=InterpolationMode.BICUBIC, antialias=True).float()
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tok, chat_template=tok.chat_template,
                                 video_processor=Qwen2VLVideoProcessor(size={"shortest_edge": 28 * 28, "longest_edge": 10**7}))
    chat = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": template.format(text_prompt=prompt)}]}]
    text = processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    batch = processor(text=[text], videos=[video], return_tensors="pt", videos_kwargs={"do_rescale": True, "do_sample_frames": False})
    ids = batch["input_ids"]
    with torch.no_grad():
        emb = trained.get_input_embeddings()(ids)
        feats = trained.model.get_video_features(batch["pixel_values_videos"], batch["video_grid_thw"], return_dict=True)
        vid = torch.cat(list(feats.pooler_output))
        emb = emb.masked_scatter((ids == trained.config.video_token_id)[..., None].expand_as(emb), vid)
        hidden = trained.model.language_model(inputs_embeds=emb, attention_mask=batch["attention_mask"], position_ids=None).last_hidden_state
        special = [tok.convert_tokens_to_ids(t) for t in ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")]
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for t in special:
            mask |= ids == t
        logits = head(hidden)[mask].view(1, 3, -1)
        raw = logits[0].diagonal() if output_dim == 3 else logits[0, :, 0]
    names = ("VQ", "MQ", "TA")
    return torch.stack([(raw[i] - STATS[f"{n}_mean"]) / STATS[f"{n}_std"] for i, n in enumerate(names)])


@pytest.mark.parametrize("output_dim,layout", [(3, "model_pth"), (1, "adapter")])
def test_release_loads_and_scores_like_videoalign(tmp_path, output_dim, layout):
    trained, head, tok = write_release(tmp_path, output_dim, layout)
    dst = convert(tmp_path / "release", tmp_path / "converted", tmp_path / "base", template_file=str(tmp_path / "template.txt"))
    rm = videoreward(weights=str(dst), dtype="float32")
    template = (tmp_path / "template.txt").read_text()
    cases = [(5, 8), (30, 24), (60, 8)]  # several lengths and frame rates (4, 4 and 16 frames read)
    for i, (frames, fps) in enumerate(cases):
        path = _write_mp4(tmp_path / f"v{i}.mp4", frames, fps, i)
        prompt = "a red square moving left" if i % 2 else "A cat, walking."
        with torch.no_grad():
            ours = rm.score_read(rm.read_file(path), prompt)
        ref = _reference(trained, head, tok, path, prompt, template, output_dim)
        got = torch.stack([ours.z[a][0] for a in ("vq", "mq", "ta")])
        assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5), (frames, fps, got, ref)
    # what the comparison can see: Qwen2-VL's 3-D positions, or a 3-output head read off its diagonal
    rm.cfg.positions = "mrope"
    with torch.no_grad():
        moved = rm.score_read(rm.read_file(path), prompt)
    assert max(abs(float(moved.z[a][0] - ours.z[a][0])) for a in ("vq", "mq", "ta")) > 1e-3


def test_release_with_a_missing_head_or_a_stray_key_is_one_line(tmp_path, run_cli):
    write_release(tmp_path)
    pth = tmp_path / "release" / "checkpoint-12" / "model.pth"
    state = torch.load(pth, weights_only=True)
    for damage, message in (("head", "no rm_head.weight"), ("stray", "unexpected key 'model.language_model.extra.weight'")):
        bad = dict(state)
        if damage == "head":
            bad = {k: v for k, v in bad.items() if "rm_head" not in k}
        else:
            bad["base_model.model.model.extra.weight"] = torch.zeros(2)
        torch.save(bad, pth)
        code, _, err = run_cli("convert", "videoreward", str(tmp_path / "release"), str(tmp_path / f"out_{damage}"),
                               "--base", str(tmp_path / "base"), "--template", str(tmp_path / "template.txt"))
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    torch.save(state, pth)


class Payload:
    """Any class a pickle names; weights_only loading must refuse to build it."""


def test_pickled_objects_are_refused(tmp_path, run_cli):
    write_release(tmp_path)
    pth = tmp_path / "release" / "checkpoint-12" / "model.pth"
    torch.save({"w": torch.zeros(1), "obj": Payload()}, pth)  # unpickling it would run code it names
    code, _, err = run_cli("convert", "videoreward", str(tmp_path / "release"), str(tmp_path / "out"),
                           "--base", str(tmp_path / "base"), "--template", str(tmp_path / "template.txt"))
    assert code == 2 and "weights_only" in err


def test_saliency_reaches_every_frame_of_a_rollout(tmp_path):
    write_release(tmp_path)
    rm = videoreward(weights=str(convert(tmp_path / "release", tmp_path / "c", tmp_path / "base",
                                         template_file=str(tmp_path / "template.txt"))), dtype="float32")
    video = torch.rand(1, 17, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    read = rm.read_indices(17)
    assert len(read) == 4  # 17 frames at 16 fps: 2 a second, at least 4
    scores, maps = rm.scores_and_saliency(video, ["a red square"])
    for a in ("vq", "mq", "ta"):
        per_frame = maps[a][0].flatten(1).sum(1)
        assert (per_frame > 0).all(), (a, per_frame)


def test_score_cli_reads_files_as_videoalign_does(tmp_path, run_cli):
    import json

    write_release(tmp_path)
    dst = convert(tmp_path / "release", tmp_path / "c", tmp_path / "base", template_file=str(tmp_path / "template.txt"))
    path = _write_mp4(tmp_path / "v.mp4", 60, 8, 3)
    code, out, err = run_cli("score", str(path), "--prompt", "a cat", "--reward", "videoreward", "--weights", str(dst),
                             "--format", "json")
    assert code == 0, err
    row = json.loads(out)[0]
    rm = videoreward(weights=str(dst), dtype="float32")
    with torch.no_grad():
        s = rm.score_read(rm.read_file(path), "a cat")
    assert row["frames"] == 16  # 7.5 s at 2 a second, read from the file's own 8 fps
    assert all(abs(row[a] - float(s.z[a][0])) < 1e-3 for a in ("vq", "mq", "ta"))
    assert abs(row["overall"] - float(s.overall[0])) < 1e-3

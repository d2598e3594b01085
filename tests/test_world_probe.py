import torch

from genrl.worlds.probe import AttributeProbe
from genrl.worlds.shapes import ATTRIBUTES, ShapesWorld, held_out_triples, parse_caption

WORLD = ShapesWorld()
PROBE = AttributeProbe()


def test_clips_are_deterministic_and_in_range():
    a, ca, _ = WORLD.clips("train", [3, 7])
    b, cb, _ = WORLD.clips("train", [3, 7])
    assert torch.equal(a, b) and ca == cb
    assert a.shape == (2, 9, 3, 32, 32) and a.min() >= 0 and a.max() <= 1


def test_test_split_holds_out_combinations_but_every_pair_is_trained():
    test = {tuple(r) for r in WORLD.combos("test").tolist()}
    train = {tuple(r) for r in WORLD.combos("train").tolist()}
    assert not test & train and len(test) == 64
    for c, s, d in held_out_triples(8):
        assert any(r[0] == c and r[1] == s for r in train)
        assert any(r[0] == c and r[3] == d for r in train)
        assert any(r[1] == s and r[3] == d for r in train)


def test_caption_round_trip():
    _, caps, attrs = WORLD.clips("test", range(20))
    for cap, row in zip(caps, attrs.tolist()):
        parsed = parse_caption(cap)
        assert [parsed[a] for a in ATTRIBUTES] == [list(v)[i] for v, i in zip(
            [__import__("genrl.worlds.shapes", fromlist=["VALUES"]).VALUES[a] for a in ATTRIBUTES], row)]


def test_probe_reads_real_clips_including_long_ones():
    v, caps, _ = WORLD.clips("test", range(96))
    assert PROBE.prompt_accuracy(v, caps)[0] >= 0.98
    v, caps, _ = WORLD.clips("test", range(16), frames=36)
    assert PROBE.prompt_accuracy(v, caps)[0] >= 0.98


def _acc(videos, caps):
    return PROBE.prompt_accuracy(videos.clamp(0, 1), caps)[0]


def test_probe_rejects_noise_and_empty_frames():
    v, caps, _ = WORLD.clips("val", range(32))
    g = torch.Generator().manual_seed(0)
    assert _acc(torch.rand(v.shape, generator=g), caps) == 0.0
    flat = v[:, :, :, :1, :1].expand_as(v).clone()  # background colour only
    assert _acc(flat, caps) == 0.0
    assert _acc(torch.zeros_like(v), caps) == 0.0


def test_probe_tolerates_mild_noise_but_not_heavy_blur():
    v, caps, _ = WORLD.clips("val", range(32))
    g = torch.Generator().manual_seed(1)
    assert _acc(v + 0.03 * torch.randn(v.shape, generator=g), caps) >= 0.9
    blurred = torch.nn.functional.avg_pool2d(v.flatten(0, 1), 9, 1, 4, count_include_pad=False).unflatten(0, v.shape[:2])
    assert _acc(blurred, caps) <= 0.3


def test_probe_rejects_two_shapes():
    v, caps, attrs = WORLD.clips("val", range(32))
    starts = torch.rand(32, 2, generator=torch.Generator().manual_seed(2))
    other = WORLD.render(attrs, (starts + 0.5) % 1.0)
    bg = v[:, :, :, :1, :1]
    both = torch.where((other - bg).abs().sum(2, keepdim=True) > 0.3, other, v)
    assert _acc(both, caps) <= 0.1


def test_probe_rejects_scattered_fragments_of_the_right_colour():
    v, caps, _ = WORLD.clips("val", range(64))
    bg = v[:, :, :, :1, :1]
    fg_mask = (v - bg).abs().sum(2, keepdim=True) > 0.3
    colour = (v * fg_mask).sum((1, 3, 4), keepdim=True) / fg_mask.sum((1, 3, 4), keepdim=True).clamp_min(1)
    g = torch.Generator().manual_seed(3)
    # 2x2 blocks of the right colour, scattered at random, the same area as the shape
    blocks = (torch.rand(v.shape[0], v.shape[1], 1, 16, 16, generator=g) < 0.06).float()
    blocks = blocks.repeat_interleave(2, -1).repeat_interleave(2, -2)
    fragments = bg * (1 - blocks) + colour[:, None].squeeze(2) * blocks
    assert _acc(fragments, caps) == 0.0


def test_probe_rejects_jitter_and_frozen_motion():
    v, caps, _ = WORLD.clips("val", range(32))
    g = torch.Generator().manual_seed(4)
    shuffled = v[:, torch.randperm(v.shape[1], generator=g)]
    assert _acc(shuffled, caps) <= 0.2
    frozen = v[:, :1].expand_as(v)
    assert _acc(frozen, caps) == 0.0


def test_jerk_is_the_mean_change_between_consecutive_read_steps():
    from genrl.worlds.probe import ProbeResult

    r = ProbeResult(True, {}, 1.0, steps=[(1.0, 0.0), (1.0, 0.0), (4.0, 0.0), None, (1.0, 0.0), (1.0, 4.0)])
    # pairs: 0, 3, (skip, skip), 4 -> 7 / 3
    assert abs(r.jerk() - 7 / 3) < 1e-12
    assert ProbeResult(True, {}, 1.0, steps=[(1.0, 0.0), None]).jerk() is None


def test_a_seam_in_a_real_clip_shows_in_its_steps_and_jerk():
    world = ShapesWorld()
    video, _, _ = world.clips("test", range(16))
    base = AttributeProbe().read(video)
    seam = video.clone()
    seam[:, 6:] = torch.roll(seam[:, 6:], shifts=3, dims=-1)  # every frame from the 7th on 3 px to the right
    moved = AttributeProbe().read(seam)
    checked, jerks = 0, []
    for a, b in zip(base, moved):
        if not (a.readable and b.readable and all(s is not None for s in a.steps + b.steps)):
            continue
        checked += 1
        jerks.append(a.jerk())
        for i, (sa, sb) in enumerate(zip(a.steps, b.steps)):  # only the step into frame 7 changes, by +3 px in x
            # (to the probe's centroid precision: its centre moves by up to ~0.2 px when a clip is rolled)
            assert abs(sb[0] - sa[0] - (3.0 if i == 5 else 0.0)) < 0.3 and abs(sb[1] - sa[1]) < 0.3
        assert b.jerk() > a.jerk() + 0.5  # two of the 7 step changes grow by 3 px
    assert checked >= 12 and sum(jerks) / len(jerks) < 0.05  # the world's clips move at constant velocity

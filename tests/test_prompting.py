"""Prompts as people write them: any subset of attributes, any order, paraphrases, nothing at all."""

import torch

from genrl.evaluation import eval_prompts
from genrl.worlds.prompting import extend_prompts, parse_prompt
from genrl.worlds.shapes import ATTRIBUTES, VALUES, ShapesWorld, WorldConfig, caption, parse_caption

FULL = "a small red square moving left slowly on a dark background"


def test_parse_reads_any_order_and_paraphrases_and_lists_unknown_words():
    assert parse_prompt("moving down, a yellow circle").named == {"colour": "yellow", "shape": "circle", "direction": "down"}
    assert parse_prompt("a big blue ball going left fast on a white background").named == {
        "size": "large", "colour": "blue", "shape": "circle", "direction": "left", "speed": "quickly", "background": "light"}
    assert parse_prompt(FULL).named == parse_caption(FULL)
    assert parse_prompt("").named == {} and parse_prompt("").unknown == []
    assert parse_prompt("a purple fish swimming left").unknown == ["purple", "fish", "swimming"]


def test_extension_keeps_full_captions_and_fills_only_what_is_open():
    assert extend_prompts([FULL], seed=3)[0] == [FULL]
    assert extend_prompts(["moving left slowly, a small square on a dark background, red"], 0)[0] == [FULL]
    seen = {a: set() for a in ATTRIBUTES}
    for seed in range(40):
        (out,), _ = extend_prompts(["a red square"], seed)
        got = parse_caption(out)
        assert got["colour"] == "red" and got["shape"] == "square" and out == caption(got)
        for a in ATTRIBUTES:
            seen[a].add(got[a])
    assert all(seen[a] == set(VALUES[a]) for a in ("size", "direction", "speed", "background"))  # open ones vary
    assert extend_prompts(["", "a blue circle"], 5) == extend_prompts(["", "a blue circle"], 5)  # same seed, same draw


def test_eval_prompts_name_true_attributes_and_paraphrases_parse_back():
    world, g = ShapesWorld(WorldConfig()), torch.Generator().manual_seed(0)
    idx = list(range(64))
    _, captions, _ = world.clips("test", idx)
    prompts, named = eval_prompts(world, "test", idx, "partial", g)
    sizes = [len(n) for n in named]
    assert min(sizes) <= 1 and max(sizes) >= 5 and 2 <= sum(sizes) / len(sizes) <= 4  # each named with p = 1/2
    for p, n, c in zip(prompts, named, captions):
        truth = parse_caption(c)
        assert all(truth[a] == v for a, v in n.items()) and parse_prompt(p).named == n
    prompts, named = eval_prompts(world, "test", idx, "paraphrase", g)
    assert sum(p != c for p, c in zip(prompts, captions)) > 50  # other words, other order
    assert [extend_prompts([p])[0][0] for p in prompts] == captions  # and the same caption once read


def test_sample_warns_about_unknown_words_in_one_line(run_cli, tmp_path):
    code, out, err = run_cli("sample", "--model", "shapes-teacher", "--prompt", "a purple fish going left",
                             "--steps", "2", "--out", str(tmp_path / "x.gif"))
    assert code == 0
    lines = [l for l in err.splitlines() if l.startswith("warning")]
    assert len(lines) == 1 and "'purple', 'fish'" in lines[0] and "known:" in lines[0] and "triangle" in lines[0]
    assert "1 prompt(s) leave attributes unnamed" in out
    prompts = tmp_path / "p.txt"  # a paraphrase naming all six is not partial; "a red square" is
    prompts.write_text("a big blue ball going left fast on a dark background\na red square\n")
    code, out, _ = run_cli("sample", "--model", "shapes-teacher", "--prompts", str(prompts), "--steps", "2",
                           "--out", str(tmp_path / "y.gif"))
    assert code == 0 and "1 prompt(s) leave attributes unnamed" in out
    code, out, _ = run_cli("sample", "--model", "shapes-teacher", "--prompt", "", "--steps", "2",  # unconditional
                           "--out", str(tmp_path / "z.gif"))
    assert code == 0 and "1 prompt(s) leave attributes unnamed" in out


def test_paraphrased_prompts_generate_exactly_what_full_captions_do():
    from genrl.generation import SamplingConfig, generate

    from tiny import tiny_video_model

    m, world = tiny_video_model(), ShapesWorld(WorldConfig())
    idx = list(range(6))
    captions, _ = eval_prompts(world, "test", idx, "full", torch.Generator().manual_seed(0))
    paraphrases, _ = eval_prompts(world, "test", idx, "paraphrase", torch.Generator().manual_seed(0))
    assert paraphrases != captions
    a = generate(m, captions, 3, SamplingConfig(2, 2.0), seed=4).videos
    b = generate(m, paraphrases, 3, SamplingConfig(2, 2.0), seed=4).videos
    assert torch.equal(a, b)

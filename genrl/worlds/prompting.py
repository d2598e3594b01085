"""Prompts as people write them, for the shapes world's generators.

The shapes models were trained on one caption template naming all six
attributes. People name a few, in any order, in their own words ("a red square",
"moving down, a yellow circle", "something going left fast"), or nothing at all.
Like the prompt extenders real text-to-video models use (Wan2.1's, Self-Forcing's
extended prompts), genrl reads what a prompt names — any order, a few paraphrases
— and fills the attributes it leaves open with values drawn from the world, then
hands the model the caption it knows. Unknown words are reported, never silently
dropped. The attribute probe judges the result on the named attributes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from .shapes import ATTRIBUTES, VALUES, caption

# paraphrases -> (attribute, value); the world's own words map to themselves
SYNONYMS: dict[str, tuple[str, str]] = {
    **{v: (a, v) for a in ATTRIBUTES for v in VALUES[a] if a != "background"},
    "big": ("size", "large"), "huge": ("size", "large"), "little": ("size", "small"), "tiny": ("size", "small"),
    "box": ("shape", "square"), "squares": ("shape", "square"), "circles": ("shape", "circle"),
    "ball": ("shape", "circle"), "disc": ("shape", "circle"), "disk": ("shape", "circle"), "round": ("shape", "circle"),
    "triangles": ("shape", "triangle"), "triangular": ("shape", "triangle"),
    "leftward": ("direction", "left"), "leftwards": ("direction", "left"), "rightward": ("direction", "right"),
    "rightwards": ("direction", "right"), "upward": ("direction", "up"), "upwards": ("direction", "up"),
    "downward": ("direction", "down"), "downwards": ("direction", "down"),
    "fast": ("speed", "quickly"), "quick": ("speed", "quickly"), "rapidly": ("speed", "quickly"),
    "slow": ("speed", "slowly"),
}
# background words are read only next to "background" (or as "dark"/"light" alone)
BACKGROUND_WORDS = {"dark": "dark", "black": "dark", "night": "dark", "light": "light", "white": "light", "bright": "light"}
FILLER = {"a", "an", "the", "moving", "moves", "move", "goes", "going", "heading", "travelling", "traveling", "on",
          "background", "shape", "object", "something", "thing", "is", "and", "with", "of", "in", "to", "towards",
          "toward", "that", "which", "it", "its", "at", "one", "single", "video", "clip", "over", "across", "against",
          "very", "pretty", "quite", "colored", "coloured", "scene", "backdrop", "screen", "frame", "from"}


@dataclass
class ParsedPrompt:
    attributes: dict[str, str | None]
    """Each attribute's named value, or None where the prompt leaves it open."""
    unknown: list[str] = field(default_factory=list)
    """Words the shapes world does not know (ignored)."""

    @property
    def named(self) -> dict[str, str]:
        return {a: v for a, v in self.attributes.items() if v is not None}


def parse_prompt(text: str) -> ParsedPrompt:
    """What a prompt names, in any order and a few paraphrases; unknown words listed."""
    words = re.findall(r"[a-z]+", text.lower())
    attrs: dict[str, str | None] = {a: None for a in ATTRIBUTES}
    unknown: list[str] = []
    for w in words:
        if w in BACKGROUND_WORDS:
            attrs["background"] = attrs["background"] or BACKGROUND_WORDS[w]
        elif w in SYNONYMS:
            a, v = SYNONYMS[w]
            attrs[a] = attrs[a] or v
        elif w not in FILLER and w not in unknown:
            unknown.append(w)
    return ParsedPrompt(attrs, unknown)


def vocabulary() -> list[str]:
    """Words a shapes prompt can use to name attributes."""
    return sorted(set(SYNONYMS) | set(BACKGROUND_WORDS))


def complete(attrs: dict[str, str | None], generator: torch.Generator) -> str:
    """The world's caption with open attributes drawn uniformly from the world's values."""
    full = {}
    for a in ATTRIBUTES:  # one draw per attribute, named or not: the stream does not depend on what is named
        draw = VALUES[a][int(torch.randint(len(VALUES[a]), (1,), generator=generator))]
        full[a] = attrs.get(a) or draw
    return caption(full)


def extend_prompts(prompts: list[str], seed: int = 0) -> tuple[list[str], list[str]]:
    """Full captions for ``prompts`` (open attributes drawn with ``seed``) and the unknown words found."""
    g = torch.Generator().manual_seed(seed)
    out, unknown = [], []
    for p in prompts:
        parsed = parse_prompt(p)
        out.append(complete(parsed.attributes, g))
        unknown += [w for w in parsed.unknown if w not in unknown]
    return out, unknown


def unknown_words_line(words: list[str]) -> str:
    return (f"warning: ignored word(s) the shapes world does not know: {', '.join(repr(w) for w in words)}; "
            f"known: {', '.join(vocabulary())}")


# ------------------------------------------------------------- evaluation prompts
PARAPHRASES: dict[str, dict[str, list[str]]] = {
    "size": {"small": ["small", "little", "tiny"], "large": ["large", "big"]},
    "shape": {"square": ["square", "box"], "circle": ["circle", "ball", "disc"], "triangle": ["triangle"]},
    "direction": {d: [f"moving {d}", f"going {d}", f"heading {d}", f"{d}ward"] for d in ("left", "right")}
    | {d: [f"moving {d}", f"going {d}", f"{d}wards"] for d in ("up", "down")},
    "speed": {"slowly": ["slowly", "slow"], "quickly": ["quickly", "fast", "rapidly"]},
    "background": {"dark": ["on a dark background", "on a black background"],
                   "light": ["on a light background", "on a white background"]},
}


def written_prompt(attrs: dict[str, str], named: list[str], generator: torch.Generator, paraphrase: bool) -> str:
    """A prompt naming only ``named`` attributes, in a random phrase order, optionally paraphrased."""
    def say(a: str) -> str:
        v = attrs[a]
        if not paraphrase:
            return {"direction": f"moving {v}", "background": f"on a {v} background"}.get(a, v)
        options = PARAPHRASES.get(a, {}).get(v, [v])
        return options[int(torch.randint(len(options), (1,), generator=generator))]

    noun = [say(a) for a in ("size", "colour", "shape") if a in named]
    if "shape" not in named and noun:
        noun.append("shape")
    phrases = [" ".join(["a", *noun])] if noun else []
    phrases += [say(a) for a in ("direction", "speed", "background") if a in named]
    order = torch.randperm(len(phrases), generator=generator).tolist()
    return ", ".join(phrases[i] for i in order)

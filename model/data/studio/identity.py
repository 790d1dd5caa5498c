"""Identities: everything about a studio person that stays fixed across their clips."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

RGB = tuple[int, int, int]

# ------------------------------------------------------------------------------------------------
# Palettes (name -> colour); sampled colours are jittered around these
# ------------------------------------------------------------------------------------------------

SKIN_TONES: dict[str, RGB] = {
    "very light": (250, 224, 206), "light": (238, 200, 170), "light olive": (220, 180, 140),
    "medium": (198, 150, 110), "tan": (176, 124, 84), "brown": (140, 92, 60), "dark brown": (100, 64, 42),
    "very dark": (70, 44, 30),
}
HAIR_COLOURS: dict[str, RGB] = {
    "black": (25, 22, 22), "dark brown": (60, 38, 25), "brown": (110, 70, 40), "auburn": (140, 60, 30),
    "red": (180, 70, 35), "blonde": (225, 190, 120), "platinum": (235, 228, 210), "grey": (150, 150, 150),
    "white": (232, 232, 232), "blue": (50, 90, 200), "pink": (230, 120, 170), "green": (60, 150, 90),
}
CLOTH_COLOURS: dict[str, RGB] = {
    "red": (200, 40, 45), "orange": (235, 130, 40), "yellow": (235, 205, 60), "green": (50, 150, 70),
    "teal": (30, 140, 140), "blue": (40, 80, 190), "navy": (25, 35, 90), "purple": (120, 60, 160),
    "pink": (235, 130, 170), "white": (240, 240, 240), "grey": (130, 130, 135), "black": (30, 30, 32),
    "brown": (120, 80, 50), "beige": (215, 195, 160), "maroon": (110, 25, 40), "olive": (110, 115, 45),
}
EYE_COLOURS: dict[str, RGB] = {
    "brown": (90, 55, 30), "dark brown": (50, 30, 20), "blue": (70, 120, 190), "green": (70, 130, 80),
    "hazel": (130, 100, 50), "grey": (120, 130, 140),
}
BACKGROUND_COLOURS: dict[str, RGB] = {
    "white": (235, 235, 232), "light grey": (200, 200, 200), "dark grey": (70, 72, 75), "blue": (90, 130, 200),
    "sky blue": (150, 195, 235), "green": (100, 160, 110), "mint": (180, 225, 200), "yellow": (240, 220, 130),
    "orange": (230, 150, 80), "pink": (235, 180, 200), "purple": (130, 100, 170), "beige": (225, 210, 180),
    "teal": (60, 140, 150), "navy": (35, 45, 85), "brown": (130, 95, 70),
}

HAIR_STYLES = ("bald", "short", "buzz", "long", "bob", "bun", "curly", "ponytail")
TOPS = ("t-shirt", "long-sleeve shirt", "tank top", "jacket", "sweater")
PATTERNS = ("plain", "plain", "stripes", "two-tone")
BOTTOMS = ("trousers", "shorts", "skirt")
BACKGROUNDS = ("plain", "gradient", "vertical stripes", "diagonal stripes", "checkered", "dotted", "room")
FACIAL_HAIR = ("none", "none", "none", "beard", "moustache", "stubble")
GLASSES = ("none", "none", "none", "round glasses", "square glasses", "sunglasses")
HATS = ("none", "none", "none", "none", "beanie", "cap")


def _jitter(rng: np.random.Generator, colour: RGB, amount: float) -> RGB:
    """A colour randomly perturbed by up to `amount` per channel."""
    c = np.asarray(colour, dtype=np.float64) + rng.uniform(-amount, amount, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))  # type: ignore[return-value]


def _pick(rng: np.random.Generator, palette: dict[str, RGB], amount: float = 12.0) -> tuple[str, RGB]:
    name = str(rng.choice(sorted(palette)))
    return name, _jitter(rng, palette[name], amount)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def shade(colour: RGB, factor: float) -> RGB:
    """Darker (<1) or lighter (>1) version of a colour."""
    if factor <= 1.0:
        return tuple(int(c * factor) for c in colour)  # type: ignore[return-value]
    return tuple(int(c + (255 - c) * (factor - 1.0)) for c in colour)  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------
# Identity
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Appearance and body proportions of one studio person (lengths in head units)."""

    id: str
    skin_name: str
    skin: RGB
    lips: RGB
    face_half_width: float
    face_half_height: float
    jaw_squareness: float          # 0 = round/pointed chin, 1 = square jaw
    eye_size: float
    eye_spacing: float
    eye_name: str
    eye: RGB
    brow_thickness: float
    nose_length: float
    mouth_width: float
    lip_thickness: float
    hair_style: str
    hair_name: str
    hair: RGB
    facial_hair: str
    glasses: str
    glasses_colour: RGB
    hat: str
    hat_colour: RGB
    earrings: bool
    necklace: bool
    top: str
    top_name: str
    top_colour: RGB
    pattern: str
    pattern_colour: RGB
    bottom: str
    bottom_colour: RGB
    shoe_colour: RGB
    background: str
    background_name: str
    background_colour: RGB
    background_colour2: RGB
    shoulder_width: float          # half width at the shoulders
    torso_length: float            # neck to hips
    arm_length: float              # shoulder to wrist
    leg_length: float              # hips to ankles
    build: float                   # body width multiplier
    neck_length: float

    def describe(self) -> str:
        """A short English description for the caption."""
        hair = {"bald": "a shaved head", "short": f"short {self.hair_name} hair",
                "buzz": f"a {self.hair_name} buzz cut", "long": f"long {self.hair_name} hair",
                "bob": f"{self.hair_name} hair in a bob", "bun": f"{self.hair_name} hair in a bun",
                "curly": f"curly {self.hair_name} hair",
                "ponytail": f"{self.hair_name} hair in a ponytail"}[self.hair_style]
        parts = [f"a person with {self.skin_name} skin and {hair}"]
        extras = [x for x in (self.glasses, self.hat) if x != "none"]
        if self.facial_hair != "none":
            extras.append(self.facial_hair)
        if self.earrings:
            extras.append("earrings")
        if extras:
            parts.append("with " + " and ".join(extras))
        pattern = {"plain": "", "stripes": "striped ", "two-tone": "two-tone "}[self.pattern]
        parts.append(f"wearing {_article(self.top_name)} {self.top_name} {pattern}{self.top}")
        parts.append(f"in front of {_article(self.background_name)} {self.background_name} {self.background} background")
        return ", ".join(parts)

    def to_json(self) -> dict:
        """JSON-able fields for meta.json."""
        return asdict(self)


def sample_identity(rng: np.random.Generator, identity_id: str) -> Identity:
    """A random person."""
    skin_name, skin = _pick(rng, SKIN_TONES, 8)
    lips = _jitter(rng, tuple(int(c) for c in np.asarray(skin) * np.array([0.85, 0.55, 0.55])), 10)
    hair_name, hair = _pick(rng, HAIR_COLOURS, 10)
    eye_name, eye = _pick(rng, EYE_COLOURS, 10)
    top_name, top_colour = _pick(rng, CLOTH_COLOURS, 18)
    _, pattern_colour = _pick(rng, CLOTH_COLOURS, 18)
    _, bottom_colour = _pick(rng, CLOTH_COLOURS, 15)
    _, shoe_colour = _pick(rng, CLOTH_COLOURS, 10)
    _, hat_colour = _pick(rng, CLOTH_COLOURS, 10)
    background_name, background_colour = _pick(rng, BACKGROUND_COLOURS, 15)
    _, background_colour2 = _pick(rng, BACKGROUND_COLOURS, 15)
    glasses = str(rng.choice(GLASSES))
    return Identity(
        id=identity_id, skin_name=skin_name, skin=skin, lips=lips,
        face_half_width=float(rng.uniform(0.33, 0.42)), face_half_height=float(rng.uniform(0.46, 0.54)),
        jaw_squareness=float(rng.uniform(0.0, 1.0)), eye_size=float(rng.uniform(0.8, 1.25)),
        eye_spacing=float(rng.uniform(0.14, 0.18)), eye_name=eye_name, eye=eye,
        brow_thickness=float(rng.uniform(0.025, 0.05)), nose_length=float(rng.uniform(0.12, 0.2)),
        mouth_width=float(rng.uniform(0.11, 0.16)), lip_thickness=float(rng.uniform(0.025, 0.05)),
        hair_style=str(rng.choice(HAIR_STYLES)), hair_name=hair_name, hair=hair,
        facial_hair=str(rng.choice(FACIAL_HAIR)), glasses=glasses,
        glasses_colour=(20, 20, 25) if glasses == "sunglasses" else _jitter(rng, (60, 50, 45), 40),
        hat=str(rng.choice(HATS)), hat_colour=hat_colour, earrings=bool(rng.random() < 0.25),
        necklace=bool(rng.random() < 0.2), top=str(rng.choice(TOPS)), top_name=top_name, top_colour=top_colour,
        pattern=str(rng.choice(PATTERNS)), pattern_colour=pattern_colour, bottom=str(rng.choice(BOTTOMS)),
        bottom_colour=bottom_colour, shoe_colour=shoe_colour, background=str(rng.choice(BACKGROUNDS)),
        background_name=background_name, background_colour=background_colour,
        background_colour2=background_colour2,
        shoulder_width=float(rng.uniform(0.75, 1.05)), torso_length=float(rng.uniform(2.2, 2.6)),
        arm_length=float(rng.uniform(2.2, 2.6)), leg_length=float(rng.uniform(3.1, 3.6)),
        build=float(rng.uniform(0.85, 1.2)), neck_length=float(rng.uniform(0.2, 0.35)),
    )

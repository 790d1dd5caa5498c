"""Speaking styles and the captions that describe them (the caption really drives the motion)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# energy level -> (gesture amplitude, gesture probability per stressed syllable, head motion gain)
_ENERGY = {
    "calm": (0.3, 0.35, 0.5),
    "moderate": (0.65, 0.6, 1.0),
    "energetic": (1.0, 0.9, 1.6),
}
_ENERGY_TEXT = {"calm": "calm, small gestures", "moderate": "relaxed, moderate gestures",
                "energetic": "energetic, big gestures"}
_LISTENING_TEXT = {"calm": "very still", "moderate": "relaxed", "energetic": "restless, shifting a lot"}
_NODS = {"often": 0.9, "sometimes": 0.4, "rarely": 0.08}
_NOD_TEXT = {"often": "nods a lot", "sometimes": "", "rarely": "head mostly still"}
_HANDS_TEXT = {"both": "talks with both hands", "right": "gestures mostly with the right hand",
               "left": "gestures mostly with the left hand"}


@dataclass(frozen=True)
class Style:
    """How a person moves in one clip."""

    energy: str           # calm | moderate | energetic
    nods: str             # often | sometimes | rarely
    hands: str            # both | right | left
    wave_at_start: bool
    looks_around: bool
    smiles: bool

    @property
    def gesture_amplitude(self) -> float:
        """Scale of beat gestures and of the raised-hands speaking pose."""
        return _ENERGY[self.energy][0]

    @property
    def gesture_rate(self) -> float:
        """Probability that a stressed syllable gets a beat gesture."""
        return _ENERGY[self.energy][1]

    @property
    def head_gain(self) -> float:
        """Scale of head sway and prosody-driven head motion."""
        return _ENERGY[self.energy][2] * (0.4 if self.nods == "rarely" else 1.0)

    @property
    def nod_rate(self) -> float:
        """Probability that a stressed syllable gets a nod."""
        return _NODS[self.nods]

    def describe(self) -> dict:
        """JSON-able fields for meta.json."""
        return asdict(self)


def sample_style(rng: np.random.Generator) -> Style:
    """A random speaking style."""
    return Style(
        energy=str(rng.choice(list(_ENERGY), p=[0.35, 0.35, 0.3])),
        nods=str(rng.choice(list(_NODS), p=[0.3, 0.45, 0.25])),
        hands=str(rng.choice(list(_HANDS_TEXT), p=[0.5, 0.3, 0.2])),
        wave_at_start=bool(rng.random() < 0.2),
        looks_around=bool(rng.random() < 0.25),
        smiles=bool(rng.random() < 0.35),
    )


def motion_phrases(style: Style, mostly_silent: bool) -> list[str]:
    """The motion part of a caption, most important first."""
    phrases = ["mostly silent, listening" if mostly_silent else "talking"]
    phrases.append((_LISTENING_TEXT if mostly_silent else _ENERGY_TEXT)[style.energy])
    if _NOD_TEXT[style.nods]:
        phrases.append(_NOD_TEXT[style.nods])
    if not mostly_silent:
        phrases.append(_HANDS_TEXT[style.hands])
    if style.wave_at_start:
        phrases.append(f"waves with the {style.hands if style.hands != 'both' else 'right'} hand at the start")
    if style.looks_around:
        phrases.append("looks around")
    if style.smiles:
        phrases.append("smiling")
    return phrases


def caption(style: Style, mostly_silent: bool, framing_text: str, appearance: str) -> str:
    """Full caption: motion first, then the shot and the person."""
    return f"{', '.join(motion_phrases(style, mostly_silent))}; {framing_text} of {appearance}"

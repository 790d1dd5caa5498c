"""Motion driven by the audio: speech features -> per-frame mouth, eyes, head, breathing and gestures.

Everything here is an "intent" per frame (openness, angles, gesture blends); the rig turns it into
keypoints with the identity's proportions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.data.studio.captions import Style

# ------------------------------------------------------------------------------------------------
# Audio features per video frame
# ------------------------------------------------------------------------------------------------

WINDOW = 1024              # analysis window in samples (64 ms at 16 kHz), centred on each frame
SPEECH_GATE = 0.06         # normalized envelope above which a frame counts as speech
F0_RANGE_HZ = (70.0, 400.0)


@dataclass
class AudioFeatures:
    """Per-frame speech features (T = number of video frames)."""

    envelope: np.ndarray     # [T] RMS normalized to the clip's loud speech (~1), 0 in silence
    speech: np.ndarray       # [T] bool, the envelope gate with a short hangover
    low_ratio: np.ndarray    # [T] energy share below 1 kHz (open vowels)
    high_ratio: np.ndarray   # [T] energy share above 3.5 kHz (fricatives: narrow mouth)
    brightness: np.ndarray   # [T] spectral centroid in 0..1 over 300..3000 Hz (ee vs oo)
    pitch: np.ndarray        # [T] log2(f0 / median f0) on voiced frames, 0 elsewhere
    stresses: np.ndarray     # frame indices of stressed syllables
    stress_strength: np.ndarray  # [len(stresses)] in 0..1


def frame_windows(audio: np.ndarray, samples_per_frame: int, frames: int) -> np.ndarray:
    """Windows [T, WINDOW] centred on each frame's centre (zero padded at the ends)."""
    pad = WINDOW
    padded = np.pad(audio.astype(np.float32), (pad, pad))
    centres = (np.arange(frames) * samples_per_frame + samples_per_frame // 2) + pad
    starts = centres - WINDOW // 2
    return padded[starts[:, None] + np.arange(WINDOW)[None, :]]  # [T, WINDOW]


def frame_rms(audio: np.ndarray, samples_per_frame: int, frames: int) -> np.ndarray:
    """RMS of each frame's window: the speech envelope the ground truth is checked against."""
    return np.sqrt((frame_windows(audio, samples_per_frame, frames) ** 2).mean(axis=1))


def _local_peaks(x: np.ndarray, radius: int, threshold: float) -> np.ndarray:
    """Indices where x is the maximum within +-radius and above threshold."""
    padded = np.pad(x, radius, constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * radius + 1)
    return np.flatnonzero((x >= windows.max(axis=1)) & (x > threshold))


def audio_features(audio: np.ndarray, sample_rate: int, fps: int) -> AudioFeatures:
    """Envelope, voicing, spectral shape, pitch and stressed syllables of a clip."""
    spf = sample_rate // fps
    frames = len(audio) // spf
    windows = frame_windows(audio, spf, frames) * np.hanning(WINDOW).astype(np.float32)
    rms = np.sqrt((windows ** 2).mean(axis=1))
    loud = rms[rms > 1e-3]
    reference = float(np.percentile(loud, 90)) if len(loud) > 3 else 1.0
    envelope = np.clip(rms / max(reference, 1e-4), 0.0, 1.5)
    gate = envelope > SPEECH_GATE
    speech = gate | np.roll(gate, 1) | np.roll(gate, 2)
    speech[:2] = gate[:2]

    power = np.abs(np.fft.rfft(windows, axis=1)) ** 2                       # [T, WINDOW/2+1]
    freqs = np.fft.rfftfreq(WINDOW, 1.0 / sample_rate)
    total = power.sum(axis=1) + 1e-12
    low_ratio = power[:, freqs < 1000].sum(axis=1) / total
    high_ratio = power[:, freqs > 3500].sum(axis=1) / total
    band = (freqs > 300) & (freqs < 3000)
    centroid = (power[:, band] * freqs[band]).sum(axis=1) / (power[:, band].sum(axis=1) + 1e-12)
    brightness = np.clip((centroid - 600.0) / 1400.0, 0.0, 1.0)

    # pitch by autocorrelation of voiced frames
    spectrum = np.fft.rfft(windows, n=2 * WINDOW, axis=1)
    autocorr = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, :WINDOW]       # [T, WINDOW]
    lo, hi = int(sample_rate / F0_RANGE_HZ[1]), int(sample_rate / F0_RANGE_HZ[0])
    lag = lo + autocorr[:, lo:hi].argmax(axis=1)
    strength = autocorr[np.arange(frames), lag] / (autocorr[:, 0] + 1e-12)
    voiced = speech & (strength > 0.3) & (low_ratio > 0.3)
    pitch = np.zeros(frames)
    if voiced.any():
        f0 = sample_rate / lag
        pitch[voiced] = np.log2(f0[voiced] / np.median(f0[voiced]))
    pitch = np.clip(pitch, -1.0, 1.0)

    smooth = np.convolve(envelope, np.ones(3) / 3, mode="same")
    stresses = _local_peaks(smooth, radius=4, threshold=0.45)
    stress_strength = np.clip(smooth[stresses] * (1.0 + 0.5 * np.maximum(pitch[stresses], 0)), 0, 1.5) / 1.5
    return AudioFeatures(envelope=envelope, speech=speech, low_ratio=low_ratio, high_ratio=high_ratio,
                         brightness=brightness, pitch=pitch, stresses=stresses, stress_strength=stress_strength)


# ------------------------------------------------------------------------------------------------
# Signal helpers
# ------------------------------------------------------------------------------------------------


def attack_release(target: np.ndarray, attack: float, release: float, initial: float = 0.0) -> np.ndarray:
    """One-pole follower: moves toward rising targets with `attack`, falling ones with `release`."""
    out = np.zeros_like(target, dtype=np.float64)
    value = initial
    for t, x in enumerate(target):
        value += (attack if x > value else release) * (x - value)
        out[t] = value
    return out


def smooth_noise(rng: np.random.Generator, frames: int, fps: int, hz: float) -> np.ndarray:
    """Unit-variance noise with energy below about `hz`."""
    alpha = 1.0 - np.exp(-2.0 * np.pi * hz / fps)
    warmup = int(3 * fps / max(hz, 1e-3))
    x = rng.normal(size=frames + warmup)
    for _ in range(2):
        x = attack_release(x, alpha, alpha)
    x = x[warmup:]
    return (x - x.mean()) / (x.std() + 1e-9)


def impulses(frames: int, at: np.ndarray, weights: np.ndarray, kernel: np.ndarray, offset: int) -> np.ndarray:
    """Sum of `kernel` placed at frames `at` (kernel index `offset` lands on the frame), scaled by weights."""
    out = np.zeros(frames + 2 * len(kernel))
    for frame, weight in zip(at, weights):
        start = frame - offset + len(kernel)
        out[start:start + len(kernel)] += weight * kernel
    return out[len(kernel):len(kernel) + frames]


# ------------------------------------------------------------------------------------------------
# Motion
# ------------------------------------------------------------------------------------------------


@dataclass
class ArmMotion:
    """Intent of one arm per frame."""

    raise_: np.ndarray      # [T] 0 = rest pose, 1 = speaking pose (hands up in front)
    beat: np.ndarray        # [T] beat-gesture stroke (down when positive)
    wave: np.ndarray        # [T] 0..1 blend into a raised waving hand
    wave_angle: np.ndarray  # [T] radians, the waving oscillation
    hand_open: np.ndarray   # [T] 0 = relaxed curl, 1 = open palm
    drift: np.ndarray       # [T, 2] idle drift in head units


@dataclass
class Motion:
    """Per-frame motion of one clip."""

    mouth_open: np.ndarray   # [T] 0..1
    mouth_width: np.ndarray  # [T] -1 (rounded) .. 1 (spread)
    smile: np.ndarray        # [T] 0..1
    eyes_open: np.ndarray    # [T] 0..1 (blinks)
    gaze: np.ndarray         # [T, 2] -1..1
    brow_raise: np.ndarray   # [T] 0..1
    head: np.ndarray         # [T, 3] yaw, pitch (nod down > 0), roll in radians
    body_shift: np.ndarray   # [T] sideways weight shift in head units
    lean: np.ndarray         # [T] forward lean 0..1
    breath: np.ndarray       # [T] -1..1
    right_arm: ArmMotion
    left_arm: ArmMotion
    rest_pose: str           # "sides" (arms down) or "clasped" (hands together in front)


def _blinks(rng: np.random.Generator, frames: int, fps: int, speech: np.ndarray) -> np.ndarray:
    """Eye openness with blinks every few seconds (more likely at pause starts)."""
    profile = np.array([0.5, 0.1, 0.0, 0.2, 0.6, 0.9])
    openness = np.ones(frames)
    pause_starts = np.flatnonzero(speech[:-1] & ~speech[1:]) + 1
    t = int(rng.uniform(0.3, 2.5) * fps)
    times = [p for p in pause_starts if rng.random() < 0.4]
    while t < frames:
        times.append(t)
        t += int(rng.uniform(1.8, 5.5) * fps)
    for start in times:
        end = min(frames, start + len(profile))
        openness[start:end] = np.minimum(openness[start:end], profile[:end - start])
    return openness


def _arm(rng: np.random.Generator, frames: int, fps: int, speaking_pose: np.ndarray, beats: np.ndarray,
         wave_frames: int, style: Style) -> ArmMotion:
    """One arm's intent from the shared speaking curve and this arm's beats."""
    t = np.arange(frames) / fps
    wave = np.zeros(frames)
    if wave_frames:
        wave[:wave_frames] = 1.0
        wave = attack_release(wave, 0.25, 0.12, initial=1.0)
    wave_angle = 0.45 * np.sin(2 * np.pi * rng.uniform(2.0, 3.0) * t)
    hand_open = np.clip(0.25 + 0.5 * speaking_pose + 0.8 * np.abs(beats) + wave, 0, 1)
    drift = np.stack([smooth_noise(rng, frames, fps, 0.3), smooth_noise(rng, frames, fps, 0.3)], axis=1)
    return ArmMotion(raise_=speaking_pose, beat=beats, wave=wave, wave_angle=wave_angle, hand_open=hand_open,
                     drift=drift * 0.04 * (0.5 + style.gesture_amplitude))


def motion_from_audio(rng: np.random.Generator, audio: np.ndarray, sample_rate: int, fps: int, style: Style,
                      mouth_gain: float = 1.0) -> Motion:
    """All per-frame motion of a clip, driven by its audio and its style."""
    f = audio_features(audio, sample_rate, fps)
    frames = len(f.envelope)
    t = np.arange(frames) / fps
    speech = f.speech.astype(np.float64)

    # mouth: energy and spectral shape with attack/release, shut in silence
    open_target = speech * np.clip(f.envelope, 0, 1) ** 0.7 * (1.0 - 0.6 * f.high_ratio)
    open_target *= 0.75 + 0.35 * f.low_ratio
    mouth_open = np.clip(attack_release(np.clip(open_target * mouth_gain, 0, 1), 0.7, 0.4), 0, 1)
    mouth_width = attack_release(speech * (2.0 * f.brightness - 1.0), 0.5, 0.3)
    smile_base = 0.6 if style.smiles else 0.1
    smile = np.clip(smile_base + 0.15 * smooth_noise(rng, frames, fps, 0.2), 0, 1)

    # eyes and brows
    eyes_open = _blinks(rng, frames, fps, f.speech)
    stress_kernel = np.exp(-0.5 * ((np.arange(15) - 4) / 2.5) ** 2)
    brow_raise = np.clip(impulses(frames, f.stresses, f.stress_strength * np.maximum(f.pitch[f.stresses] + 0.3, 0),
                                  stress_kernel, 4), 0, 1)

    # head: nods on stressed syllables, pitch follows intonation, sway grows with loudness
    nod_weights = (rng.random(len(f.stresses)) < style.nod_rate) * f.stress_strength
    nod_kernel = np.sin(np.linspace(0, np.pi, 12)) * np.exp(-np.linspace(0, 2, 12))
    nods = impulses(frames, f.stresses, nod_weights, nod_kernel, 2) * rng.uniform(0.25, 0.35)
    loudness = attack_release(np.clip(f.envelope, 0, 1), 0.2, 0.05)
    intonation = attack_release(f.pitch, 0.2, 0.2)
    pitch = nods + style.head_gain * (0.03 * smooth_noise(rng, frames, fps, 0.25) - 0.12 * intonation)
    roll = (0.03 + 0.05 * loudness) * style.head_gain * smooth_noise(rng, frames, fps, 0.4)
    yaw = 0.08 * style.head_gain * smooth_noise(rng, frames, fps, 0.25)
    if style.looks_around:
        steps = np.repeat(rng.uniform(-0.4, 0.4, frames // fps + 2), fps)[:frames]
        yaw = yaw + attack_release(steps, 0.12, 0.12)
    gaze = np.stack([np.clip(-yaw * 1.5 + 0.2 * smooth_noise(rng, frames, fps, 0.5), -1, 1),
                     np.clip(0.15 * smooth_noise(rng, frames, fps, 0.3), -1, 1)], axis=1)
    head = np.stack([yaw, pitch, roll], axis=1)

    # body: breathing (deeper in pauses), weight shift, lean into loud speech
    breath = np.sin(2 * np.pi * t / rng.uniform(3.2, 5.0) + rng.uniform(0, 2 * np.pi)) * (1.0 - 0.5 * speech)
    body_shift = 0.06 * smooth_noise(rng, frames, fps, 0.12)
    lean = 0.5 * loudness * style.gesture_amplitude

    # arms: hands come up while talking; beats on stressed syllables; optional wave at the start
    speaking_pose = attack_release(speech, 0.12, 0.03) * (0.35 + 0.65 * style.gesture_amplitude)
    beat_kernel = np.exp(-0.5 * ((np.arange(16) - 6) / 2.2) ** 2) - 0.35 * np.exp(-0.5 * ((np.arange(16) - 2) / 1.5) ** 2)
    gestured = rng.random(len(f.stresses)) < style.gesture_rate
    right_share = {"both": 0.5, "right": 0.85, "left": 0.15}[style.hands]
    to_right = rng.random(len(f.stresses)) < right_share
    both = rng.random(len(f.stresses)) < (0.35 if style.hands == "both" else 0.1)
    weights = gestured * f.stress_strength * style.gesture_amplitude
    right_beats = impulses(frames, f.stresses, weights * (to_right | both), beat_kernel, 6)
    left_beats = impulses(frames, f.stresses, weights * (~to_right | both), beat_kernel, 6)
    wave_frames = int(rng.uniform(1.2, 2.0) * fps) if style.wave_at_start else 0
    wave_right = style.hands != "left"
    right_pose = speaking_pose * (1.0 if style.hands != "left" else 0.6)
    left_pose = speaking_pose * (1.0 if style.hands != "right" else 0.6)
    return Motion(
        mouth_open=mouth_open, mouth_width=np.clip(mouth_width, -1, 1), smile=smile, eyes_open=eyes_open,
        gaze=gaze, brow_raise=brow_raise, head=head, body_shift=body_shift, lean=lean, breath=breath,
        right_arm=_arm(rng, frames, fps, right_pose, right_beats, wave_frames if wave_right else 0, style),
        left_arm=_arm(rng, frames, fps, left_pose, left_beats, 0 if wave_right else wave_frames, style),
        rest_pose=str(rng.choice(["sides", "clasped"])),
    )

"""The rig: identity proportions + one frame of motion -> keypoints and shapes in world units.

World units are head units (a head is about one unit tall), x to the right of the screen, y down,
origin at the base of the neck at rest. The person's right side is on the screen's left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from model.data import keypoints as kp
from model.data.studio.identity import Identity
from model.data.studio.motion import ArmMotion, Motion

RIGHT, LEFT = -1.0, 1.0     # screen-x sign of the person's right / left side

# ------------------------------------------------------------------------------------------------
# Small geometry helpers
# ------------------------------------------------------------------------------------------------


def rotate(points: np.ndarray, angle: float) -> np.ndarray:
    """Rotate [..., 2] points about the origin (screen coordinates, y down)."""
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def two_bone_ik(shoulder: np.ndarray, target: np.ndarray, upper: float, lower: float,
                side: float) -> tuple[np.ndarray, np.ndarray]:
    """Elbow and wrist reaching toward target, elbow bent down and away from the body."""
    offset = target - shoulder
    reach = float(np.clip(np.linalg.norm(offset), abs(upper - lower) + 1e-3, upper + lower - 1e-3))
    direction = offset / (np.linalg.norm(offset) + 1e-9)
    wrist = shoulder + direction * reach
    cos_a = np.clip((upper ** 2 + reach ** 2 - lower ** 2) / (2 * upper * reach), -1.0, 1.0)
    angle = np.arccos(cos_a)
    candidates = [shoulder + upper * rotate(direction, a) for a in (angle, -angle)]
    elbow = max(candidates, key=lambda e: e[1] + 0.5 * side * e[0])
    return elbow, wrist


# ------------------------------------------------------------------------------------------------
# Pose of one frame
# ------------------------------------------------------------------------------------------------


@dataclass
class FacePose:
    """Dense face shapes (world units) for drawing."""

    center: np.ndarray
    roll: float
    outline: np.ndarray          # [N, 2] head silhouette (jaw keypoints lie on it)
    skull_scale: np.ndarray      # (half width, half height) of the skull
    ears: np.ndarray             # [2, 2] right, left
    eyes: list[np.ndarray]       # 2 x [M, 2] eye contours
    eye_open: float
    irises: np.ndarray           # [2, 2]
    iris_radius: float
    brows: list[np.ndarray]      # 2 x [3, 2]
    nose: np.ndarray             # [3, 2]
    outer_lip: np.ndarray        # [24, 2]
    inner_lip: np.ndarray        # [16, 2]
    mouth_open: float
    local_to_world: Callable[[np.ndarray], np.ndarray] = field(repr=False)  # maps head-local [N,3] (u, v, depth) -> world [N,2]


@dataclass
class Pose:
    """Keypoints and drawing shapes of one frame."""

    keypoints: np.ndarray        # [K, 2] world units
    face: FacePose
    shoulders: np.ndarray        # [2, 2] right, left
    hips: np.ndarray             # [2, 2]
    waist_y: float
    hands: list[np.ndarray]      # 2 x [21, 2] right, left


class Rig:
    """Turns per-frame motion into poses for one identity."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.shoulder_y = 0.15
        self.hip_y = identity.torso_length
        self.head_pivot_y = -identity.neck_length
        self.upper_arm = 0.53 * identity.arm_length
        self.forearm = 0.47 * identity.arm_length
        self.hand_scale = 0.95 + 0.1 * (identity.build - 1.0)

    # ---- extents used by the camera -------------------------------------------------------------

    def head_top_y(self) -> float:
        """Top of the head (with hair) at rest."""
        return self.head_pivot_y - 2 * self.identity.face_half_height - 0.12

    def chin_y(self) -> float:
        """Chin at rest."""
        return self.head_pivot_y + 0.05

    def ankle_y(self) -> float:
        """Ankles."""
        return self.hip_y + self.identity.leg_length

    # ---- face ----------------------------------------------------------------------------------

    def _jaw_outline(self, angles: np.ndarray, jaw_drop: float) -> np.ndarray:
        """Head-local silhouette points at screen angles (0 = screen right, pi/2 = chin)."""
        ident = self.identity
        fw, fh = ident.face_half_width, ident.face_half_height
        lower = np.sin(angles) > 0
        power = np.where(lower, 2.0 + 1.6 * ident.jaw_squareness, 2.1)
        c, s = np.cos(angles), np.sin(angles)
        u = fw * np.sign(c) * np.abs(c) ** (2.0 / power)
        v = np.where(lower, fh, fh * 1.05) * np.sign(s) * np.abs(s) ** (2.0 / power)
        v = v + np.where(lower, jaw_drop * np.clip(s, 0, 1) ** 2, 0.0)
        return np.stack([u, v], axis=1)

    def face(self, m: Motion, t: int, neck: np.ndarray) -> tuple[FacePose, dict[str, np.ndarray]]:
        """Face shapes and face keypoints (name -> [n, 2] world points)."""
        ident = self.identity
        yaw, pitch, roll = (float(a) for a in m.head[t])
        fw, fh = ident.face_half_width, ident.face_half_height
        pivot = neck + np.array([0.0, self.head_pivot_y])
        center = pivot + rotate(np.array([0.0, -fh * 0.95]), roll) + np.array([0.0, 0.06 * pitch])
        cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)

        def to_world(local: np.ndarray) -> np.ndarray:
            u, v, z = local[:, 0], local[:, 1], local[:, 2]
            u2 = u * cy + z * sy
            z2 = -u * sy + z * cy
            v2 = v * cp + z2 * sp
            return rotate(np.stack([u2, v2], axis=1), roll) + center

        mouth_open = float(m.mouth_open[t])
        jaw_drop = 0.07 * mouth_open
        angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        outline = rotate(self._jaw_outline(angles, jaw_drop), roll) + center
        jaw_angles = np.pi - np.arange(9) * np.pi / 8
        jaw = rotate(self._jaw_outline(jaw_angles, jaw_drop), roll) + center

        # eyes: dense contours, keypoints = corners, top, bottom
        ew, eh = 0.07 * ident.eye_size, 0.045 * ident.eye_size
        eye_open = float(m.eyes_open[t])
        gaze = m.gaze[t]
        eyes, eye_keys, irises = [], [], []
        for side in (RIGHT, LEFT):
            uc, vc = side * ident.eye_spacing * 1.0, -0.06
            a = np.linspace(0, np.pi, 9)
            bottom_v = vc + 0.7 * eh
            top = np.stack([uc + side * ew * np.cos(a), bottom_v - (1.7 * eh * eye_open + 0.004) * np.sin(a)], 1)
            bottom = np.stack([uc - side * ew * np.cos(a), bottom_v + 0.3 * eh * np.sin(a)], 1)[1:-1]
            contour = np.concatenate([top, bottom])               # starts at the outer corner
            local = np.concatenate([contour, np.full((len(contour), 1), 0.3)], axis=1)
            world = to_world(local)
            eyes.append(world)
            order = [0, 4, 8, 12] if side == RIGHT else [8, 4, 0, 12]   # see keypoints.FACE_PARTS
            eye_keys.append(world[order])
            iris = np.array([[uc + 0.35 * ew * gaze[0], vc + 0.2 * eh * gaze[1], 0.31]])
            irises.append(to_world(iris)[0])
        iris_radius = 0.62 * eh

        brows = []
        raise_ = 0.035 * float(m.brow_raise[t])
        for side in (RIGHT, LEFT):
            uc = side * ident.eye_spacing
            local = np.array([[uc + side * 0.085, -0.15 - raise_, 0.3], [uc, -0.185 - raise_, 0.32],
                              [uc - side * 0.07, -0.165 - raise_ * 1.3, 0.32]])
            brows.append(to_world(local))

        nose_local = np.array([[0.0, -0.04, 0.35], [0.0, -0.04 + ident.nose_length, 0.45],
                               [0.0, -0.01 + ident.nose_length, 0.38]])
        nose = to_world(nose_local)

        # mouth: outer contour (24 points, keypoints every other) and inner contour (16, every other)
        mv = ident.nose_length + 0.08 + (0.5 - 0.25 - ident.nose_length) * 0.4
        width = ident.mouth_width * (1.0 + 0.18 * float(m.mouth_width[t]) - 0.12 * mouth_open)
        gap = 0.11 * mouth_open
        smile = 0.02 * float(m.smile[t])
        lip = ident.lip_thickness
        a = np.linspace(0, np.pi, 13)
        xs = -np.cos(a) * width
        bulge = np.sin(a)
        corner_lift = smile * np.cos(a) ** 2
        upper = np.stack([xs, mv - 0.3 * gap - (0.3 * gap + lip) * bulge ** 0.8 - corner_lift], 1)
        upper[:, 1] += 0.25 * lip * np.exp(-((a - np.pi / 2) / 0.25) ** 2)      # cupid's bow dip
        lower = np.stack([xs[::-1], mv + 0.7 * gap + (0.7 * gap * 0.4 + lip * 1.1) * bulge - corner_lift[::-1]], 1)
        outer = np.concatenate([upper, lower[1:-1]])                           # 24 points
        inner_w = width * 0.92
        xi = -np.cos(a[::2][:7]) * inner_w
        bi = np.sin(a[::2][:7])
        inner_upper = np.stack([xi, mv - 0.3 * gap * bi - smile * np.cos(a[::2][:7]) ** 2], 1)
        inner_lower = np.stack([xi[::-1], mv + 0.7 * gap * bi - smile * np.cos(a[::2][:7]) ** 2], 1)[1:-1]
        inner = np.concatenate([inner_upper, inner_lower])                     # 12 points
        outer_w = to_world(np.concatenate([outer, np.full((len(outer), 1), 0.35)], 1))
        inner_w_pts = to_world(np.concatenate([inner, np.full((len(inner), 1), 0.35)], 1))

        ears = rotate(np.array([[RIGHT * fw * 1.02, -0.02], [LEFT * fw * 1.02, -0.02]]), roll) + center
        face_keys = {
            "jaw": jaw, "right_brow": brows[0], "left_brow": brows[1], "right_eye": eye_keys[0],
            "left_eye": eye_keys[1], "nose": nose, "outer_lip": outer_w[::2],
            "inner_lip": inner_w_pts[[0, 1, 3, 5, 6, 7, 9, 11]],
        }
        pose = FacePose(center=center, roll=roll, outline=outline, skull_scale=np.array([fw, fh]), ears=ears,
                        eyes=eyes, eye_open=eye_open, irises=np.array(irises), iris_radius=iris_radius,
                        brows=brows, nose=nose, outer_lip=outer_w, inner_lip=inner_w_pts,
                        mouth_open=mouth_open, local_to_world=to_world)
        return pose, face_keys

    # ---- hands ---------------------------------------------------------------------------------

    def hand(self, wrist: np.ndarray, direction: np.ndarray, side: float, openness: float) -> np.ndarray:
        """21 hand keypoints from the wrist, the finger direction and how open the hand is."""
        d = direction / (np.linalg.norm(direction) + 1e-9)
        n = np.array([-d[1], d[0]]) if side == RIGHT else np.array([d[1], -d[0]])   # toward the thumb
        scale = self.hand_scale
        curl = 1.0 - openness
        spread = 0.12 + 0.22 * openness
        points = [wrist]
        # thumb: CMC, MCP, IP, tip
        base = wrist + scale * (0.08 * d + 0.08 * n)
        t_dir = rotate(d, -0.75 * (1 if side == RIGHT else -1) * (1.0 - 0.5 * curl))
        t_dir = 0.5 * t_dir + 0.5 * (d * 0.6 + n * 0.8)
        t_dir /= np.linalg.norm(t_dir)
        points.append(base)
        for length in (0.13, 0.11, 0.09):
            t_dir = t_dir * (1 - 0.25 * curl) + d * 0.25 * curl - n * 0.2 * curl
            t_dir /= np.linalg.norm(t_dir)
            points.append(points[-1] + scale * length * t_dir)
        # fingers: MCP, PIP, DIP, tip
        offsets = (0.1, 0.033, -0.033, -0.1)
        lengths = ((0.17, 0.11, 0.09), (0.19, 0.12, 0.09), (0.18, 0.11, 0.085), (0.14, 0.09, 0.075))
        for offset, segs in zip(offsets, lengths):
            mcp = wrist + scale * (0.36 * d + offset * n - 0.02 * abs(offset) * d / 0.1)
            f_dir = d + n * offset / 0.1 * spread * 0.5
            f_dir /= np.linalg.norm(f_dir)
            points.append(mcp)
            for length in segs:
                f_dir = f_dir - n * 0.12 * curl
                f_dir /= np.linalg.norm(f_dir)
                points.append(points[-1] + scale * length * (1.0 - 0.6 * curl) * f_dir)
        return np.array(points)

    # ---- arms ----------------------------------------------------------------------------------

    def _arm(self, arm: ArmMotion, t: int, side: float, shoulder: np.ndarray, rest: str,
             offset: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Elbow, wrist and hand keypoints of one arm."""
        ident = self.identity
        if rest == "sides":
            rest_target = shoulder + np.array([side * 0.2, ident.arm_length * 0.97])
        else:
            rest_target = offset + np.array([side * 0.14, self.hip_y * 0.86])
        speak_target = offset + np.array([side * 0.7 * ident.shoulder_width * ident.build, self.hip_y * 0.45])
        r = float(arm.raise_[t])
        target = (1 - r) * rest_target + r * speak_target
        beat = float(arm.beat[t])
        target = target + np.array([side * 0.12 * beat, 0.45 * beat]) + arm.drift[t]
        wave_target = shoulder + np.array([side * 0.7, -1.25])
        w = float(arm.wave[t])
        target = (1 - w) * target + w * wave_target
        # a raised forearm points toward the camera: shorter on screen
        forearm = self.forearm * (1.0 - 0.4 * r * (1.0 - w))
        elbow, wrist = two_bone_ik(shoulder, target, self.upper_arm, forearm, side)
        forearm_dir = (wrist - elbow) / (np.linalg.norm(wrist - elbow) + 1e-9)
        up = rotate(np.array([0.0, -1.0]), side * float(arm.wave_angle[t]))
        lifted = forearm_dir + np.array([side * 0.3 * r, -0.8 * r])
        direction = (1 - w) * lifted / (np.linalg.norm(lifted) + 1e-9) + w * up
        hand = self.hand(wrist, direction, side, float(arm.hand_open[t]))
        return elbow, wrist, hand

    # ---- whole body ----------------------------------------------------------------------------

    def pose(self, m: Motion, t: int) -> Pose:
        """Pose of frame t."""
        ident = self.identity
        shift = float(m.body_shift[t])
        breath = 0.02 * float(m.breath[t])
        offset = np.array([shift, 0.0])
        neck = offset + np.array([0.0, self.shoulder_y - breath])
        sw = ident.shoulder_width * ident.build
        shoulders = np.array([[RIGHT * sw, self.shoulder_y - breath], [LEFT * sw, self.shoulder_y - breath]]) + offset
        hip_offset = np.array([0.4 * shift, 0.0])
        hw = 0.48 * ident.build
        hips = np.array([[RIGHT * hw, self.hip_y], [LEFT * hw, self.hip_y]]) + hip_offset
        knees = hips + np.array([[0.03, ident.leg_length * 0.5], [-0.03, ident.leg_length * 0.5]])
        ankles = hips + np.array([[0.05, ident.leg_length], [-0.05, ident.leg_length]])

        face, face_keys = self.face(m, t, offset)
        r_elbow, r_wrist, r_hand = self._arm(m.right_arm, t, RIGHT, shoulders[0], m.rest_pose, offset)
        l_elbow, l_wrist, l_hand = self._arm(m.left_arm, t, LEFT, shoulders[1], m.rest_pose, offset)

        keys = np.zeros((kp.NUM_KEYPOINTS, 2))
        eye_centres = [face.eyes[0].mean(axis=0), face.eyes[1].mean(axis=0)]
        body = {
            "nose": face.nose[1], "neck": shoulders.mean(axis=0),
            "right_shoulder": shoulders[0], "right_elbow": r_elbow, "right_wrist": r_wrist,
            "left_shoulder": shoulders[1], "left_elbow": l_elbow, "left_wrist": l_wrist,
            "right_hip": hips[0], "right_knee": knees[0], "right_ankle": ankles[0],
            "left_hip": hips[1], "left_knee": knees[1], "left_ankle": ankles[1],
            "right_eye": eye_centres[0], "left_eye": eye_centres[1],
            "right_ear": face.ears[0], "left_ear": face.ears[1],
        }
        for i, name in enumerate(kp.BODY_NAMES):
            keys[kp.BODY.start + i] = body[name]
        keys[kp.LEFT_HAND] = l_hand
        keys[kp.RIGHT_HAND] = r_hand
        for part, _ in kp.FACE_PARTS:
            keys[kp.face_part(part)] = face_keys[part]
        return Pose(keypoints=keys, face=face, shoulders=shoulders, hips=hips,
                    waist_y=0.62 * self.hip_y, hands=[r_hand, l_hand])

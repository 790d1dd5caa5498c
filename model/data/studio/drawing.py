"""Drawing: a pose of an identity -> an anti-aliased RGB frame (PIL, rendered larger then downsampled)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from model.data import keypoints as kp
from model.data.studio.camera import Camera
from model.data.studio.identity import RGB, Identity, shade
from model.data.studio.rig import LEFT, RIGHT, Pose, rotate

MOUTH_INSIDE: RGB = (70, 22, 28)
TEETH: RGB = (238, 236, 228)
SCLERA: RGB = (246, 244, 240)
LASH: RGB = (35, 25, 25)
GOLD: RGB = (225, 185, 60)

# ------------------------------------------------------------------------------------------------
# Geometry helpers
# ------------------------------------------------------------------------------------------------


def clip_band(polygon: np.ndarray, y0: float, y1: float) -> np.ndarray:
    """Part of a polygon between two horizontal lines (Sutherland-Hodgman, two half-planes)."""
    def clip(points: np.ndarray, limit: float, keep_below: bool) -> np.ndarray:
        out = []
        n = len(points)
        for i in range(n):
            a, b = points[i], points[(i + 1) % n]
            inside_a = (a[1] >= limit) if keep_below else (a[1] <= limit)
            inside_b = (b[1] >= limit) if keep_below else (b[1] <= limit)
            if inside_a:
                out.append(a)
            if inside_a != inside_b:
                t = (limit - a[1]) / (b[1] - a[1])
                out.append(a + t * (b - a))
        return np.array(out) if out else np.zeros((0, 2))

    band = clip(polygon, y0, True)
    return clip(band, y1, False) if len(band) else band


def ellipse(center: np.ndarray, rx: float, ry: float, angle: float = 0.0, n: int = 24) -> np.ndarray:
    """Polygon [n, 2] of a rotated ellipse."""
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return rotate(np.stack([rx * np.cos(a), ry * np.sin(a)], axis=1), angle) + center


# ------------------------------------------------------------------------------------------------
# Backgrounds
# ------------------------------------------------------------------------------------------------


def background(identity: Identity, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """The static backdrop of a clip at drawing resolution."""
    c1 = np.array(identity.background_colour, dtype=np.float32)
    c2 = np.array(identity.background_colour2, dtype=np.float32)
    kind = identity.background
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    period = max(width, height) / rng.uniform(6, 14)
    if kind == "gradient":
        w = (yy / height)[..., None]
        pixels = c1 * (1 - w) + (0.5 * c1 + 0.5 * c2) * w
    elif kind == "vertical stripes":
        pixels = np.where(((xx // (period / 2)) % 2 == 0)[..., None], c1, 0.7 * c1 + 0.3 * c2)
    elif kind == "diagonal stripes":
        pixels = np.where((((xx + yy) // (period / 2)) % 2 == 0)[..., None], c1, 0.6 * c1 + 0.4 * c2)
    elif kind == "checkered":
        pixels = np.where((((xx // period) + (yy // period)) % 2 == 0)[..., None], c1, 0.7 * c1 + 0.3 * c2)
    elif kind == "dotted":
        fx, fy = (xx % period) / period - 0.5, (yy % period) / period - 0.5
        pixels = np.where((fx ** 2 + fy ** 2 < 0.04)[..., None], 0.5 * c1 + 0.5 * c2, c1)
    elif kind == "room":
        floor = height * rng.uniform(0.72, 0.85)
        pixels = np.where((yy < floor)[..., None], c1, 0.6 * c2)
        x0, y0 = rng.uniform(0.05, 0.6) * width, rng.uniform(0.08, 0.3) * height
        frame_w, frame_h = rng.uniform(0.15, 0.3) * width, rng.uniform(0.12, 0.25) * height
        inside = (xx > x0) & (xx < x0 + frame_w) & (yy > y0) & (yy < y0 + frame_h)
        pixels = np.where(inside[..., None], c2, pixels)
    else:
        pixels = np.broadcast_to(c1, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


# ------------------------------------------------------------------------------------------------
# Painter
# ------------------------------------------------------------------------------------------------


class Painter:
    """Draws frames of one identity through one camera."""

    def __init__(self, identity: Identity, camera: Camera, supersample: int, rng: np.random.Generator) -> None:
        self.identity = identity
        self.camera = camera
        self.factor = supersample
        self.size = (camera.width * supersample, camera.height * supersample)
        self.backdrop = background(identity, *self.size, rng)
        self.px_per_unit = camera.scale * supersample

    # ---- primitives ----------------------------------------------------------------------------

    def _xy(self, points: np.ndarray) -> list[tuple[float, float]]:
        pixels = self.camera.to_pixels(np.asarray(points, dtype=np.float64).reshape(-1, 2), self.factor)
        return [tuple(p) for p in pixels.tolist()]

    def _w(self, world: float) -> int:
        return max(1, int(round(world * self.px_per_unit)))

    def polygon(self, d: ImageDraw.ImageDraw, points: np.ndarray, colour: RGB) -> None:
        if len(points) >= 3:
            d.polygon(self._xy(points), fill=colour)

    def limb(self, d: ImageDraw.ImageDraw, points: np.ndarray, colour: RGB, width: float) -> None:
        """Thick polyline with round joints and caps."""
        xy = self._xy(points)
        w = self._w(width)
        d.line(xy, fill=colour, width=w, joint="curve")
        r = w / 2
        for x, y in (xy[0], xy[-1]):
            d.ellipse((x - r, y - r, x + r, y + r), fill=colour)

    def dot(self, d: ImageDraw.ImageDraw, center: np.ndarray, radius: float, colour: RGB) -> None:
        (x, y), = self._xy(center)
        r = radius * self.px_per_unit
        d.ellipse((x - r, y - r, x + r, y + r), fill=colour)

    # ---- body parts ----------------------------------------------------------------------------

    def _torso_polygon(self, pose: Pose) -> np.ndarray:
        ident = self.identity
        (r_sh, l_sh), (r_hip, l_hip) = pose.shoulders, pose.hips
        neck = pose.shoulders.mean(axis=0)
        waist = 0.8 * ident.shoulder_width * ident.build
        return np.array([
            r_sh + [-0.12, 0.22], r_sh + [-0.02, -0.06], neck + [-0.3, -0.14], neck + [0.3, -0.14],
            l_sh + [0.02, -0.06], l_sh + [0.12, 0.22],
            [neck[0] + waist, pose.waist_y], l_hip + [0.08, 0.05], r_hip + [-0.08, 0.05],
            [neck[0] - waist, pose.waist_y],
        ])

    def _legs(self, d: ImageDraw.ImageDraw, pose: Pose) -> None:
        ident = self.identity
        k = pose.keypoints
        width = 0.42 * ident.build
        skin = shade(ident.skin, 0.95)
        for hip, knee, ankle in (("right_hip", "right_knee", "right_ankle"), ("left_hip", "left_knee", "left_ankle")):
            h, kn, a = (k[kp.index(f"body.{n}")] for n in (hip, knee, ankle))
            if ident.bottom == "trousers":
                self.limb(d, np.array([h, kn, a]), ident.bottom_colour, width)
            else:
                self.limb(d, np.array([h, kn, a]), skin, width * 0.8)
                if ident.bottom == "shorts":
                    self.limb(d, np.array([h, h + 0.55 * (kn - h)]), ident.bottom_colour, width * 1.05)
            self.polygon(d, ellipse(a + [0.0, 0.1], 0.2, 0.1), ident.shoe_colour)
        if ident.bottom == "skirt":
            (r_hip, l_hip) = pose.hips
            knee_y = k[kp.index("body.right_knee"), 1]
            self.polygon(d, np.array([r_hip + [-0.1, -0.05], l_hip + [0.1, -0.05], [l_hip[0] + 0.45, knee_y + 0.1],
                                      [r_hip[0] - 0.45, knee_y + 0.1]]), ident.bottom_colour)

    def _torso(self, d: ImageDraw.ImageDraw, pose: Pose) -> None:
        ident = self.identity
        neck = pose.shoulders.mean(axis=0)
        head_base = pose.face.center + rotate(np.array([0.0, ident.face_half_height * 0.7]), pose.face.roll)
        self.limb(d, np.array([head_base, neck + [0, -0.05]]), shade(ident.skin, 0.9), 0.34 * ident.build)
        torso = self._torso_polygon(pose)
        self.polygon(d, torso, ident.top_colour)
        top_y, bottom_y = torso[:, 1].min(), torso[:, 1].max()
        if ident.pattern == "stripes":
            period = 0.22
            y = top_y + period / 2
            while y < bottom_y:
                self.polygon(d, clip_band(torso, y, y + period / 2), ident.pattern_colour)
                y += period
        elif ident.pattern == "two-tone":
            self.polygon(d, clip_band(torso, pose.waist_y, bottom_y + 1), ident.pattern_colour)
        if ident.top == "jacket":
            inner = np.array([neck + [-0.22, -0.12], neck + [0.22, -0.12], [neck[0] + 0.25, bottom_y],
                              [neck[0] - 0.25, bottom_y]])
            self.polygon(d, inner, ident.pattern_colour if ident.pattern != "plain" else (235, 235, 235))
        v_depth = 0.35 if ident.top in ("t-shirt", "tank top") else 0.18
        self.polygon(d, np.array([neck + [-0.2, -0.15], neck + [0.2, -0.15], neck + [0.0, v_depth]]),
                     shade(ident.skin, 0.9))
        if ident.necklace:
            for a in np.linspace(0.15, np.pi - 0.15, 11):
                self.dot(d, neck + [0.24 * np.cos(a), -0.12 + 0.3 * np.sin(a)], 0.025, GOLD)

    def _arm(self, d: ImageDraw.ImageDraw, pose: Pose, side: float) -> None:
        ident = self.identity
        prefix = "right" if side == RIGHT else "left"
        k = pose.keypoints
        s, e, w = (k[kp.index(f"body.{prefix}_{j}")] for j in ("shoulder", "elbow", "wrist"))
        width = 0.27 * ident.build
        self.limb(d, np.array([s, e, w]), ident.skin, width * 0.85)
        if ident.top == "t-shirt":
            self.limb(d, np.array([s, s + 0.55 * (e - s)]), ident.top_colour, width * 1.1)
        elif ident.top != "tank top":
            self.limb(d, np.array([s, e, e + 0.88 * (w - e)]), ident.top_colour, width)
        self._hand(d, pose.hands[0 if side == RIGHT else 1])

    def _hand(self, d: ImageDraw.ImageDraw, hand: np.ndarray) -> None:
        ident = self.identity
        skin = ident.skin
        edge = shade(skin, 0.72)
        palm = np.array([hand[0], hand[1], hand[2], hand[5], hand[9], hand[13], hand[17]])
        centre = palm.mean(axis=0)
        self.polygon(d, centre + (palm - centre) * 1.12, edge)
        self.polygon(d, palm, skin)
        width = 0.075 * (0.9 + 0.2 * ident.build)
        for finger in range(5):
            chain = hand[[1 + 4 * finger + j for j in range(4)]] if finger else hand[[1, 2, 3, 4]]
            self.limb(d, chain, edge, width * 1.3)
            self.limb(d, chain, skin, width)

    def _hair_cap(self, pose: Pose, thick: float, hairline: float) -> np.ndarray:
        """Head-local hair cap polygon in world units."""
        fw, fh = pose.face.skull_scale
        a = np.linspace(np.pi + 0.05, 2 * np.pi - 0.05, 20)
        outer = np.stack([fw * (1 + thick) * np.cos(a), fh * 1.05 * (1 + thick) * np.sin(a)], axis=1)
        u = np.linspace(fw * 1.0, -fw * 1.0, 9)
        inner = np.stack([u, -0.02 - (hairline - 0.02) * np.sqrt(np.clip(1 - (u / fw) ** 2, 0, 1)) ** 0.5], axis=1)
        return rotate(np.concatenate([outer, inner]), pose.face.roll) + pose.face.center

    def _to_head(self, pose: Pose, local: np.ndarray) -> np.ndarray:
        return rotate(np.asarray(local, dtype=np.float64), pose.face.roll) + pose.face.center

    def _hair_back(self, d: ImageDraw.ImageDraw, pose: Pose) -> None:
        ident = self.identity
        fw, fh = pose.face.skull_scale
        back = shade(ident.hair, 0.85)
        if ident.hair_style in ("long", "bob"):
            bottom = fh + (0.95 if ident.hair_style == "long" else 0.2)
            a = np.linspace(np.pi, 2 * np.pi, 16)
            top = np.stack([fw * 1.18 * np.cos(a), fh * 1.15 * np.sin(a)], axis=1)
            sides = np.array([[fw * 1.25, bottom], [-fw * 1.25, bottom]])
            self.polygon(d, self._to_head(pose, np.concatenate([top, sides])), back)
        elif ident.hair_style == "ponytail":
            self.polygon(d, self._to_head(pose, ellipse(np.array([fw * 1.05, -fh * 0.1]), 0.16, 0.42, 0.3)), back)
        elif ident.hair_style == "bun":
            self.polygon(d, self._to_head(pose, ellipse(np.array([0.0, -fh * 1.12]), 0.2, 0.17)), ident.hair)

    def _head(self, image: Image.Image, d: ImageDraw.ImageDraw, pose: Pose) -> None:
        ident = self.identity
        face = pose.face
        for ear in face.ears:
            self.polygon(d, ellipse(ear, 0.07, 0.12, face.roll), shade(ident.skin, 0.92))
        self.polygon(d, face.outline, ident.skin)
        if ident.facial_hair in ("beard", "stubble"):
            colour = ident.hair if ident.facial_hair == "beard" else \
                tuple(int(0.65 * s + 0.35 * h) for h, s in zip(ident.hair, ident.skin))
            beard = np.concatenate([face.outline[4:21], face.nose[2:3]])
            self.polygon(d, beard, colour)
        self._eyes(image, d, pose)
        for brow in face.brows:
            self.limb(d, brow, shade(ident.hair, 0.8) if ident.hair_style != "bald" else (60, 45, 40),
                      ident.brow_thickness)
        self.limb(d, face.nose, shade(ident.skin, 0.78), 0.028)
        self._mouth(d, pose)
        if ident.facial_hair == "moustache":
            up = rotate(np.array([0.0, -1.0]), face.roll)
            upper = face.outer_lip[:13]
            self.polygon(d, np.concatenate([upper + 0.02 * up, (upper + 0.075 * up)[::-1]]), ident.hair)
        self._hair_front(d, pose)
        self._accessories(d, pose)

    def _eyes(self, image: Image.Image, d: ImageDraw.ImageDraw, pose: Pose) -> None:
        ident, face = self.identity, pose.face
        for contour, iris in zip(face.eyes, face.irises):
            if face.eye_open < 0.2:
                self.limb(d, contour[:9], LASH, 0.014)
                continue
            self.polygon(d, contour, SCLERA)
            xy = self._xy(contour)
            x0, y0 = (int(np.floor(min(p[i] for p in xy))) - 1 for i in (0, 1))
            x1, y1 = (int(np.ceil(max(p[i] for p in xy))) + 2 for i in (0, 1))
            if x1 - x0 < 3 or y1 - y0 < 3:
                continue
            eye_mask = Image.new("L", (x1 - x0, y1 - y0), 0)
            ImageDraw.Draw(eye_mask).polygon([(x - x0, y - y0) for x, y in xy], fill=255)
            iris_layer = Image.new("L", eye_mask.size, 0)
            (cx, cy), = self._xy(iris)
            r = face.iris_radius * self.px_per_unit
            ImageDraw.Draw(iris_layer).ellipse((cx - x0 - r, cy - y0 - r, cx - x0 + r, cy - y0 + r), fill=255)
            image.paste(ident.eye, (x0, y0), ImageChops.multiply(eye_mask, iris_layer))
            pupil = Image.new("L", eye_mask.size, 0)
            rp = r * 0.45
            ImageDraw.Draw(pupil).ellipse((cx - x0 - rp, cy - y0 - rp, cx - x0 + rp, cy - y0 + rp), fill=255)
            image.paste((15, 12, 12), (x0, y0), ImageChops.multiply(eye_mask, pupil))
            self.limb(d, contour[:9], LASH, 0.016)

    def _mouth(self, d: ImageDraw.ImageDraw, pose: Pose) -> None:
        ident = self.identity
        face = pose.face
        self.polygon(d, face.outer_lip, ident.lips)
        if face.mouth_open > 0.04:
            self.polygon(d, face.inner_lip, MOUTH_INSIDE)
            if face.mouth_open > 0.2:
                upper = face.inner_lip[:7]
                down = rotate(np.array([0.0, 1.0]), face.roll) * min(0.025, 0.04 * face.mouth_open)
                self.polygon(d, np.concatenate([upper[1:-1], (upper[1:-1] + down)[::-1]]), TEETH)
        else:
            self.limb(d, face.inner_lip[:7], shade(ident.lips, 0.6), 0.012)

    def _hair_front(self, d: ImageDraw.ImageDraw, pose: Pose) -> None:
        ident = self.identity
        style = ident.hair_style
        if ident.hat != "none":
            self._hat(d, pose)
            return
        if style == "bald":
            return
        if style == "buzz":
            colour = tuple(int(0.55 * h + 0.45 * s) for h, s in zip(ident.hair, ident.skin))
            self.polygon(d, self._hair_cap(pose, 0.02, 0.3), colour)
            return
        self.polygon(d, self._hair_cap(pose, 0.08, 0.24 if style != "bob" else 0.18), ident.hair)
        if style == "curly":
            fw, fh = pose.face.skull_scale
            for a in np.linspace(np.pi - 0.1, 2 * np.pi + 0.1, 11):
                centre = self._to_head(pose, np.array([[fw * 1.08 * np.cos(a), fh * 1.1 * np.sin(a)]]))[0]
                self.dot(d, centre, 0.11, ident.hair)

    def _hat(self, d: ImageDraw.ImageDraw, pose: Pose) -> None:
        ident = self.identity
        fw, fh = pose.face.skull_scale
        a = np.linspace(np.pi, 2 * np.pi, 20)
        dome = np.stack([fw * 1.1 * np.cos(a), -0.22 + (fh * 1.2) * np.sin(a)], axis=1)
        self.polygon(d, self._to_head(pose, dome), ident.hat_colour)
        if ident.hat == "beanie":
            band = np.array([[-fw * 1.12, -0.12], [fw * 1.12, -0.12], [fw * 1.12, -0.3], [-fw * 1.12, -0.3]])
            self.polygon(d, self._to_head(pose, band), shade(ident.hat_colour, 0.8))
        else:
            visor = ellipse(np.array([fw * 0.3, -0.24]), fw * 0.8, 0.05)
            self.polygon(d, self._to_head(pose, visor), shade(ident.hat_colour, 0.75))

    def _accessories(self, d: ImageDraw.ImageDraw, pose: Pose) -> None:
        ident = self.identity
        face = pose.face
        if ident.glasses != "none":
            radius = 0.1 * ident.eye_size
            centres = [eye.mean(axis=0) for eye in face.eyes]
            for c in centres:
                if ident.glasses == "square glasses":
                    shape = rotate(np.array([[-1, -0.75], [1, -0.75], [1, 0.75], [-1, 0.75]]) * radius, face.roll) + c
                else:
                    shape = ellipse(c, radius, radius * (0.8 if ident.glasses == "sunglasses" else 1.0), face.roll)
                if ident.glasses == "sunglasses":
                    self.polygon(d, shape, ident.glasses_colour)
                else:
                    self.limb(d, np.concatenate([shape, shape[:1]]), ident.glasses_colour, 0.022)
            bridge = np.array(centres) + rotate(np.array([[radius, 0.0], [-radius, 0.0]]), face.roll)
            self.limb(d, bridge, ident.glasses_colour, 0.02)
        if ident.earrings:
            down = rotate(np.array([0.0, 0.13]), face.roll)
            for ear in face.ears:
                self.dot(d, ear + down, 0.035, GOLD)

    # ---- frame ---------------------------------------------------------------------------------

    def draw(self, pose: Pose) -> np.ndarray:
        """uint8 [H, W, 3] output frame of one pose."""
        return self._draw_over(self.backdrop.copy(), pose)

    def coverage(self, pose: Pose) -> np.ndarray:
        """float32 [H, W] in [0, 1]: how much of each output pixel the person covers (0 = backdrop): the
        person drawn over black and over white differs by exactly the backdrop's share."""
        over_black = self._draw_over(Image.new("RGB", self.size, (0, 0, 0)), pose).astype(np.float32)
        over_white = self._draw_over(Image.new("RGB", self.size, (255, 255, 255)), pose).astype(np.float32)
        return np.clip(1.0 - (over_white - over_black).mean(-1) / 255.0, 0.0, 1.0)

    def _draw_over(self, image: Image.Image, pose: Pose) -> np.ndarray:
        """The person drawn over `image` (at drawing resolution), box-downsampled: uint8 [H, W, 3]."""
        d = ImageDraw.Draw(image)
        self._hair_back(d, pose)
        self._legs(d, pose)
        self._torso(d, pose)
        self._head(image, d, pose)
        self._arm(d, pose, RIGHT)
        self._arm(d, pose, LEFT)
        if self.factor > 1:
            image = image.reduce(self.factor)
        return np.asarray(image)

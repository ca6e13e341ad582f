"""Named keypoints of the face and the geometry they come from.

Object coordinates: the canonical face fits in the box [-1, 1]^2 (x right, y
down; unmirrored, x < 0 is image-left). A pose maps object point q to the
normalised image point ``2 * translation + scale * R(rotation) @ (mirror_sign * q.x, q.y)``.
Keypoint names say on which side of the *image* a point lies for an upright
face, so a mirrored face gets its keypoints permuted with ``MIRROR_PERMUTATION``,
exactly as a horizontally flipped image would.
"""
import torch

from synthetic_world.deformation import undeform
from synthetic_world.factors import canonical_params
from synthetic_world.photo import occluded_points

KEYPOINT_NAMES = (
    'left_ear_tip', 'right_ear_tip',
    'left_eye', 'right_eye',
    'nose',
    'left_mouth_corner', 'right_mouth_corner',
    'chin',
    'left_cheek', 'right_cheek',
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)
# Index i of a mirrored face holds the mirror image of keypoint MIRROR_PERMUTATION[i].
MIRROR_PERMUTATION = torch.tensor([1, 0, 3, 2, 4, 6, 5, 7, 9, 8], dtype=torch.long)

HEAD_CENTRE_Y = 0.10
_HEAD_RADII = (0.70, 0.64)
# Right ear (the left one is its mirror image): inner base, outer base, tip.
_EAR = ((0.14, -0.46), (0.60, -0.14), (0.58, -0.92))
# Head types of a world with several modes (WorldFactors.modes): the ears'
# triangle (inner base, outer base, tip) and the head's radii relative to the
# cat's. Mode 0 is the cat; the others move the ear tips far from where a warp
# of the cat could put them, and the renderer gives each its own large colour
# pattern (drawing.py), so one warp head cannot serve two modes well.
MODE_NAMES = ('cat', 'droopy', 'sideways')
_MODE_HEADS = (
    (_EAR, (1.0, 1.0)),
    (((0.38, -0.44), (0.70, -0.12), (0.90, 0.62)), (0.86, 1.12)),   # ears hanging beside the cheeks
    (((0.42, -0.40), (0.62, 0.06), (1.00, -0.36)), (1.08, 0.90)),   # ears pointing sideways
)
# Entries of the shape vector, each a relative change in [-shape, shape].
SHAPE_NAMES = ('head_width', 'head_height', 'ear_length', 'ear_spread', 'ear_width', 'eye_spacing',
               'eye_height', 'eye_size', 'nose_size', 'nose_height', 'mouth_width', 'mouth_drop')
_SHAPE_HEAD_W, _SHAPE_HEAD_H, _SHAPE_EAR_LEN, _SHAPE_EAR_SPREAD, _SHAPE_EAR_W, _SHAPE_EYE_SEP, \
    _SHAPE_EYE_Y, _SHAPE_EYE_SIZE, _SHAPE_NOSE_SIZE, _SHAPE_NOSE_Y, _SHAPE_MOUTH_W, _SHAPE_MOUTH_DROP = \
    range(len(SHAPE_NAMES))


def _mode_table(mode, reference):
    # Per-face ear triangle ((3, 2) tuples of (N,) tensors) and head radii factors of each face's mode.
    def pick(values):
        out = torch.full_like(reference, values[0])
        for k, value in enumerate(values[1:], start=1):
            out = torch.where(mode == k, torch.full_like(reference, value), out)
        return out
    ears = tuple(tuple(pick([head[0][v][c] for head in _MODE_HEADS]) for c in (0, 1)) for v in range(3))
    radii = tuple(pick([head[1][c] for head in _MODE_HEADS]) for c in (0, 1))
    return ears, radii


def face_layout(shape, mode=None):
    """Positions and sizes of every part for shape vectors (N, 12).

    Part positions follow the head's size (so parts stay attached); part sizes
    change on their own, which makes the family non-rigid. ``mode`` (N,)
    picks each face's head type (MODE_NAMES; None or all 0: the cat).
    Returns a dict of (N,) tensors and (x, y) pairs of (N,) tensors.
    """
    d = [shape[:, i] for i in range(shape.shape[1])]
    hx, hy = 1 + d[_SHAPE_HEAD_W], 1 + d[_SHAPE_HEAD_H]
    ear_triangle, radii = _EAR, _HEAD_RADII
    if mode is not None and bool((mode != 0).any()):
        ear_triangle, (rx_factor, ry_factor) = _mode_table(mode.to(hx.dtype), hx)
        radii = (_HEAD_RADII[0] * rx_factor, _HEAD_RADII[1] * ry_factor)

    def place(x, y):
        return x * hx, HEAD_CENTRE_Y + (y - HEAD_CENTRE_Y) * hy

    (ix, iy), (ox, oy), (tx, ty) = ear_triangle
    bcx, bcy = (ix + ox) / 2, (iy + oy) / 2
    ear_w, ear_len = 1 + d[_SHAPE_EAR_W], 1 + d[_SHAPE_EAR_LEN]
    ear_inner = place(bcx + (ix - bcx) * ear_w, bcy + (iy - bcy) * ear_w)
    ear_outer = place(bcx + (ox - bcx) * ear_w, bcy + (oy - bcy) * ear_w)
    ear_tip = place(bcx + (tx - bcx) * ear_len + 0.6 * d[_SHAPE_EAR_SPREAD], bcy + (ty - bcy) * ear_len)

    eye = place(0.27 * (1 + d[_SHAPE_EYE_SEP]), 0.3 * d[_SHAPE_EYE_Y])
    eye_size = 1 + d[_SHAPE_EYE_SIZE]
    nose_size = 1 + d[_SHAPE_NOSE_SIZE]
    nose = place(torch.zeros_like(hx), 0.25 + 0.3 * d[_SHAPE_NOSE_Y])
    nose_half_width, nose_height = 0.085 * nose_size, 0.07 * nose_size
    nose_bottom_y = nose[1] + nose_height / 2
    mouth_top_y = nose_bottom_y + 0.07 * (1 + d[_SHAPE_MOUTH_DROP])
    mouth_w = 0.16 * (1 + d[_SHAPE_MOUTH_W])
    return {
        'hx': hx, 'hy': hy,
        'head_radii': (radii[0] * hx, radii[1] * hy),
        'ear': (ear_inner, ear_outer, ear_tip),
        'eye': eye, 'eye_size': eye_size,
        'nose': nose, 'nose_half_width': nose_half_width, 'nose_height': nose_height,
        'nose_bottom_y': nose_bottom_y, 'mouth_top_y': mouth_top_y,
        'mouth_mid': (0.5 * mouth_w, mouth_top_y + 0.065), 'mouth_corner': (mouth_w, mouth_top_y + 0.035),
    }


def object_keypoints(shape, mode=None):
    """Keypoints of unmirrored faces in object coordinates.

    Args:
        shape: (N, 12) relative shape changes.
        mode: (N,) head types (MODE_NAMES) or None (cats).
    Returns:
        (N, NUM_KEYPOINTS, 2) object coordinates (x, y), KEYPOINT_NAMES order.
    """
    lay = face_layout(shape, mode)
    zero = torch.zeros_like(lay['hx'])
    ear_tip, eye, corner = lay['ear'][2], lay['eye'], lay['mouth_corner']
    nose_x, nose_y = lay['nose']
    rx, ry = lay['head_radii']
    points = [
        (-ear_tip[0], ear_tip[1]), ear_tip,
        (-eye[0], eye[1]), eye,
        (nose_x, nose_y - lay['nose_height'] / 6),   # centroid of the nose triangle
        (-corner[0], corner[1]), corner,
        (zero, HEAD_CENTRE_Y + ry),
        (-rx, zero + HEAD_CENTRE_Y), (rx, zero + HEAD_CENTRE_Y),
    ]
    return torch.stack([torch.stack([x, y], dim=-1) for x, y in points], dim=1)


def pose_matrix(params):
    # (N, 2, 2) scale * rotation and (N, 2) shift in normalised image coordinates.
    c, s = torch.cos(params['rotation']), torch.sin(params['rotation'])
    scale = params['scale']
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], dim=-2)
    return scale[:, None, None] * rot, 2 * params['translation']


def keypoints_from_params(params, size):
    """Exact keypoints of the faces ``params`` describe, for ``size`` x ``size`` images.

    Returns:
        (N, NUM_KEYPOINTS, 3): x, y in pixels (pixel centres at 0 .. size - 1)
        and visibility 1 when the point lies on the canvas ([0, size - 1] in
        both coordinates) and no occluder (synthetic_world.photo) covers it, else 0.
    """
    q = object_keypoints(params['shape'], params.get('mode'))
    if bool((params['deformation'] != 0).any()):
        q = undeform(q, params['deformation'])  # where the deformed face shows each point
    mirror = params['mirror']
    mirrored = torch.stack([-q[..., 0], q[..., 1]], dim=-1)[:, MIRROR_PERMUTATION.to(q.device)]
    q = torch.where(mirror[:, None, None] > 0.5, mirrored, q)
    matrix, shift = pose_matrix(params)
    p = torch.einsum('nij,npj->npi', matrix, q) + shift[:, None]
    xy = (p + 1) * size / 2 - 0.5
    visible = ((xy >= 0) & (xy <= size - 1)).all(dim=-1) & ~occluded_points(params, p)
    visible = visible.unsqueeze(-1).to(xy.dtype)
    return torch.cat([xy, visible], dim=-1)


def canonical_keypoints(size, factors=None):
    """(NUM_KEYPOINTS, 3) keypoints of the canonical face (see canonical_params)."""
    return keypoints_from_params(canonical_params(1, factors), size)[0]


def flip_keypoints(keypoints, size):
    """Keypoints of horizontally flipped images: x -> size - 1 - x, then reordered
    with MIRROR_PERMUTATION. keypoints: (N, P, 2 or 3) pixels; same shape back."""
    flipped = keypoints.clone()
    flipped[..., 0] = size - 1 - keypoints[..., 0]
    return flipped[:, MIRROR_PERMUTATION.to(keypoints.device)]
